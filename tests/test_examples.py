"""Every script in examples/ runs as a user would run it and prints what it promises
(Surprise's run_all_examples habit): each in a fresh process, with its own temporary folder
that it must leave empty."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.slow  # ~10-15 s each on the 2-core machine


def run_example(name: str, tmp_path, *args: str) -> str:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=tmp_path,
                       env={**os.environ, "TMPDIR": str(tmp)},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert list(tmp.iterdir()) == [], "the example left temporary files"
    return p.stdout


def test_every_example_has_a_test():
    assert {p.name for p in EXAMPLES.glob("*.py")} == {
        "fit_evaluate.py", "backfill_train_recall.py", "custom_vector_store.py"}


def test_fit_evaluate_beats_most_popular(tmp_path):
    out = run_example("fit_evaluate.py", tmp_path)
    model = float(re.search(r"^Recall@10 model: ([0-9.]+)$", out, re.M).group(1))
    popular = float(re.search(r"^Recall@10 most-popular: ([0-9.]+)$", out, re.M).group(1))
    assert model > 1.5 * popular > 0, out
    assert "save/load round trip: identical recommendations" in out
    assert re.search(r"^recommend \S+: (\S+ \(-?[0-9.]+\)(, |$)){5}", out, re.M), out


def test_backfill_train_recall(tmp_path):
    out = run_example("backfill_train_recall.py", tmp_path)
    assert re.search(r"^ingest: lines=(\d+) events=\1 rejected=0", out, re.M), out
    assert "published version 1 (mcrecall_items_v1, exact, IP)" in out and "client: version 1" in out
    recalls = re.findall(r"^recall u\d+: (.*)$", out, re.M)
    assert len(recalls) == 3
    for line in recalls:
        items = re.findall(r"(\S+) \([0-9.-]+, (model|fold_in)\)", line)
        assert len(items) == 5 and len({i for i, _ in items}) == 5, line
    new = re.search(r"^recall somebody-new: (.*)$", out, re.M).group(1)
    assert new.count("(popular)") == 5, new


def test_custom_vector_store_is_registered_used_and_passes_the_suite(tmp_path):
    out = run_example("custom_vector_store.py", tmp_path, "--suite")
    assert re.search(r"^registered backends: .*\bnpz\b", out, re.M), out
    assert "opened: custom_vector_store.NpzVectorStore" in out
    assert "trained version 1 into backend npz" in out
    line = re.search(r"^recall \S+: (.*)$", out, re.M).group(1)
    assert len(re.findall(r"\(-?[0-9.]+, model\)", line)) == 5, line
    assert "'v1.npz'" in out and "'CURRENT'" in out
    suite = re.search(r"^behaviour suite: (.*)$", out, re.M).group(1)
    assert re.match(r"\d+ passed", suite) and "failed" not in suite and "error" not in suite, suite

"""A third-party backend runs the whole behavioural suite by subclassing it.

A throwaway distribution is written to a temporary directory — a module with a backend and
a ``*.dist-info`` whose ``entry_points.txt`` registers it in ``mcrecall.vector_stores`` — and
pytest runs, in a fresh process rooted there (no tests/conftest.py, no fixtures of this
project), a test file that subclasses ``mcrecall.plugins.testsuite.VectorStoreBehaviour``. The good
backend passes every test; backends that drop the k-th result or reverse the order fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

BACKENDS = '''
"""A third party's vector stores: numpy exact search, one correct and two broken."""
from mcrecall.plugins.exact_store import ExactVectorStore


class ToyStore(ExactVectorStore):
    """Exact search under another name: must pass the whole suite."""


class DropsLastStore(ExactVectorStore):
    """Broken: returns k - 1 results."""

    def search_batch(self, version, queries, k, exclude=None):
        return [r[:-1] for r in super().search_batch(version, queries, k, exclude)]


class ReversedStore(ExactVectorStore):
    """Broken: worst first."""

    def search_batch(self, version, queries, k, exclude=None):
        return [r[::-1] for r in super().search_batch(version, queries, k, exclude)]
'''

ENTRY_POINTS = """\
[mcrecall.vector_stores]
toy = toy_vectors:ToyStore
toy_drops_last = toy_vectors:DropsLastStore
toy_reversed = toy_vectors:ReversedStore
"""

SUITE = '''
from mcrecall.plugins.testsuite import VectorStoreBehaviour


class TestToyStore(VectorStoreBehaviour):
    backend = "{backend}"
'''


@pytest.fixture(scope="module")
def distribution(tmp_path_factory):
    """A directory holding the toy distribution, as a site-packages would."""
    site = tmp_path_factory.mktemp("site")
    (site / "toy_vectors.py").write_text(BACKENDS)
    info = site / "toy_vectors-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-vectors\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


def run_suite(distribution, tmp_path, backend, *args):
    """pytest in a fresh process on a file that subclasses the suite; returns (rc, counts, output)."""
    (tmp_path / "test_toy_suite.py").write_text(SUITE.format(backend=backend))
    path = os.pathsep.join([str(distribution), str(REPO)])  # the distribution, then mcrecall
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-o", "addopts=", *args, "test_toy_suite.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": path})
    out = proc.stdout + proc.stderr
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", out)}
    return proc.returncode, counts, out


def test_the_factory_finds_the_third_party_backend_by_name(distribution):
    code = ("from plugins import available_backends, backend_class\n"
            "print(sorted(available_backends()), backend_class('toy').__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(distribution), str(REPO)])})
    assert proc.returncode == 0, proc.stderr
    assert "'toy'" in proc.stdout and "'toy_reversed'" in proc.stdout and proc.stdout.split()[-1] == "ToyStore"


def collected_names(rc_out: str) -> list[str]:
    """Test names (``name[params]``) of a ``pytest --collect-only -q`` output, sorted."""
    return sorted(line.split("::")[-1] for line in rc_out.splitlines() if "::" in line)


@pytest.mark.slow
def test_a_registered_third_party_backend_passes_the_whole_suite(distribution, tmp_path):
    rc, counts, out = run_suite(distribution, tmp_path, "toy", "-rA")
    assert rc == 0, out[-4000:]
    assert counts.get("failed", 0) == 0 and "error" not in counts and "errors" not in counts, out[-4000:]
    # the toy ran every test the built-in exact backend runs: the same names, none missing
    ran = sorted(re.findall(r"^(?:PASSED|SKIPPED).*?::TestToyStore::(\S+)", out, re.M))
    skipped = re.findall(r"^SKIPPED \[(\d+)\]", out, re.M)
    exact = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                            "tests/test_plugins_backends.py::TestExact"], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    want = collected_names(exact.stdout)
    assert len(want) >= 20, exact.stdout[-2000:]
    assert counts["passed"] + counts.get("skipped", 0) == len(want), (counts, len(want))
    assert sorted(ran) == [w for w in want if w in ran] and counts["passed"] == len(ran), (ran, want)
    # what may skip: the approximate-recall tests of a backend without an approximate index
    assert counts.get("skipped", 0) == 3 and sum(map(int, skipped)) == 3, out[-3000:]


@pytest.mark.parametrize("backend,fails", [
    ("toy_drops_last", "test_search_returns_exactly_k_on_every_index_type"),
    ("toy_reversed", "test_checkerboard_withheld_item_comes_first"),
])
@pytest.mark.slow
def test_a_broken_backend_fails_the_suite(distribution, tmp_path, backend, fails):
    rc, counts, out = run_suite(distribution, tmp_path, backend, "-k", "exactly_k or checkerboard or roundtrip")
    assert rc == 1, out[-4000:]
    assert counts.get("failed", 0) >= 2 and f"FAILED test_toy_suite.py::TestToyStore::{fails}" in out, out[-4000:]
    assert "AssertionError" in out and "ImportError" not in out, out[-4000:]  # failed on behaviour

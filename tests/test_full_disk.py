"""A full disk (issue 20 #6): one line that says the disk is full, where, and that a rerun is
safe (it is: the triples then match a clean run); train adds no noise about a version that was
never written. Reproduced on a small tmpfs (skipped where mount is not permitted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def run(args, data, **env):
    e = dict(os.environ, PYTHONPATH=str(ROOT), MCRECALL_STORE_DATA_DIR=str(data),
             MCRECALL_INDEX_BACKEND="exact", **env)
    e.pop("MCRECALL_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "mcrecall", *args], env=e, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


def fill(mnt: Path, leave_bytes: int) -> Path:
    """A filler file that leaves about ``leave_bytes`` free on the tmpfs."""
    filler = mnt / "filler"
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return filler


def _one_line(p, *want):
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("mcrecall ")]
    assert p.returncode != 0 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    for w in want:
        assert w in lines[0], lines[0]
    return lines[0]


def test_a_full_disk_says_so_and_a_rerun_is_safe(tmp_path, small_disk):
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"user_id": f"user-{n % 20000}", "item_id": f"item-{n * 7919 % 30000}",
                                          "action": "click"}) + "\n" for n in range(150_000)))
    clean = run(["ingest", "--from-file", str(events)], tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr
    data = small_disk / "data"
    filler = fill(small_disk, 3 << 20)
    p = run(["ingest", "--from-file", str(events)], data)
    line = _one_line(p, "is full", str(data / "triples.lmdb"), "a rerun is safe")
    assert "Input/output error" not in line.split("LMDB said")[0]
    assert p.returncode == 3
    filler.unlink()
    again = run(["ingest", "--from-file", str(events)], data)
    assert again.returncode == 0, again.stderr
    want = run(["triples"], tmp_path / "clean").stdout
    assert run(["triples"], data).stdout == want  # the rerun ends where a clean run does


def test_train_on_a_full_disk_is_one_line(tmp_path, small_disk):
    data = small_disk / "data"
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"user_id": f"u{n % 3000}", "item_id": f"i{n * 31 % 2000}",
                                          "action": "like"}) + "\n" for n in range(30_000)))
    assert run(["ingest", "--from-file", str(events)], data).returncode == 0
    env = {"MCRECALL_TRAIN_EPOCHS": "1", "MCRECALL_TRAIN_DIM": "8"}
    assert run(["train"], data, **env).returncode == 0
    fill(small_disk, 0)
    p = run(["train", "--force"], data, **env)
    _one_line(p, "is full", str(data), "the current version keeps serving")
    assert "does not exist" not in p.stdout + p.stderr and "could not remove" not in p.stdout

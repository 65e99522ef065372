"""`mcrecall train --nproc N` on torch.distributed (gloo on CPU): the same answer, and faults.

The launches are real (torch's elastic agent, N processes, a c10d rendezvous on 127.0.0.1);
each costs ~10-30 s of start-up here, so the equality checks share one launch of 3 ranks
(tests/dist_worker.py: the group of 3 and its subgroup of 2 fit every configuration).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mcrecall.core.config import ConfigError, load_config
from mcrecall.train.distributed import KILL_ENV, failure_line, row_blocks, split_by_block
from mcrecall.train.lock import is_locked
from mcrecall.train.synthetic import make_synthetic
from mcrecall.train.testing import fill_store
from mcrecall.train.versions import ModelRegistry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_CUDA = False
try:
    import torch

    TORCH_CUDA = torch.cuda.is_available() and torch.cuda.device_count() >= 2
except ImportError:  # pragma: no cover
    pass


def test_dist_timeout_s_is_a_validated_key():
    assert load_config(environ={}).train.dist_timeout_s == 300.0
    assert load_config(environ={"MCRECALL_TRAIN_DIST_TIMEOUT_S": "7.5"}).train.dist_timeout_s == 7.5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ConfigError, match="dist_timeout_s"):
            load_config(environ={"MCRECALL_TRAIN_DIST_TIMEOUT_S": bad})


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_row_blocks_cover_every_row_once_with_balanced_entries(world):
    rng = np.random.default_rng(world)
    rows = (rng.zipf(1.5, 20_000) % 101).astype(np.int32)  # skewed rows, some of 101 empty
    b = row_blocks(rows, 101, world)
    assert b[0] == 0 and b[-1] == 101 and len(b) == world + 1 and (np.diff(b) >= 0).all()
    parts = split_by_block(rows, b)
    assert len(parts) == world
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(rows)))
    for r, idx in enumerate(parts):
        assert ((rows[idx] >= b[r]) & (rows[idx] < b[r + 1])).all()
        assert (np.diff(idx) > 0).all()  # original order kept: each row's entries as one process
    # contiguous blocks can't split a row: the largest block is at most a share plus one row
    counts = np.bincount(rows, minlength=101)
    assert max(len(p) for p in parts) <= len(rows) / world + counts.max()


def test_failure_line_names_the_rank_that_was_killed():
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    def pf(rank, code, ts):
        f = ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=code, error_file="/nonexistent")
        f.timestamp = ts
        return f

    # the agent stops the survivor with SIGTERM after rank 1's SIGKILL: rank 1 is the cause
    line = failure_line({0: pf(0, -signal.SIGTERM, 5), 1: pf(1, -signal.SIGKILL, 5)})
    assert line.startswith("rank 1: killed by SIGKILL")
    assert failure_line({0: pf(0, 1, 9), 1: pf(1, -signal.SIGTERM, 9)}) == "rank 0: exited with status 1"
    # a survivor's gloo aborts (SIGABRT) once its peer raised: the peer's error is the cause,
    # whichever the agent recorded first (CI: rank 0's abort came before rank 1's MemoryError)
    assert failure_line({0: pf(0, -signal.SIGABRT, 4), 1: pf(1, 1, 5)}) == "rank 1: exited with status 1"
    assert failure_line({0: pf(0, -signal.SIGABRT, 4)}) == "rank 0: killed by SIGABRT"
    # CI: only rank 0's abort had been seen when the agent stopped; rank 1 recorded its cause
    assert (failure_line({0: pf(0, -signal.SIGABRT, 4)}, {1: "out of memory (simulated)"})
            == "rank 1: out of memory (simulated)")
    # a rank that lost its peer is a consequence of the peer's SIGKILL
    assert failure_line({0: pf(0, -signal.SIGKILL, 6), 1: pf(1, 1, 5)},
                        {1: "lost a peer (Connection closed by peer)"}).startswith("rank 0: killed by SIGKILL")
    # the one that timed out waiting is the cause when the other only hangs (stopped by SIGTERM)
    assert (failure_line({0: pf(0, 1, 5), 1: pf(1, -signal.SIGTERM, 6)}, {0: "a peer did not answer within x"})
            == "rank 0: a peer did not answer within x")


@pytest.mark.slow
def test_n_ranks_give_the_factors_of_one_rank(tmp_path):
    """ALS (implicit, squared; dot by CG and Cholesky; cosine) on 3 and 2 ranks with uneven
    blocks: max |diff| <= 1e-4 of the largest factor; bce: Recall@10 within 0.005 of one rank."""
    out = tmp_path / "out.json"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "3", os.path.join(ROOT, "tests", "dist_worker.py"), str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    seen = {(r["objective"], r["similarity"], r["solver"], r["world"]) for r in res["als"]}
    assert len(seen) == 12  # 2 objectives x 3 solver/similarity pairs x {3, 2} ranks
    for r in res["als"]:
        assert r["max_abs_diff"] <= 1e-4 * r["largest"], r
    assert [r["similarity"] for r in res["bce"]] == ["dot", "cosine"]
    rot = json.loads((tmp_path / "out.json.rotated").read_text())  # led by global rank 1
    assert rot["max_abs_diff"] <= 1e-4 * rot["largest"], rot
    for r in res["bce"]:
        assert r["recall_1"] > 0.1, r  # it learnt something: the comparison means something
        assert abs(r["recall_2"] - r["recall_1"]) <= 0.005 and abs(r["recall_3"] - r["recall_1"]) <= 0.005, r


# -- the command --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=300, n_items=150, n_triples=8000, seed=3)


def _setup(tmp_path, data, timeout_s=30, objective="implicit"):
    fill_store(tmp_path, data)
    cfg_file = tmp_path / "mcrecall.toml"
    cfg_file.write_text(f'[store]\ndata_dir = "{tmp_path}"\n[index]\nbackend = "exact"\n'
                        f'index_type = "FLAT"\n[train]\ndim = 8\nepochs = 3\nobjective = "{objective}"\n'
                        f"dist_timeout_s = {timeout_s}\nthreads = 1\n")
    return cfg_file


def _mcrecall(*args, env_extra=None, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCRECALL_", "MCR_"))}
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "mcrecall", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _run(*args, timeout=300, **kw):
    p = _mcrecall(*args, **kw)
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def _current(tmp_path):
    reg = ModelRegistry(tmp_path, readonly=True)
    try:
        v = reg.current_version()
        return v, (reg.metadata(v) if v is not None else None)
    finally:
        reg.close()


@pytest.mark.slow
def test_nproc_2_publishes_with_world_size_and_rank_0_logs(tmp_path, data):
    cfg = _setup(tmp_path, data, objective="squared")
    rc, out = _run("--config", str(cfg), "-v", "train", "--nproc", "2")
    assert rc == 0, out
    assert "Traceback" not in out
    # the sweep lines of one run, once (rank 0 logs; the others are silent), with rank shares at -v
    assert out.count("  sweep   1/3") == 1 and out.count("  sweep   1/2") == 1, out  # fit, refit
    assert out.count("    ranks: r0 ") == out.count("  sweep ") and " r1 " in out
    v, meta = _current(tmp_path)
    assert v == 1 and meta["world_size"] == 2 and meta["training"]["seconds_per_sweep"] > 0
    assert all(h["world_size"] == 2 and len(h["rank_seconds"]) == 2 for h in meta["training"]["history"])
    rc, st = _run("--config", str(cfg), "status", "--json")
    assert rc == 0 and json.loads(st)["model"]["world_size"] == 2
    assert not is_locked(tmp_path)


def _one_process_version(tmp_path, cfg):
    rc, out = _run("--config", str(cfg), "train")
    assert rc == 0, out
    v, meta = _current(tmp_path)
    assert meta["world_size"] == 1
    return v


@pytest.mark.slow
@pytest.mark.parametrize("point,rank,cause", [("sweep2", 1, "killed by SIGKILL"),
                                              ("sweep2", 0, "killed by SIGKILL"),
                                              ("sweep2:oom", 1, "out of memory")])
def test_a_rank_dying_mid_sweep_publishes_nothing(tmp_path, data, point, rank, cause):
    cfg = _setup(tmp_path, data)
    v1 = _one_process_version(tmp_path, cfg)
    t0 = time.monotonic()
    rc, out = _run("--config", str(cfg), "train", "--nproc", "2", "--force",
                   env_extra={KILL_ENV: f"{rank}:{point}"})
    assert rc == 1, out
    lines = [ln for ln in out.splitlines() if "failed" in ln.lower()]
    assert len(lines) == 1 and f"rank {rank}: {cause}" in lines[0], out
    assert "Traceback" not in out and "nothing published" in lines[0]
    assert time.monotonic() - t0 < 30 + 60  # dist_timeout_s + start-up, at most
    assert _current(tmp_path)[0] == v1  # the previous version keeps serving
    assert not is_locked(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["join", "sweep2"])
def test_a_peer_that_never_joins_or_hangs_ends_within_dist_timeout_s(tmp_path, data, point):
    cfg = _setup(tmp_path, data, timeout_s=6)
    v1 = _one_process_version(tmp_path, cfg)
    t0 = time.monotonic()
    rc, out = _run("--config", str(cfg), "train", "--nproc", "2", "--force",
                   env_extra={KILL_ENV: f"1:{point}:hang"})
    took = time.monotonic() - t0
    assert rc == 1, out
    lines = [ln for ln in out.splitlines() if "failed" in ln.lower()]
    assert len(lines) == 1 and "rank 0: a peer did not answer within dist_timeout_s = 6 s" in lines[0], out
    assert took < 6 + 60, took
    assert _current(tmp_path)[0] == v1 and not is_locked(tmp_path)


@pytest.mark.slow
def test_every_tries_again_after_a_failed_distributed_run(tmp_path, data):
    cfg = _setup(tmp_path, data)
    v1 = _one_process_version(tmp_path, cfg)
    fill_store(tmp_path, make_synthetic(n_users=50, n_items=20, n_triples=500, seed=9))  # new triples
    p = _mcrecall("--config", str(cfg), "train", "--nproc", "2", "--force", "--every", "1s",
                  env_extra={KILL_ENV: "1:sweep1"})
    seen, t0 = [], time.monotonic()
    try:
        for line in p.stdout:
            if line.startswith("train: distributed training"):
                seen.append(line)
                assert not is_locked(tmp_path) or len(seen) < 2
                if len(seen) == 2:
                    break
            assert time.monotonic() - t0 < 240
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    assert len(seen) == 2 and all("rank 1: killed by SIGKILL" in s and "trying again" in s for s in seen), seen
    assert _current(tmp_path)[0] == v1


@pytest.mark.skipif(not TORCH_CUDA, reason="needs 2 CUDA devices (NCCL)")
def test_nccl_ranks_give_the_factors_of_one_rank(tmp_path):
    """With CUDA devices: the same equality launch, one device a rank over NCCL."""
    out = tmp_path / "out.json"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", os.path.join(ROOT, "tests", "dist_worker.py"), str(out),
                        "--device", "cuda"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for r in json.loads(out.read_text())["als"]:
        assert r["max_abs_diff"] <= 1e-4 * r["largest"], r

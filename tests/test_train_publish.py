"""Publication: versions, atomicity under crashes, the RMSE gate, --every (issue 4)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from plugins import open_vector_store
from train.cli import add_train_arguments, run_train
from train.publish import CRASH_ENV, CRASH_EXIT_CODE
from train.synthetic import make_synthetic
from train.testing import fill_store, small_config
from train.trainer import train_run
from train.versions import ModelRegistry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = dict(log=lambda s: None)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=300, n_items=150, n_triples=8000, seed=3)


def _vs(cfg):
    return open_vector_store(cfg.index.backend, data_dir=cfg.data_dir,
                             collection=cfg.index.collection)


def _recall(cfg, user_id, k=5):
    """What serve does: current version -> that version's user vector -> that version's items."""
    reg = ModelRegistry(cfg.data_dir, readonly=True)
    try:
        v = reg.current_version()
        vec = reg.user_vector(v, user_id)
        with _vs(cfg) as vs:
            return v, vs.search(v, vec, k)
    finally:
        reg.close()


def test_registry_roundtrip(tmp_path):
    reg = ModelRegistry(tmp_path)
    reader = ModelRegistry(tmp_path / "sub", readonly=True)  # nothing there yet: no version
    assert reader.current_version() is None and reader.versions() == []
    reg.write_users(1, ["a", "b"], np.eye(2, 3, dtype=np.float32))
    assert reg.versions() == [] and reg.stored_versions() == [1]
    with pytest.raises(ValueError):
        reg.set_current(1)  # not complete
    reg.write_metadata(1, {"dim": 3})
    reg.set_current(1)
    ro = ModelRegistry(tmp_path, readonly=True)
    assert ro.current_version() == 1 and ro.metadata(1) == {"dim": 3}
    np.testing.assert_array_equal(ro.user_vector(1, "b"), [0, 1, 0])
    assert ro.user_vector(1, "zz") is None
    assert np.isnan(ro.user_vectors(1, ["a", "zz"])[1]).all()
    with pytest.raises(ValueError):
        reg.drop(1)  # current
    reg.write_users(2, ["a"], np.ones((1, 3), np.float32))
    reg.write_metadata(2, {"dim": 3})
    reg.set_current(2)
    reg.drop(1)
    assert ro.versions() == [2] and ro.user_vector(1, "a") is None and ro.n_users(2) == 1
    ro.close()
    reg.close()


def test_publishes_complete_version_with_metadata(tmp_path, data):
    seq = fill_store(tmp_path, data)
    cfg = small_config(tmp_path, dim=8, epochs=3, popular_items=20, objective="squared")
    res = train_run(cfg, **QUIET)
    assert res.status == "published" and res.version == 1
    reg = ModelRegistry(tmp_path, readonly=True)
    meta = reg.metadata(1)
    for key in ("dim", "similarity", "metric", "backend", "collection", "created_at", "n_triples",
                "store_seq", "reg", "evaluation", "popular_items", "objective", "score_scale",
                "foldin", "warm_start"):
        assert key in meta, key
    assert meta["store_seq"] == seq and meta["n_triples"] == len(data)
    assert meta["dim"] == 10 and meta["collection"] == "mcrecall_items_v1"
    assert len(meta["popular_items"]) == 20
    ev = meta["evaluation"]
    assert {"model", "global_mean", "popular", "split"} <= set(ev)
    assert ev["split"]["fraction"] == 0.1 and "blake2b" in ev["split"]["rule"]
    with _vs(cfg) as vs:
        assert vs.current_version() == 1 and vs.count(1) == meta["n_items"]
    assert reg.n_users(1) == meta["n_users"]
    reg.close()


def test_rmse_gate_refuses_unless_forced(tmp_path, data, capsys):
    fill_store(tmp_path, data)
    cfg = small_config(tmp_path, dim=8, epochs=5, objective="squared")
    assert train_run(cfg, **QUIET).status == "published"
    bad = cfg.with_overrides(train={"reg": 50.0, "max_rmse_regression": 0.01})  # much worse fit
    parser = add_train_arguments(__import__("argparse").ArgumentParser())
    assert run_train(parser.parse_args([]), bad) == 3
    out = capsys.readouterr().out
    assert "NOT publishing" in out and "--force" in out
    assert ModelRegistry(tmp_path, readonly=True).current_version() == 1
    assert run_train(parser.parse_args(["--force"]), bad) == 0
    assert "publishing anyway" in capsys.readouterr().out
    assert ModelRegistry(tmp_path, readonly=True).current_version() == 2


def test_every_skips_when_store_unchanged(tmp_path, data):
    early = np.arange(len(data)) < len(data) // 2
    fill_store(tmp_path, data, early)
    cfg = small_config(tmp_path, dim=8, epochs=2)
    assert train_run(cfg, skip_unchanged=True, **QUIET).status == "published"
    assert train_run(cfg, skip_unchanged=True, **QUIET).status == "unchanged"
    fill_store(tmp_path, data, ~early)
    r = train_run(cfg, skip_unchanged=True, **QUIET)
    assert r.status == "published" and r.version == 2


def test_old_versions_dropped_previous_kept(tmp_path, data):
    fill_store(tmp_path, data)
    cfg = small_config(tmp_path, dim=8, epochs=1)
    for _ in range(4):
        train_run(cfg, force=True, **QUIET)
    reg = ModelRegistry(tmp_path, readonly=True)
    assert reg.current_version() == 4 and reg.versions() == [3, 4]
    assert reg.stored_versions() == [3, 4]
    with _vs(cfg) as vs:
        assert vs.list_versions() == [3, 4] and vs.current_version() == 4
    reg.close()


CRASH_SCRIPT = textwrap.dedent("""
    import sys
    from train.testing import small_config
    from train.trainer import train_run
    cfg = small_config(sys.argv[1], dim=8, epochs=2)
    train_run(cfg, force=True)
""")


@pytest.mark.parametrize("point", ["start", "users", "items", "finalize", "metadata"])
def test_crash_during_publication_keeps_previous_version(tmp_path, data, point):
    fill_store(tmp_path, data)
    cfg = small_config(tmp_path, dim=8, epochs=2)
    assert train_run(cfg, **QUIET).version == 1
    uid = data.user_ids[0]
    before = _recall(cfg, uid)
    env = dict(os.environ, **{CRASH_ENV: point})
    p = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == CRASH_EXIT_CODE, p.stderr
    # the previous version is still current and serving, exactly as before, from a new process
    assert _recall(cfg, uid) == before
    reg = ModelRegistry(tmp_path, readonly=True)
    assert reg.current_version() == 1 and reg.versions()[-1] in (1, 2)
    reg.close()
    # the next run completes, cleans the leftovers and becomes current
    r = train_run(cfg, force=True, **QUIET)
    assert r.status == "published" and r.version >= 2
    v, hits = _recall(cfg, uid)
    assert v == r.version and len(hits) == 5
    reg = ModelRegistry(tmp_path, readonly=True)
    assert reg.stored_versions() == [1, r.version] and reg.versions() == [1, r.version]
    with _vs(cfg) as vs:
        assert vs.list_versions() == [1, r.version] and vs.current_version() == r.version
    reg.close()


@pytest.mark.parametrize("point", ["current", "alias"])
def test_crash_after_the_atomic_step_serves_the_new_version(tmp_path, data, point):
    fill_store(tmp_path, data)
    cfg = small_config(tmp_path, dim=8, epochs=2)
    assert train_run(cfg, **QUIET).version == 1
    env = dict(os.environ, **{CRASH_ENV: point})
    p = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == CRASH_EXIT_CODE, p.stderr
    v, hits = _recall(cfg, data.user_ids[0])
    assert v == 2 and len(hits) == 5  # complete, and readable
    r = train_run(cfg, force=True, **QUIET)  # re-points the vector store, drops version 1
    assert r.version == 3
    with _vs(cfg) as vs:
        assert vs.current_version() == 3 and vs.list_versions() == [2, 3]


def test_sigkill_mid_run_keeps_previous_version(tmp_path, data):
    """A real SIGKILL at an arbitrary moment (not an injected exit)."""
    import signal
    import time

    fill_store(tmp_path, data)
    cfg = small_config(tmp_path, dim=8, epochs=2)
    assert train_run(cfg, **QUIET).version == 1
    before = _recall(cfg, data.user_ids[1])
    script = CRASH_SCRIPT.replace("epochs=2", "epochs=200")
    for delay in (1.0, 2.5):
        p = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        v, hits = _recall(cfg, data.user_ids[1])
        assert (v, hits) == before or v > 1  # the old version, or a complete newer one
    assert train_run(cfg, force=True, **QUIET).status == "published"

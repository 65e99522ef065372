"""Publication: versions, atomicity under crashes, the RMSE gate, --every (issue 4)."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mcrecall.plugins import open_vector_store
from mcrecall.train.cli import add_train_arguments, run_train
from mcrecall.train.publish import CRASH_ENV, CRASH_EXIT_CODE
from mcrecall.train.synthetic import make_synthetic
from mcrecall.train.testing import fill_store, small_config
from mcrecall.train.trainer import train_run
from mcrecall.train.versions import ModelRegistry

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
    from mcrecall.train.testing import small_config
    from mcrecall.train.trainer import train_run
    cfg = small_config(sys.argv[1], dim=8, epochs=2)
    train_run(cfg, force=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["start", "users", "created", "items", "finalize", "metadata"])
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# --------------------------------------------------------------------------- one publisher at a time
def test_publisher_lock_api(tmp_path):
    import threading

    from mcrecall.train.lock import PublisherBusyError, is_locked, publisher_lock

    assert not is_locked(tmp_path)
    with publisher_lock(tmp_path):
        assert is_locked(tmp_path)
        with publisher_lock(tmp_path, wait=False):  # re-entrant in the holding thread
            pass
        assert is_locked(tmp_path)
        errors = []

        def other_thread():
            try:
                with publisher_lock(tmp_path, wait=False):
                    pass
            except PublisherBusyError as e:
                errors.append(str(e))

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert errors and "publish.lock" in errors[0] and f"pid {os.getpid()}" in errors[0]
        # another process: refused at once, or after its timeout
        code = ("import sys, time; from train.lock import publisher_lock, PublisherBusyError\n"
                "t = time.monotonic()\n"
                "try:\n"
                "    with publisher_lock(sys.argv[1], timeout_s=0.3): print('got')\n"
                "except PublisherBusyError as e: print('busy', round(time.monotonic() - t, 1), e)\n")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, text=True,
                             capture_output=True, timeout=60).stdout
        assert out.startswith("busy") and "gave up after 0.3 s" in out, out
    assert not is_locked(tmp_path)
    with pytest.raises(ValueError):
        with publisher_lock(tmp_path, timeout_s=-1):
            pass


def test_publisher_lock_is_released_when_its_holder_is_killed(tmp_path):
    import signal
    import time

    from mcrecall.train.lock import publisher_lock

    code = ("import sys, time; from train.lock import publisher_lock\n"
            "with publisher_lock(sys.argv[1]):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGKILL)
        with publisher_lock(tmp_path, timeout_s=30):
            assert time.monotonic() - t0 < 30
    finally:
        p.kill()
        p.wait(timeout=30)


def _write_config(tmp_path, backend="exact"):
    cfg_file = tmp_path / "mcrecall.toml"
    cfg_file.write_text(f'[store]\ndata_dir = "{tmp_path}"\n[index]\nbackend = "{backend}"\n'
                        f'index_type = "FLAT"\n[train]\ndim = 8\nepochs = 2\n')
    return cfg_file


class _Reader:
    """Collects a process's output in a thread (so the test can poll it while it runs)."""

    def __init__(self, proc):
        import threading

        self.chunks: list[str] = []
        self.thread = threading.Thread(target=lambda: self.chunks.extend(proc.stdout), daemon=True)
        self.thread.start()

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def join(self) -> str:
        self.thread.join(timeout=60)
        return self.text


def _mcrecall(*args, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCRECALL_")}
    return subprocess.Popen([sys.executable, "-m", "mcrecall", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_no_wait_exits_with_a_clear_message(tmp_path, data):
    from mcrecall.train.lock import publisher_lock

    fill_store(tmp_path, data)
    cfg_file = _write_config(tmp_path)
    with publisher_lock(tmp_path):
        p = _mcrecall("--config", str(cfg_file), "train", "--no-wait")
        out, _ = p.communicate(timeout=120)
    assert p.returncode == 75, out
    assert "another publisher holds" in out and "--no-wait" in out and "Traceback" not in out
    assert out.count("not waiting") == 1, out  # issue 20 #13: it said so twice
    assert ModelRegistry(tmp_path, readonly=True).current_version() is None


@pytest.mark.slow
@pytest.mark.parametrize("n_trainers", [2, 3])
def test_concurrent_trainers_publish_one_at_a_time(tmp_path, data, n_trainers):
    """`mcrecall train --force` started together, over several rounds: each waits its turn, every
    version gets its own number, and the current version is complete (all its users)."""
    import time

    from mcrecall.train.lock import publisher_lock

    fill_store(tmp_path, data)
    cfg_file = _write_config(tmp_path)
    cfg = small_config(tmp_path, dim=8, epochs=2)
    published = []
    for _round in range(2):
        # Hold the lock while they start, until every one says it waits: then they really
        # race for it when it is released, whatever the start-up times on a loaded machine.
        with publisher_lock(tmp_path):
            procs = [_mcrecall("--config", str(cfg_file), "train", "--force")
                     for _ in range(n_trainers)]
            readers = [_Reader(p) for p in procs]
            deadline = time.monotonic() + 300
            while not all("waiting for the publisher lock" in r.text for r in readers):
                assert time.monotonic() < deadline, [r.text[-2000:] for r in readers]
                assert all(p.poll() is None for p in procs), [r.text[-2000:] for r in readers]
                time.sleep(0.1)
        for p in procs:
            p.wait(timeout=600)
        outs = [r.join() for r in readers]
        for p, out in zip(procs, outs, strict=False):
            assert p.returncode == 0, out[-3000:]
            assert "Traceback" not in out, out[-3000:]
        published += [int(line.split("published version ")[1].split()[0])
                      for out in outs for line in out.splitlines() if "published version" in line]
        reg = ModelRegistry(tmp_path, readonly=True)
        cur = reg.current_version()
        meta = reg.metadata(cur)
        assert reg.n_users(cur) == meta["n_users"] > 0
        assert reg.inflight() == {}
        assert reg.stored_versions() == reg.versions() and len(reg.versions()) == 2
        with _vs(cfg) as vs:
            assert vs.count(cur) == meta["n_items"] > 0
            assert vs.stored_versions() == reg.versions() and vs.current_version() == cur
        reg.close()
        v, hits = _recall(cfg, data.user_ids[0])
        assert v == cur and len(hits) == 5
    assert sorted(published) == list(range(1, 2 * n_trainers + 1)), published


CRASH_BACKENDS = ["exact", "faiss", "hnswlib", "milvus"]
KILL_SCRIPT = textwrap.dedent("""
    import sys
    from mcrecall.train.testing import small_config
    from mcrecall.train.trainer import train_run
    cfg = small_config(sys.argv[1], backend=sys.argv[2], index_type=sys.argv[3], dim=8, epochs=2)
    train_run(cfg, force=True)
""")


def _leftover_files(tmp_path):
    root = tmp_path / "vectors"
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.parent.name in ("vectors", "mcrecall_items") and p.name.startswith("."))


@pytest.mark.slow
@pytest.mark.parametrize("backend", CRASH_BACKENDS)
def test_sigkill_at_each_step_then_a_clean_publish_leaves_nothing_stray(tmp_path, data, backend):
    from mcrecall.train.publish import CRASH_POINTS

    fill_store(tmp_path, data)
    index_type = {"exact": "FLAT", "milvus": "FLAT"}.get(backend, "HNSW")
    cfg = small_config(tmp_path, backend=backend, index_type=index_type, dim=8, epochs=2)
    assert train_run(cfg, force=True, **QUIET).status == "published"
    # file backends also die between writing a version's temporary directory and its rename
    for point in CRASH_POINTS + (("file-store-rename",) if backend != "milvus" else ()):
        env = dict(os.environ, **{CRASH_ENV: point})
        p = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), backend, index_type],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == CRASH_EXIT_CODE, (point, p.stderr[-3000:])
        r = train_run(cfg, force=True, **QUIET)
        assert r.status == "published", point
        reg = ModelRegistry(tmp_path, readonly=True)
        cur = reg.current_version()
        assert cur == r.version
        versions = reg.versions()
        assert reg.stored_versions() == versions and len(versions) == 2 and versions[-1] == cur
        assert reg.inflight() == {}, point
        with _vs(cfg) as vs:
            assert vs.stored_versions() == versions, (point, vs.stored_versions(), versions)
            assert vs.current_version() == cur
            if backend == "milvus":  # every collection, whatever the store's own markers say
                names = {c for c in vs.client.list_collections()
                         if re.fullmatch(re.escape(cfg.index.collection) + r"_v\d+", c)}
                assert names == {f"{cfg.index.collection}_v{v}" for v in versions}, (point, names)
        assert _leftover_files(tmp_path) == [], point
        v, hits = _recall(cfg, data.user_ids[0])
        assert v == cur and len(hits) == 5
        reg.close()


def test_a_version_without_its_vectors_is_never_current(tmp_path):
    from mcrecall.plugins import open_vector_store as ovs
    from mcrecall.train.publish import publish

    reg = ModelRegistry(tmp_path)
    vs = ovs("exact", data_dir=tmp_path)
    meta = {"similarity": "dot", "dim": 4}
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="0 user"):
        publish(reg, vs, version=1, user_ids=[], user_vectors=np.zeros((0, 4), np.float32),
                item_ids=["a", "b", "c", "d"], item_vectors=x, meta=meta, metric="IP",
                index_type="FLAT", log=lambda s: None)
    assert reg.current_version() is None and reg.stored_versions() == [] and vs.stored_versions() == []
    reg.close()


def test_a_version_missing_items_is_removed_not_made_current(tmp_path):
    """If the store holds fewer items than were written (another writer dropped some, a lossy
    server), the version is never made current and what was written of it is removed."""
    from mcrecall.plugins import open_vector_store as ovs
    from mcrecall.train.publish import IncompleteVersionError, next_version, publish

    reg = ModelRegistry(tmp_path)
    vs = ovs("exact", data_dir=tmp_path)
    x = np.eye(4, dtype=np.float32)
    kw = dict(user_ids=["u1", "u2"], user_vectors=x[:2], item_ids=["a", "b", "c", "d"],
              item_vectors=x, meta={"similarity": "dot", "dim": 4}, metric="IP",
              index_type="FLAT", log=lambda s: None)
    assert publish(reg, vs, version=next_version(reg, vs), **kw) == 1
    real_count = vs.count
    vs.count = lambda v: real_count(v) - 1  # the store lost an item
    with pytest.raises(IncompleteVersionError, match="3/4 item"):
        publish(reg, vs, version=next_version(reg, vs), **kw)
    vs.count = real_count
    assert reg.current_version() == 1 and reg.stored_versions() == [1] and reg.inflight() == {}
    assert vs.stored_versions() == [1]
    assert publish(reg, vs, version=next_version(reg, vs), **kw) == 3  # numbers never go back
    reg.close()


def test_gate_compares_on_the_same_held_out_pairs(tmp_path, data):
    """Issue 20 #3: figures from different hold-outs must not freeze publication. New users on
    new items with noise histories make the new run's hold-out far harder than version 1's; the
    gate compares the new model on version 1's own held-out pairs with version 1's figure there."""
    import shutil

    from mcrecall.ingest.store import TripleStore

    fill_store(tmp_path / "d", data)
    cfg = small_config(tmp_path / "d", dim=8, epochs=10, warm_start=False)
    assert train_run(cfg, **QUIET).status == "published"
    rng = np.random.default_rng(0)
    store = TripleStore(tmp_path / "d")
    n = 300 * 8  # new users on new items: a block of noise beside the old data
    store.put_scores([f"noise{u}" for u in rng.integers(0, 300, n)],
                     [f"noise-item{i}" for i in rng.integers(0, 150, n)], rng.integers(1, 5, n).tolist())
    store.close()
    # a dry run on a copy gives the new model's two figures (training is deterministic)
    shutil.copytree(tmp_path / "d", tmp_path / "dry")
    assert train_run(small_config(tmp_path / "dry", dim=8, epochs=10, warm_start=False),
                     force=True, **QUIET).status == "published"
    dry = ModelRegistry(tmp_path / "dry", readonly=True).metadata(2)["evaluation"]
    full, same = dry["model"]["recall@10"], dry["gate"]["model"]["recall@10"]
    assert full < same - 0.05  # the new, noisy hold-out is much harder than version 1's pairs
    # version 1's figure between the two: the figure on the new hold-out would be refused
    reg = ModelRegistry(tmp_path / "d")
    meta = reg.metadata(1)
    meta["evaluation"]["model"]["recall@10"] = (full + same) / 2
    reg.write_metadata(1, meta)
    reg.close()
    lines = []
    res = train_run(cfg, log=lines.append)
    out = "\n".join(lines)
    assert res.status == "published", out
    ev = ModelRegistry(tmp_path / "d", readonly=True).metadata(2)["evaluation"]
    g = ev["gate"]
    v1 = meta["evaluation"]
    assert g["version"] == 1 and g["n_test"] == v1["n_test"] and g["n_eval_users"] == v1["n_eval_users"]
    assert g["model"]["recall@10"] == pytest.approx(same) and g["current"]["recall@10"] == (full + same) / 2
    assert "v1 (same pairs)" in out and "on v1's pairs" in out  # both figures in the table
    # a truly worse model is still refused, and the message says the pairs were the same
    bad = cfg.with_overrides(train={"reg": 500.0, "max_recall_regression": 0.0})
    lines = []
    assert train_run(bad, log=lines.append).status == "refused"
    msg = next(ln for ln in lines if "NOT publishing" in ln)
    assert f"on version 2's {ev['n_test']:,} held-out pairs" in msg and "on the same pairs" in msg


def test_every_does_not_retrain_an_unchanged_store_after_a_refusal(tmp_path, data):
    """Issue 20 #3: after a refusal, --every skips periods while neither the store nor the
    current version changed, then trains again as soon as one does."""
    from mcrecall.train.cli import train_every

    early = np.arange(len(data)) < len(data) // 2
    fill_store(tmp_path, data, early)
    cfg = small_config(tmp_path, dim=8, epochs=2)
    assert train_run(cfg, **QUIET).status == "published"
    some = ~early & (np.arange(len(data)) % 7 == 0)
    fill_store(tmp_path, data, some)  # a few new triples
    bad = cfg.with_overrides(train={"reg": 500.0, "max_recall_regression": 0.0, "warm_start": False})
    lines = []

    def after(i):
        if i == 2:
            fill_store(tmp_path, data, ~early)  # new triples: train again

    statuses = train_every(bad, 0.0, rounds=5, log=lines.append, after_round=after)
    assert statuses == ["refused", "skipped", "skipped", "refused", "skipped"], statuses
    assert sum("NOT publishing" in ln for ln in lines) == 2
    assert sum("skipping" in ln for ln in lines) == 2, lines  # once per refusal, not per period
    # an unchanged store after a publication: one line, not one a period
    lines = []
    assert train_every(cfg, 0.0, rounds=3, log=lines.append)[1:] == ["unchanged", "unchanged"]
    assert sum("unchanged" in ln for ln in lines) == 1, lines

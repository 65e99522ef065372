"""Milvus-specific behaviour: the one-process file lock, the local server, restarts, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mcrecall.plugins import open_vector_store
from mcrecall.plugins.milvus_server import MilvusLiteServer, free_port, port_open, server_answers
from mcrecall.plugins.milvus_store import MilvusStoreLockedError
from mcrecall.plugins.testing import clustered_vectors

# Milvus Lite servers started, killed and restarted per test: the slow lane
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

_HOLDER = r"""
import sys, time
from mcrecall.plugins import open_vector_store
store = open_vector_store("milvus", uri=sys.argv[1])
print("ready", flush=True)
time.sleep(60)
"""


def test_locked_db_gives_a_clear_error_not_a_stack_trace(tmp_path):
    db = str(tmp_path / "milvus.db")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, db], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(MilvusStoreLockedError, match="locked by another process.*mcrecall milvus"):
            open_vector_store("milvus", uri=db)
        # the server cannot take a locked data directory either, and says why
        with pytest.raises(RuntimeError, match="(?i)lock"):
            MilvusLiteServer(tmp_path).start(timeout=60)  # serves <dir>/milvus.db
    finally:
        holder.kill()
        holder.wait()
    store = open_vector_store("milvus", uri=db)  # free again once the holder is gone
    store.close()


def test_unreachable_server_is_a_connection_error():
    port = free_port()
    with pytest.raises(ConnectionError, match="mcrecall milvus"):
        open_vector_store("milvus", uri=f"http://127.0.0.1:{port}", timeout_s=2)


def test_bad_uri_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"\.db"):
        open_vector_store("milvus", uri=str(tmp_path / "milvus.sqlite"))
    with pytest.raises(ValueError, match="under 36 characters"):
        open_vector_store("milvus", uri=str(tmp_path / ("x" * 40 + ".db")))
    with pytest.raises(ValueError, match="letters, digits"):
        open_vector_store("milvus", uri=str(tmp_path / "my items.db"))


def test_server_restart_keeps_versions_and_reloads_them(tmp_path):
    """A restarted server reopens collections released: the store loads them on first use."""
    x = clustered_vectors(300, 8, n_clusters=5)
    ids = [f"i{i}" for i in range(300)]
    server = MilvusLiteServer(tmp_path / "srv", log_path=tmp_path / "srv.log")
    uri = server.start(timeout=90)
    try:
        store = open_vector_store("milvus", uri=uri, collection="restart")
        store.create_version(1, 8, "COSINE", "IVF_FLAT", similarity="cosine")
        store.upsert(1, ids, x)
        store.finalize(1)
        store.make_current(1)
        before = store.search(None, x[0], 5)
        store.close()
    finally:
        pid = server.pid
        server.stop()
    assert not port_open("127.0.0.1", server.port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    server = MilvusLiteServer(tmp_path / "srv", port=server.port, log_path=tmp_path / "srv.log")
    server.start(timeout=90)
    try:
        store = open_vector_store("milvus", uri=uri, collection="restart")
        assert store.current_version() == 1 and store.list_versions() == [1]
        assert store.search(None, x[0], 5) == before
        store.close()
    finally:
        server.stop()


def test_mcrecall_milvus_command_runs_in_foreground_and_stops_on_sigterm(tmp_path):
    port = free_port()
    code = (
        "import sys, argparse\n"
        "from mcrecall.core.config import load_config\n"
        "from mcrecall.plugins.cli import add_milvus_arguments, run_milvus\n"
        "p = argparse.ArgumentParser(); add_milvus_arguments(p)\n"
        "cfg = load_config(environ={'MCRECALL_STORE_DATA_DIR': sys.argv[1]})\n"
        "sys.exit(run_milvus(p.parse_args(sys.argv[2:]), cfg))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "data"), "--port", str(port)],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not server_answers(f"http://127.0.0.1:{port}", timeout=1.0):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        # the data dir's own file-mode database (issue 20 #4), not a separate milvus-server/
        assert (tmp_path / "data" / ".milvus.db.lock").exists()
        assert not (tmp_path / "data" / "milvus-server").exists()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}" in out and "Traceback" not in out
    assert not port_open("127.0.0.1", port)


# Hostile ids on Milvus (file, Lite server, real server) are the behavioural suite's check
# (mcrecall.plugins.testing.HOSTILE_IDS, run by tests/test_plugins_backends.py's Milvus classes).


def publish(store, version, ids, x, index_type="AUTOINDEX", metric="IP"):
    max_norm = float(np.linalg.norm(x, axis=1).max())
    store.create_version(version, x.shape[1], metric, index_type, max_norm=max_norm)
    store.upsert(version, ids, x)
    return store.finalize(version)


def check_exactly_k(store, index_types):
    x = clustered_vectors(8000, 16, n_clusters=50, seed=2)
    ids = [f"i{i}" for i in range(len(x))]
    q = x[:3] + 0.01
    for v, index_type in enumerate(index_types, start=1):
        publish(store, v, ids, x, index_type=index_type)
        for k in (10, 200, 5000, 8000, 9000):
            for row in store.search_batch(v, q, k):
                assert len(row) == min(k, 8000) == len({i for i, _ in row}), (index_type, k, len(row))
                scores = [s for _, s in row]
                assert scores == sorted(scores, reverse=True)
        row = store.search(v, q[0], 100, exclude=ids[:50])
        assert len(row) == 100 and not set(ids[:50]) & {i for i, _ in row}
        store.drop_version(v)


def test_exactly_k_milvus_lite(tmp_path):
    store = open_vector_store("milvus", uri=str(tmp_path / "m.db"), nprobe=1)  # the tightest probe
    try:
        check_exactly_k(store, ["AUTOINDEX", "IVF_FLAT", "FLAT"])
    finally:
        store.close()


@pytest.mark.milvus_server
def test_exactly_k_real_server(milvus_real_uri, milvus_collection):
    store = open_vector_store("milvus", uri=milvus_real_uri, collection=milvus_collection, nprobe=1, ef_search=8)
    try:
        check_exactly_k(store, ["HNSW", "IVF_FLAT", "IVF_SQ8", "AUTOINDEX"])
    finally:
        store.close()


def test_k_beyond_milvus_topk_limit_is_served_exactly(tmp_path):
    import mcrecall.plugins.milvus_store as ms

    store = open_vector_store("milvus", uri=str(tmp_path / "m.db"))
    try:
        x = clustered_vectors(3000, 8, n_clusters=5)
        ids = [f"i{i}" for i in range(3000)]
        publish(store, 1, ids, x, index_type="IVF_FLAT")
        expected = store.search(1, x[0], 3000)
        old = ms.MAX_TOPK
        ms.MAX_TOPK = 1000  # stand-in for 16,384: beyond it the version is scanned
        try:
            scanned = store.search(1, x[0], 3000)
        finally:
            ms.MAX_TOPK = old
        assert [i for i, _ in scanned] == [i for i, _ in expected]
        np.testing.assert_allclose([s for _, s in scanned], [s for _, s in expected], rtol=1e-4, atol=1e-4)
    finally:
        store.close()


def test_auto_index_is_sized_to_the_version(tmp_path):
    import mcrecall.plugins.milvus_store as ms

    store = open_vector_store("milvus", uri=str(tmp_path / "m.db"))
    try:
        x = clustered_vectors(600, 8, n_clusters=5)
        publish(store, 1, [f"i{i}" for i in range(600)], x)
        assert store.version_info(1).index_type == "FLAT"  # a small version: exact
        spec = store._sized(store.version_info(1), 100_000)
        spec = ms.VersionSpec(**{**spec.__dict__, "index_type": "AUTOINDEX", "params": store.params})
        big = store._sized(spec, 100_000)
        assert big.index_type == "IVF_FLAT" and big.params["nlist_used"] == 1024  # min(nlist, 4*sqrt(n))
        assert big.params["nprobe_used"] == 64
    finally:
        store.close()


def test_versions_survive_a_restart_without_collection_properties(tmp_path):
    """State lives in rows of <collection>_versions, not in properties (lost by Milvus 2.3 restarts)."""
    db = str(tmp_path / "m.db")
    store = open_vector_store("milvus", uri=db)
    x = clustered_vectors(100, 8, n_clusters=3)
    publish(store, 1, [f"i{i}" for i in range(100)], x)
    publish(store, 2, [f"i{i}" for i in range(100)], x)
    store.make_current(2)
    for v in (1, 2):
        assert not store.client.describe_collection(store.collection_name(v)).get("properties")
    store.create_version(3, 8, "IP", "FLAT")  # never finalized: never listed
    store.upsert(3, ["a"], x[:1])
    before = store.search(2, x[0], 5)
    store.close()
    store = open_vector_store("milvus", uri=db)
    try:
        assert store.list_versions() == [1, 2] and store.current_version() == 2
        assert store.search(None, x[0], 5) == before
    finally:
        store.close()


def test_publishing_with_a_short_call_timeout(milvus_uri, milvus_collection):
    """[index] timeout_s bounds searches; flush, index build and load have their own deadline."""
    store = open_vector_store("milvus", uri=milvus_uri, collection=milvus_collection, timeout_s=0.5)
    try:
        x = clustered_vectors(30_000, 16, n_clusters=20)
        assert publish(store, 1, [f"i{i}" for i in range(len(x))], x) == len(x)
        assert len(store.search(1, x[0], 10)) == 10
    finally:
        store.close()


def test_a_client_recovers_after_its_lite_server_restarts(tmp_path):
    """The store reconnects and reloads (the restarted server starts released) within seconds."""
    x = clustered_vectors(300, 8, n_clusters=5)
    server = MilvusLiteServer(tmp_path / "srv", log_path=tmp_path / "srv.log")
    uri = server.start(timeout=90)
    store = open_vector_store("milvus", uri=uri, collection="recover", timeout_s=2)
    try:
        publish(store, 1, [f"i{i}" for i in range(300)], x)
        store.make_current(1)
        before = store.search(None, x[0], 5)
        server.stop()
        with pytest.raises(ConnectionError, match="search failed: .+"):  # the server's own words
            store.search(1, x[0], 5)
        server = MilvusLiteServer(tmp_path / "srv", port=server.port, log_path=tmp_path / "srv.log")
        server.start(timeout=90)
        t0 = time.monotonic()
        assert store.search(1, x[0], 5) == before
        assert time.monotonic() - t0 < 15
    finally:
        store.close()
        server.stop()


@pytest.mark.milvus_server
def test_real_server_restart_keeps_what_is_served(milvus_standalone, milvus_collection):
    """milvus-io/milvus#30144: a restart loses collection properties; versions must survive,
    and a store open across the restart answers again by itself."""
    uri = milvus_standalone.uri
    x = clustered_vectors(300, 8, n_clusters=5)
    store = open_vector_store("milvus", uri=uri, collection=milvus_collection, timeout_s=1.0)
    try:
        publish(store, 1, [f"i{i}" for i in range(300)], x, index_type="HNSW")
        publish(store, 2, [f"i{i}" for i in range(300)], x * 2, index_type="IVF_FLAT")
        store.make_current(2)
        before = {v: store.search(v, x[0], 5) for v in (1, 2)}
        milvus_standalone.stop()
        milvus_standalone.start()
        # A restarted server takes a while to serve again, and reloads each collection on
        # first use: every call may fail (timeout_s = 1 s) until then, and must come back.
        deadline = time.monotonic() + 60

        def eventually(fn):
            while True:
                try:
                    return fn()
                except ConnectionError:
                    assert time.monotonic() < deadline, "the store did not answer again within 60 s"
                    time.sleep(1)

        versions = eventually(store.list_versions)
        assert versions == [1, 2] and store.current_version() == 2
        assert {v: eventually(lambda v=v: store.search(v, x[0], 5)) for v in (1, 2)} == before
        fresh = open_vector_store("milvus", uri=uri, collection=milvus_collection)
        assert fresh.list_versions() == [1, 2] and fresh.search(None, x[0], 5) == before[2]
        fresh.close()
    finally:
        store.close()


def test_pymilvus_errors_are_one_line(tmp_path):
    """pymilvus logs a traceback per failed call; the store keeps one line of it."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from plugins import open_vector_store\n"
        "s = open_vector_store('milvus', uri=sys.argv[1])\n"
        "try:\n"
        "    s.client.describe_collection('no_such_collection')\n"
        "except Exception as e:\n"
        "    print('raised', type(e).__name__)\n"
        "s.close()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.db")], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert "raised" in proc.stdout, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Method not implemented" not in proc.stderr and "UNIMPLEMENTED\n" not in proc.stderr


def test_credentials_reach_the_client_and_never_the_logs(tmp_path, milvus_uri, caplog):
    from mcrecall.plugins.milvus_store import MilvusVectorStore

    with caplog.at_level("DEBUG"):
        store = MilvusVectorStore(uri=milvus_uri, collection="auth_t", user="bob", password="s3cret-pw")
    try:
        assert store._auth == {"user": "bob", "password": "s3cret-pw"}
        assert "s3cret" not in repr(store) and "s3cret" not in caplog.text
    finally:
        store.close()


def test_credentials_come_from_config_and_env_and_are_redacted(tmp_path):
    from mcrecall.core.config import ConfigError, as_dict, load_config
    from mcrecall.plugins import vector_store_from_config

    cfg = load_config(environ={"MCRECALL_INDEX_TOKEN": "root:s3cret-pw", "MCRECALL_INDEX_SECURE": "false",
                               "MCRECALL_STORE_DATA_DIR": str(tmp_path)})
    assert cfg.index.token == "root:s3cret-pw"
    assert as_dict(cfg)["index"]["token"] == "<redacted>" and "s3cret" not in repr(as_dict(cfg))
    store = vector_store_from_config(cfg)  # Milvus Lite ignores credentials; the file mode opens
    try:
        assert "s3cret" not in repr(store)
    finally:
        store.close()
    with pytest.raises(ConfigError, match="token or user/password"):
        load_config(environ={"MCRECALL_INDEX_TOKEN": "a:b", "MCRECALL_INDEX_USER": "a"})


def test_a_recall_client_answers_again_after_its_milvus_lite_restarts(tmp_path):
    """RecallClient over `mcrecall milvus`'s server: a restart on the same data costs a few
    seconds of clear errors (the server's words), then recalls return what they did before."""
    from mcrecall.core.config import load_config
    from mcrecall.serve import RecallClient, VectorStoreUnavailableError
    from mcrecall.serve.testing import publish_vectors
    from mcrecall.train.versions import ModelRegistry

    server = MilvusLiteServer(tmp_path / "srv", log_path=tmp_path / "srv.log")
    uri = server.start(timeout=90)
    cfg = load_config(environ={}).with_overrides(
        store={"data_dir": str(tmp_path / "data")},
        index={"backend": "milvus", "uri": uri, "collection": "rc", "timeout_s": 2.0})
    V = clustered_vectors(400, 8, n_clusters=5)
    U = clustered_vectors(20, 8, n_clusters=5, seed=3)
    reg = ModelRegistry(cfg.data_dir)
    client = None
    try:
        from mcrecall.plugins import vector_store_from_config

        vs = vector_store_from_config(cfg)
        publish_vectors(reg, vs, user_ids=[f"u{i}" for i in range(20)], user_vectors=U,
                        item_ids=[f"i{j}" for j in range(400)], item_vectors=V, index_type="AUTOINDEX")
        vs.close()
        client = RecallClient(cfg, registry=reg)
        before = [r.item_id for r in client.recall("u1", 5)]
        assert len(before) == 5 and all(r.source == "model" for r in client.recall("u1", 5))
        server.stop()
        with pytest.raises(VectorStoreUnavailableError, match=r"\S"):
            client.recall("u1", 5)
        server = MilvusLiteServer(tmp_path / "srv", port=server.port, log_path=tmp_path / "srv.log")
        server.start(timeout=90)
        t0, got = time.monotonic(), None
        while time.monotonic() - t0 < 15:
            try:
                got = [r.item_id for r in client.recall("u1", 5)]
                break
            except VectorStoreUnavailableError:
                time.sleep(0.5)
        assert got == before, "no recall within 15 s of the server's return"
    finally:
        if client is not None:
            client.close()
        reg.close()
        server.stop()


def _mcrecall(args, data, timeout=300, **env):
    e = {**ENV, "MCRECALL_STORE_DATA_DIR": str(data), **env}
    e.pop("MCRECALL_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "mcrecall", *args], env=e, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_following_the_lock_errors_advice_serves_the_published_versions(tmp_path):
    """Issue 20 #4: the lock error names the exact command; `mcrecall milvus` serves the data
    dir's own file-mode database by default, so recall through it finds the current version."""
    import json

    data = tmp_path / "data"
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"user_id": u, "item_id": f"i{(u * 7 + j) % 40}",
                                          "action": "like"}) + "\n" for u in range(200) for j in range(6)))
    assert _mcrecall(["ingest", "--from-file", str(events)], data).returncode == 0
    tr = _mcrecall(["train"], data, MCRECALL_TRAIN_DIM="4", MCRECALL_TRAIN_EPOCHS="2")
    assert tr.returncode == 0, tr.stdout[-2000:] + tr.stderr[-2000:]
    db = data / "milvus.db"  # file mode, the default
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        locked = _mcrecall(["recall", "0", "-k", "3"], data)
        assert locked.returncode == 1 and "Traceback" not in locked.stderr
        assert f"mcrecall milvus --db {db.absolute()}" in locked.stderr, locked.stderr
        # a refresher that loses the file: one line, not a 25-line traceback every cycle
        more = tmp_path / "more.jsonl"
        more.write_text("".join(json.dumps({"user_id": u, "item_id": "new-item", "action": "like"}) + "\n"
                                for u in range(20)))
        assert _mcrecall(["ingest", "--from-file", str(more)], data).returncode == 0
        ref = subprocess.Popen([sys.executable, "-m", "mcrecall", "refresh", "--every", "1s"],
                               env={**ENV, "MCRECALL_STORE_DATA_DIR": str(data)}, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(12)
        ref.send_signal(signal.SIGINT)
        _, err = ref.communicate(timeout=60)
        failed = [ln for ln in err.splitlines() if "cycle failed" in ln]
        assert "Traceback" not in err and len(failed) == 1, err
        assert "is locked by another process" in failed[0]
    finally:
        holder.kill()
        holder.wait()
    # issue 20 #13: pymilvus's own ERROR lines stay out of the command's output
    other = _mcrecall(["recall", "0", "-k", "3"], data, MCRECALL_INDEX_COLLECTION="other")
    assert other.returncode == 1 and len(other.stderr.strip().splitlines()) == 1, other.stderr
    assert "[ERROR]" not in other.stderr and "does not have it" in other.stderr
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mcrecall", "milvus", "--port", str(port)],
                              env={**ENV, "MCRECALL_STORE_DATA_DIR": str(data)}, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not server_answers(f"http://127.0.0.1:{port}", timeout=1.0):
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        rec = _mcrecall(["recall", "0", "-k", "3"], data, MCRECALL_INDEX_URI=f"http://127.0.0.1:{port}")
        assert rec.returncode == 0, rec.stderr
        assert "model version 1" in rec.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)

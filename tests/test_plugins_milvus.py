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

from plugins import open_vector_store
from plugins.milvus_server import MilvusLiteServer, free_port, port_open, server_answers
from plugins.milvus_store import MilvusStoreLockedError
from plugins.testing import clustered_vectors

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

_HOLDER = r"""
import sys, time
from plugins import open_vector_store
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
            MilvusLiteServer(db).start(timeout=60)
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


def test_server_restart_keeps_versions_and_reloads_them(tmp_path):
    """A restarted server reopens collections released: the store loads them on first use."""
    x = clustered_vectors(300, 8, n_clusters=5)
    ids = [f"i{i}" for i in range(300)]
    server = MilvusLiteServer(tmp_path / "srv", log_path=tmp_path / "srv.log")
    uri = server.start(timeout=90)
    try:
        store = open_vector_store("milvus", uri=uri, collection="restart")
        store.create_version(1, 8, "COSINE", "HNSW", similarity="cosine")
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
        "from mcrecall.config import load_config\n"
        "from plugins.cli import add_milvus_arguments, run_milvus\n"
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
        assert (tmp_path / "data" / "milvus-server").is_dir()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}" in out and "Traceback" not in out
    assert not port_open("127.0.0.1", port)


def test_flat_l2_batches_are_split_to_bound_milvus_lite_memory(tmp_path, monkeypatch):
    """Milvus Lite's brute-force L2 allocates queries × rows × dim floats: big batches go in slices."""
    import plugins.milvus_store as ms

    store = open_vector_store("milvus", uri=str(tmp_path / "m.db"))
    try:
        x = clustered_vectors(300, 8, n_clusters=5)
        store.create_version(1, 8, "L2", "FLAT", max_norm=float(np.linalg.norm(x, axis=1).max()))
        store.upsert(1, [f"i{i}" for i in range(300)], x)
        store.finalize(1)
        spec = store.version_info(1)
        assert store._queries_per_call(spec, 1000) == ms._FLAT_L2_BYTES // (300 * 9 * 4)
        monkeypatch.setattr(ms, "_FLAT_L2_BYTES", 300 * 9 * 4 * 2)  # two queries per call
        assert store._queries_per_call(spec, 1000) == 2
        q = x[:5] + 0.01
        assert store.search_batch(1, q, 4) == [store.search(1, v, 4) for v in q]
    finally:
        store.close()

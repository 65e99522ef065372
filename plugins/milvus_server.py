"""Run a local Milvus Lite server on 127.0.0.1 for several processes.

Milvus Lite (2.5, the C++ engine) serves a ``.db`` file from one server process
that holds the file's lock; processes that share item vectors (the trainer
publishing, clients recalling) connect to one server by URI — the same client
code path as a real Milvus server. The database is ``<data_dir>/milvus.db``.

>>> with MilvusLiteServer("mcrecall-data/milvus-server") as server:   # doctest: +SKIP
...     vs = open_vector_store("milvus", uri=server.uri)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mcrecall.core.net import free_port, port_open

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 19530
DB_NAME = "milvus.db"


def engine_command(db_file, host: str, port: int) -> tuple[list[str], dict, str]:
    """(argv, environment, lock path) of the Milvus Lite engine serving ``db_file`` on TCP,
    the way ``milvus_lite.server.Server`` runs it. (No ``Server`` object: its destructor
    deletes the lock file, which would let a second server take a database in use.)"""
    from milvus_lite.server import BIN_PATH

    from mcrecall.plugins.milvus_store import _lock_path, check_db_name  # first: silences milvus-lite's import warning

    db_file = check_db_name(str(db_file))
    bin_path = Path(os.environ.get("BIN_PATH") or BIN_PATH).absolute()
    env = {**os.environ,
           "LD_LIBRARY_PATH": os.pathsep.join([str(bin_path), os.environ.get("LD_LIBRARY_PATH", "")])}
    argv = [str(bin_path / "milvus"), db_file, f"{host}:{port}", os.environ.get("LOG_LEVEL", "ERROR")]
    return argv, env, _lock_path(db_file)


def _take_lock(lock_path: str, db_file):
    """Hold the database's lock file (as Milvus Lite does) or raise MilvusStoreLockedError."""
    import fcntl

    from mcrecall.plugins.milvus_store import _FILE_USERS, MilvusStoreLockedError

    if _FILE_USERS.get(str(Path(db_file).absolute())):
        raise MilvusStoreLockedError(f"Milvus Lite database {db_file} is open in file mode in this process")
    fd = open(lock_path, "a")
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fd.close()
        raise MilvusStoreLockedError(f"Milvus Lite database {db_file} is locked by another process") from None
    return fd


def serve_forever(db_file, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, on_ready=None) -> int:
    """Serve ``db_file`` with Milvus Lite on ``host:port`` until SIGTERM/SIGINT; return 0.

    The engine (milvus-lite's ``milvus`` binary) is a child that dies with this
    process, which holds the file's lock meanwhile: stopping or killing this
    process always stops the engine.

    Raises
    ------
    RuntimeError
        The file is locked by another process, or the engine did not start.
    """
    import threading

    from mcrecall.plugins.milvus_store import quiet_pymilvus

    quiet_pymilvus()
    db_file = Path(db_file).absolute()
    db_file.parent.mkdir(parents=True, exist_ok=True)
    argv, env, lock_path = engine_command(db_file, host, port)
    lock = _take_lock(lock_path, db_file)
    try:
        engine = subprocess.Popen(argv, env=env, cwd=str(db_file.parent), stdin=subprocess.DEVNULL,
                                  preexec_fn=_die_with_parent)
        done = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            deadline = time.monotonic() + 60
            while not server_answers(f"http://{host}:{port}", timeout=2.0):
                if engine.poll() is not None or time.monotonic() > deadline or done.is_set():
                    raise RuntimeError(f"Milvus Lite did not answer on {host}:{port} (exit {engine.poll()})")
                time.sleep(0.2)
            if on_ready is not None:
                on_ready()
            while not done.wait(0.5):
                if engine.poll() is not None:
                    raise RuntimeError(f"the Milvus Lite engine exited with code {engine.returncode}")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            _stop_engine(engine, 10.0)
    finally:
        lock.close()
    return 0


def _stop_engine(engine: subprocess.Popen, timeout: float) -> None:
    if engine.poll() is None:
        engine.terminate()  # the engine closes its file before the lock goes
        try:
            engine.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            engine.kill()
            engine.wait()


def server_answers(uri: str, timeout: float = 5.0) -> bool:
    """True when a Milvus server at ``uri`` answers a ``list_collections`` call."""
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=uri, timeout=timeout)
    except Exception:
        return False
    try:
        client.list_collections(timeout=timeout)
        return True
    except Exception:
        return False
    finally:
        try:
            client.close()
        except Exception:
            pass


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the starting process dies (Linux), so a killed
    test run or demo never leaves a server holding the data-directory lock."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # not Linux/glibc: the server just outlives a crashed parent
        pass


class MilvusLiteServer:
    """The Milvus Lite engine as a child process on 127.0.0.1; this object holds the lock.

    Parameters
    ----------
    data_dir : path-like
        Directory of the database ``milvus.db`` (created if missing; locked while running).
    port : int
        TCP port; 0 picks a free one.
    host : str
        Bind address; 127.0.0.1 unless you mean to expose it.
    log_path : path-like, optional
        Where the engine's output goes (default ``<data_dir>.log``); None
        with ``inherit_output=True`` writes to this process's stdout/stderr.

    ``pid`` is the engine's own pid (a test can SIGSTOP it); it dies with this process.
    """

    def __init__(self, data_dir, port: int = 0, host: str = DEFAULT_HOST, log_path=None, inherit_output: bool = False):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = int(port) or free_port(host)
        self.inherit_output = inherit_output
        self.log_path = None if inherit_output else Path(log_path or f"{self.data_dir}.log")
        self.process: subprocess.Popen | None = None
        self._lock = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def db_file(self) -> Path:
        return (self.data_dir / DB_NAME).absolute()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 60.0) -> str:
        """Start the server and wait until it answers; return its URI.

        Raises
        ------
        RuntimeError
            The port is taken, the database is locked by another process, the
            engine exited, or it did not answer within ``timeout``.
        """
        if self.process is not None:
            return self.uri
        if port_open(self.host, self.port):
            raise RuntimeError(f"port {self.host}:{self.port} is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv, env, lock_path = engine_command(self.db_file, self.host, self.port)
        self._lock = _take_lock(lock_path, self.db_file)  # MilvusStoreLockedError is a RuntimeError
        out = None if self.inherit_output else open(self.log_path, "ab")
        try:
            # Own session: a Ctrl-C in a test runner's terminal does not kill it mid-run,
            # and stop() can signal exactly this process group.
            self.process = subprocess.Popen(
                argv, env=env, cwd=str(self.data_dir), stdout=out, stderr=subprocess.STDOUT if out else None,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            if out is not None:
                out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise RuntimeError(f"the Milvus Lite engine exited with code {code} during start-up: {self.log_tail()}")
            if port_open(self.host, self.port) and server_answers(self.uri, timeout=2.0):
                return self.uri
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Milvus Lite did not answer on {self.uri} within {timeout:.0f}s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return "\n".join(lines[-5:]) or "(empty log)"

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the engine by its pid (SIGTERM, SIGKILL after ``timeout``), then release the lock."""
        proc, self.process = self.process, None
        try:
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)  # a stopped engine cannot act on SIGTERM
                    os.killpg(proc.pid, signal.SIGTERM)  # its own group: only what we started
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=timeout)
        finally:
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.close()

    def wait(self) -> int:
        """Block until the server exits; return its exit code."""
        if self.process is None:
            return 0
        return self.process.wait()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":  # python -m mcrecall.plugins.milvus_server DB_FILE HOST PORT
    try:
        sys.exit(serve_forever(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    except Exception as e:  # one line for the parent's log, no traceback
        print(f"milvus-lite server: {e}", file=sys.stderr, flush=True)
        sys.exit(1)

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

from mcrecall.net import free_port, port_open  # noqa: F401  (re-exported)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 19530
DB_NAME = "milvus.db"


def serve_forever(db_file, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, on_ready=None) -> int:
    """Serve ``db_file`` with Milvus Lite on ``host:port`` until SIGTERM/SIGINT; return 0.

    The engine (milvus-lite's ``milvus`` binary, as ``milvus_lite.server.Server``
    runs it) is a child that dies with this process, which holds the file's lock
    meanwhile: stopping or killing this process always stops the engine.

    Raises
    ------
    RuntimeError
        The file is locked by another process, or the engine did not start.
    """
    import fcntl
    import threading

    from plugins.milvus_store import MilvusStoreLockedError, quiet_pymilvus  # first: its warning filter

    from milvus_lite.server import Server

    quiet_pymilvus()
    db_file = Path(db_file).absolute()
    db_file.parent.mkdir(parents=True, exist_ok=True)
    spec = Server(str(db_file), f"{host}:{port}")  # validates the file name; we run its command
    lock = open(spec._lock_path, "a")
    try:
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MilvusStoreLockedError(f"Milvus Lite database {db_file} is locked by another process") from None
        env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join([str(spec._bin_path), os.environ.get("LD_LIBRARY_PATH", "")])}
        engine = subprocess.Popen([str(a) for a in spec.args], env=env, cwd=str(db_file.parent),
                                  stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
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
            if engine.poll() is None:
                engine.terminate()  # the engine closes its file before the lock goes
                try:
                    engine.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    engine.kill()
                    engine.wait()
    finally:
        lock.close()
    return 0


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
    """A Milvus Lite server child process bound to 127.0.0.1 (see :func:`serve_forever`).

    Parameters
    ----------
    data_dir : path-like
        Directory of the database ``milvus.db`` (created if missing; locked while running).
    port : int
        TCP port; 0 picks a free one.
    host : str
        Bind address; 127.0.0.1 unless you mean to expose it.
    log_path : path-like, optional
        Where the server's output goes (default ``<data_dir>.log``); None
        with ``inherit_output=True`` writes to this process's stdout/stderr.
    """

    def __init__(self, data_dir, port: int = 0, host: str = DEFAULT_HOST, log_path=None, inherit_output: bool = False):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = int(port) or free_port(host)
        self.inherit_output = inherit_output
        self.log_path = None if inherit_output else Path(log_path or f"{self.data_dir}.log")
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "plugins.milvus_server", str(self.data_dir / DB_NAME), self.host, str(self.port)]

    def start(self, timeout: float = 60.0) -> str:
        """Start the server and wait until it answers; return its URI.

        Raises
        ------
        RuntimeError
            The port is taken, the process exited (e.g. the data directory is
            locked by another process), or it did not answer within ``timeout``.
        """
        if self.process is not None:
            return self.uri
        if port_open(self.host, self.port):
            raise RuntimeError(f"port {self.host}:{self.port} is already in use")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.inherit_output:
            out = None
        else:
            out = open(self.log_path, "ab")
        try:
            # Own session: a Ctrl-C in a test runner's terminal does not kill it mid-run,
            # and stop() can signal exactly this process group.
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
            self.process = subprocess.Popen(
                self.command(), stdout=out, env=env, stderr=subprocess.STDOUT if out else None,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            if out is not None:
                out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"milvus-lite server exited with code {code} during start-up: {self.log_tail()}")
            if port_open(self.host, self.port) and server_answers(self.uri, timeout=2.0):
                return self.uri
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"milvus-lite server did not answer on {self.uri} within {timeout:.0f}s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        locked = [ln for ln in lines if "lock" in ln.lower()]
        return (locked[-1] if locked else "\n".join(lines[-5:])) or "(empty log)"

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server by its pid: SIGINT (it stops the engine and releases the
        database lock), then SIGKILL after ``timeout``."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGINT)  # its own group: only what we started
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)

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


if __name__ == "__main__":  # python -m plugins.milvus_server DB_FILE HOST PORT
    try:
        sys.exit(serve_forever(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    except Exception as e:  # one line for the parent's log, no traceback
        print(f"milvus-lite server: {e}", file=sys.stderr, flush=True)
        sys.exit(1)

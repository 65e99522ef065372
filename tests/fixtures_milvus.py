"""Pytest fixtures for Milvus: one server URI for the whole session.

``milvus_uri`` is a Milvus server address, whichever way it comes:

* a Docker engine is reachable and a ``milvusdb/milvus`` image is already
  present → a real Milvus standalone in a testcontainer;
* otherwise → ``milvus-lite server`` on a free 127.0.0.1 port
  (plugins/milvus_server.py), with its data in a session temp directory.

Either way tests get ``http://host:port`` and the same client code path, and
the server is stopped at the end of the session. Tests needing a unique
collection use ``milvus_collection``.

``milvus_real_uri`` is a real Milvus server (tests marked ``milvus_server``):
``MCRECALL_TEST_MILVUS_URI`` if set, else a Milvus standalone from the PyPI
``milvus`` package (tests/milvus_standalone.py) — started only when this
process runs in a private network namespace (only ``lo``; .ci/run uses
``unshare -n``), because about nine of its ports listen on all interfaces.
Otherwise those tests are skipped (deselect them with ``-m "not milvus_server"``).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

MILVUS_URI_ENV = "MCRECALL_TEST_MILVUS_URI"
STANDALONE = Path(__file__).with_name("milvus_standalone.py")

_counter = itertools.count()


def _docker_milvus_image() -> str | None:
    """A locally present milvus image when a Docker engine answers, else None."""
    if os.environ.get("MCRECALL_TEST_NO_DOCKER"):
        return None
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        for image in client.images.list():
            for tag in image.tags:
                if tag.startswith("milvusdb/milvus:"):
                    return tag
    except Exception:  # no engine, no permission, no SDK: fall back to Milvus Lite
        return None
    return None


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory):
    """URI of a Milvus server shared by the test session (testcontainer or milvus-lite)."""
    image = _docker_milvus_image()
    if image is not None:
        from testcontainers.community.milvus import MilvusContainer

        with MilvusContainer(image=image) as container:
            yield container.get_connection_url()
        return
    from mcrecall.plugins.milvus_server import MilvusLiteServer

    data_dir = tmp_path_factory.mktemp("milvus-server") / "data"
    server = MilvusLiteServer(data_dir)
    try:
        server.start(timeout=90)
    except RuntimeError as e:
        pytest.fail(f"could not start milvus-lite server: {e}")
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def milvus_collection(request):
    """A collection base name unique within the session (the server is shared)."""
    name = "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:40]
    return f"t{os.getpid()}_{next(_counter)}_{name}"


def in_private_network_namespace() -> bool:
    """True when the only network interface is loopback (e.g. under ``unshare -n``)."""
    try:  # /proc/net/dev is per network namespace (/sys/class/net is the mounter's)
        lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    except OSError:
        return False
    return {ln.split(":")[0].strip() for ln in lines} <= {"lo"}


class StandaloneMilvus:
    """A real Milvus standalone child (tests/milvus_standalone.py), stopped by its pid."""

    def __init__(self, base_dir, port: int = 19530):
        self.base_dir, self.port = Path(base_dir), port
        self.process: subprocess.Popen | None = None
        self.uri = ""

    def start(self, timeout: float = 240.0) -> str:
        import select

        self.base_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.base_dir.parent / f"{self.base_dir.name}.log", "ab")
        self.process = subprocess.Popen([sys.executable, str(STANDALONE), str(self.base_dir), str(self.port)],
                                        stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        log.close()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline().strip() if ready else ""
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"Milvus standalone did not start within {timeout:.0f}s (log: {log.name})")
        self.uri = line.split()[1]
        return self.uri

    def stop(self, timeout: float = 60.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)  # its own group: the launcher and the milvus binary
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)


@pytest.fixture(scope="session")
def milvus_real_server(tmp_path_factory):
    """The session's real Milvus standalone (a StandaloneMilvus), or None when
    ``MCRECALL_TEST_MILVUS_URI`` names an outside server. One per network namespace:
    its internal ports are fixed, so a second one cannot start beside it."""
    if os.environ.get(MILVUS_URI_ENV):
        yield None
        return
    if not in_private_network_namespace():
        pytest.skip(f"no real Milvus: set {MILVUS_URI_ENV} or run under `unshare -n` (see .ci/run)")
    try:
        import milvus  # noqa: F401
    except ImportError:
        pytest.skip("the PyPI `milvus` package (a Milvus standalone) is not installed")
    server = StandaloneMilvus(tmp_path_factory.mktemp("milvus-standalone") / "base")
    try:
        server.start()
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def milvus_real_uri(milvus_real_server):
    """URI of a real Milvus server (env ``MCRECALL_TEST_MILVUS_URI`` or a private-netns standalone)."""
    return os.environ.get(MILVUS_URI_ENV) or milvus_real_server.uri


@pytest.fixture
def milvus_standalone(milvus_real_server):
    """The session's real standalone, for tests that restart it (not an outside server)."""
    if milvus_real_server is None:
        pytest.skip(f"{MILVUS_URI_ENV} names an outside server: not restarted by tests")
    yield milvus_real_server
    if milvus_real_server.process is None:  # a test left it stopped
        milvus_real_server.start()

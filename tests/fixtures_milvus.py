"""Pytest fixtures for Milvus: one server URI for the whole session.

``milvus_uri`` is a Milvus server address, whichever way it comes:

* a Docker engine is reachable and a ``milvusdb/milvus`` image is already
  present → a real Milvus standalone in a testcontainer;
* otherwise → ``milvus-lite server`` on a free 127.0.0.1 port
  (plugins/milvus_server.py), with its data in a session temp directory.

Either way tests get ``http://host:port`` and the same client code path, and
the server is stopped at the end of the session. Tests needing a unique
collection use ``milvus_collection``.
"""

from __future__ import annotations

import itertools
import os

import pytest

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
    from plugins.milvus_server import MilvusLiteServer

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

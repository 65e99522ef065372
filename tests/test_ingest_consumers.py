"""The worker's Kafka client interface (ingest/consumers.py), for each client, on a real broker."""

from __future__ import annotations

import time

import pytest
from fixtures_kafka import worker_client

from mcrecall.core.config import ConfigError, load_config
from mcrecall.ingest import consumers
from mcrecall.ingest.broker import free_port
from mcrecall.ingest.consumers import Partition, open_consumer, open_dlq_producer

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.usefixtures("kafka_client")]


def _cfg(bootstrap, topic, **kafka):
    return load_config(environ={}).with_overrides(
        kafka={"bootstrap_servers": bootstrap, "topic": topic, "group_id": "gc",
               "session_timeout_ms": 6000, "client": worker_client(), **kafka})


def _assigned_consumer(cfg, seeks):
    """A subscribed consumer of ``cfg``'s client whose on_assigned seeks as ``seeks`` says."""
    c = open_consumer(cfg)
    got = []

    def on_assigned(tps):
        for tp in tps:
            seeks(c, tp)
        got.extend(tps)

    c.subscribe(cfg.kafka.topic, on_assigned=on_assigned, on_revoked=lambda tps: None)
    return c, got


def _poll_until(c, n, timeout=30):
    out, deadline = {}, time.monotonic() + timeout
    while sum(len(v) for v in out.values()) < n and time.monotonic() < deadline:
        for tp, recs in c.poll(0.5).items():
            out.setdefault(tp, []).extend(recs)
    return out


def test_poll_seek_watermarks_commit_and_dlq_headers(kafka_bootstrap, kafka_topic):
    cfg = _cfg(kafka_bootstrap, kafka_topic)
    p = open_dlq_producer(cfg)
    futures = [p.send(kafka_topic, key=b"k%d" % n, value=b"v%d" % n,
                      headers=[("source-offset", str(n).encode())]) for n in range(40)]
    p.flush(10)
    for f in futures:
        f.get(10)
    p.close()

    # every partition starts at offset 2: the records below it are never returned
    c, assigned = _assigned_consumer(cfg, lambda c, tp: c.seek(tp, 2))
    try:
        got = _poll_until(c, 40 - 2 * 4)
        assert sorted(tp.partition for tp in assigned) == [0, 1, 2, 3]
        assert c.assignment() == {Partition(kafka_topic, p) for p in range(4)}
        total = 0
        for tp, recs in got.items():
            assert tp == Partition(kafka_topic, tp.partition)
            offsets = [r.offset for r in recs]
            assert offsets == list(range(2, 2 + len(recs))), offsets  # in order, from the seek
            assert all(r.value.startswith(b"v") and r.key.startswith(b"k") for r in recs)
            total += len(recs)
        assert total == 40 - 2 * 4
        marks = c.watermarks([Partition(kafka_topic, p) for p in range(4)], timeout_s=10)
        # >= 1, not == the real end: tansu answers ListOffsets(latest) with the base offset of
        # the partition's last record batch + 1 (a real Kafka answers the last offset + 1)
        assert all(lo == 0 and 1 <= hi <= 2 + len(got[tp]) for tp, (lo, hi) in marks.items()), marks
        assert c.lag() in (0, None)
        c.commit_async({(kafka_topic, 0): 1})
        assert c.reachable(timeout_s=2.0) is True
    finally:
        c.close()


def test_seek_to_beginning_and_end_in_the_assignment_callback(kafka_bootstrap, kafka_topic):
    cfg = _cfg(kafka_bootstrap, kafka_topic)
    p = open_dlq_producer(cfg)
    for n in range(20):  # one record batch each: tansu's "end" is the last batch's base + 1
        p.send(kafka_topic, value=b"old%d" % n)
        p.flush(10)
    c, _ = _assigned_consumer(cfg, lambda c, tp: c.seek_to_end(tp))
    try:
        assert _poll_until(c, 1, timeout=8) == {}  # joined at the end: nothing old comes back
        assert c.assignment()
        for n in range(8):
            p.send(kafka_topic, value=b"new%d" % n)
        p.flush(10)
        got = _poll_until(c, 8)
        assert sorted(r.value for recs in got.values() for r in recs) == sorted(b"new%d" % n for n in range(8))
    finally:
        c.close()
        p.close()
    c, _ = _assigned_consumer(cfg, lambda c, tp: c.seek_to_beginning(tp))
    try:
        assert sum(len(v) for v in _poll_until(c, 28).values()) == 28
    finally:
        c.close()


def test_unreachable_broker_is_reported_within_the_timeout(kafka_topic):
    cfg = _cfg(f"127.0.0.1:{free_port()}", kafka_topic)  # nothing listens there
    try:
        c = open_consumer(cfg)
    except consumers.KAFKA_ERRORS:
        return  # kafka-python refuses to construct without a bootstrap broker: reported by the worker
    try:
        t = time.monotonic()
        assert c.reachable(timeout_s=1.0) is False
        assert time.monotonic() - t < 5
    finally:
        c.close()


def test_dead_letter_to_an_unreachable_broker_fails_instead_of_hanging(kafka_bootstrap, kafka_topic):
    if worker_client() != "confluent":
        pytest.skip("kafka-python's producer refuses to construct without a broker")
    cfg = _cfg(f"127.0.0.1:{free_port()}", kafka_topic)
    p = open_dlq_producer(cfg)
    f = p.send(kafka_topic, value=b"x")
    with pytest.raises(consumers.KAFKA_ERRORS):
        f.get(timeout=1.0)
    with pytest.raises(consumers.KAFKA_ERRORS):
        p.flush(timeout=0.5)


def test_confluent_client_without_the_package_is_a_one_line_config_error(monkeypatch):
    monkeypatch.setattr(consumers, "_ck", None)
    cfg = load_config(environ={}).with_overrides(kafka={"client": "confluent"})
    with pytest.raises(ConfigError, match=r"mcrecall\[fast\]"):
        open_consumer(cfg)
    with pytest.raises(ConfigError, match="confluent-kafka"):
        open_dlq_producer(cfg)


def test_client_key_is_validated_and_read_from_the_environment():
    assert load_config(environ={}).kafka.client == "kafka-python"
    assert load_config(environ={"MCRECALL_KAFKA_CLIENT": "Confluent"}).kafka.client == "confluent"
    with pytest.raises(ConfigError, match="kafka-python, confluent"):
        load_config(environ={"MCRECALL_KAFKA_CLIENT": "librdkafka"})

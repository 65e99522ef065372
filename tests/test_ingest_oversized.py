"""No single message stops ingest (issue: a 3 MB message made the worker retry its batch forever).

Real broker, real LMDB: 1, 3 and 10 MB values between good events on one partition; the dead
letters are cut to ``[ingest] max_message_bytes``; a DLQ that refuses every write (a real proxy in
front of the broker that drops produce requests) costs a counted, logged bad event, never the
worker.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time

import pytest
from eventlib import store_scores
from fixtures_kafka import worker_client
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from mcrecall.core.config import load_config
from mcrecall.ingest import dead_letters
from mcrecall.ingest.broker import broker_command, free_port, port_open
from mcrecall.ingest.kafka_io import ensure_topic
from mcrecall.ingest.store import TripleStore
from mcrecall.ingest.worker import IngestWorker

# every test runs once per [kafka] client (fixtures_kafka.kafka_client)
pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.usefixtures("kafka_client")]
MB = 1_000_000


def _cfg(bootstrap, topic, data_dir, **ingest):
    return load_config(environ={}).with_overrides(
        kafka={"bootstrap_servers": bootstrap, "topic": topic, "group_id": "g", "session_timeout_ms": 6000,
               "client": worker_client()},
        store={"data_dir": str(data_dir)}, ingest=ingest)


def _good(k: int) -> bytes:
    return json.dumps({"user_id": f"u{k}", "item_id": f"i{k % 5}", "action": "click"}).encode()


def _send(bootstrap, topic, values, key=None):
    # the broker (tansu) takes 30 MB messages; the client must be allowed to send them too
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=64 << 20)
    for v in values:
        p.send(topic, value=v, key=key, partition=0)
    p.flush()
    p.close()


def _read_dlq(bootstrap, topic, n, timeout=30):
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                      max_partition_fetch_bytes=16 << 20, fetch_max_bytes=32 << 20)
    tp = TopicPartition(topic + ".dlq", 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            out.extend(recs)
    c.close()
    return out


def _run(worker, until_idle, limit_s=120):
    """Run the worker in a thread; fail (instead of hanging) when it does not end in time."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("stats", worker.run(until_idle=until_idle)), daemon=True)
    t.start()
    t.join(limit_s)
    if t.is_alive():
        worker.stop()
        t.join(30)
        pytest.fail(f"the worker did not finish within {limit_s} s (stuck on one message?)")
    return out["stats"]


@pytest.mark.parametrize("size", [1 * MB, 3 * MB, 10 * MB])
def test_an_oversized_message_goes_truncated_to_the_dlq_and_ingest_goes_on(kafka_bootstrap, tmp_path, size):
    topic = f"big-{size}-{time.monotonic_ns()}"
    ensure_topic(kafka_bootstrap, topic, partitions=1)
    # a valid-looking event, bad only because of its size
    big = json.dumps({"user_id": "u", "item_id": "i", "action": "click", "pad": "x" * size}).encode()
    stream = [_good(k) for k in range(5)] + [big] + [_good(k) for k in range(5, 10)]
    _send(kafka_bootstrap, topic, stream, key=b"user-key")

    cfg = _cfg(kafka_bootstrap, topic, tmp_path / "data", max_message_bytes=200_000)
    stats = _run(IngestWorker(cfg), until_idle=3)
    assert (stats.events, stats.bad_events) == (10, 1)

    store = TripleStore(cfg.data_dir)
    assert store_scores(store) == {(f"u{k}", f"i{k % 5}"): 1 for k in range(10)}
    assert store.offsets(topic) == {(topic, 0): len(stream)}
    assert store.counts()["dlq_failed"] == 0

    (dead,) = _read_dlq(kafka_bootstrap, topic, 1)
    h = {k: v.decode() for k, v in dead.headers}
    assert h["source-topic"] == topic and h["source-partition"] == "0" and h["source-offset"] == "5"
    assert "max 65536" in h["error"]
    assert h["original-size"] == str(len(big)) and h["truncated"] == "true"
    assert dead.key == b"user-key"
    assert len(dead.value) + len(dead.key) + sum(len(k) + len(v) for k, v in dead.headers) <= 200_000
    assert big.startswith(dead.value) and len(dead.value) > 150_000  # cut, not dropped


def test_a_dead_letter_that_fits_is_forwarded_unchanged_with_size_headers(kafka_bootstrap, tmp_path):
    topic = f"fits-{time.monotonic_ns()}"
    ensure_topic(kafka_bootstrap, topic, partitions=1)
    bad = json.dumps({"user_id": "u", "item_id": "i", "action": "click", "pad": "y" * 100_000}).encode()
    _send(kafka_bootstrap, topic, [_good(0), bad, _good(1)])
    cfg = _cfg(kafka_bootstrap, topic, tmp_path / "data")  # default max_message_bytes: 1 MB
    assert _run(IngestWorker(cfg), until_idle=3).bad_events == 1
    (dead,) = _read_dlq(kafka_bootstrap, topic, 1)
    h = {k: v.decode() for k, v in dead.headers}
    assert dead.value == bad
    assert (h["original-size"], h["truncated"]) == (str(len(bad)), "false")


def test_dead_letter_record_is_cut_to_the_limit_whatever_the_key_and_reason():
    """The cut itself (no broker): key, value and headers together stay within the limit."""
    for key in (None, b"", b"k" * 10, b"K" * 3 * MB):
        for value in (b"", b"v" * 100, b"V" * 5 * MB):
            dl = dead_letters.DeadLetter("t", 3, 17, key, value, "r\u00e9ason " * 1000)
            for limit in (4096, 65536, MB):
                k, v, headers = dead_letters.build_record(dl, limit)
                size = len(k or b"") + len(v) + sum(len(n) + len(x) for n, x in headers)
                assert size + dead_letters.FRAMING_BYTES <= limit
                h = dict(headers)
                assert h["source-offset"] == b"17" and h["source-partition"] == b"3"
                assert h["original-size"] == str(len(value)).encode()
                h["error"].decode("utf-8")  # cut on a character boundary
                whole = (k or b"") == (key or b"") and v == value
                assert h["truncated"] == (b"false" if whole else b"true")
                assert value.startswith(v) and (key or b"").startswith(k or b"")


# ---------------------------------------------------------------------------- a DLQ that refuses writes
class _DropProduceProxy:
    """A TCP proxy in front of a broker that cuts every connection sending a Produce request
    (Kafka API key 0) while ``drop_produce`` is set; everything else passes unchanged."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.drop_produce = False
        self._srv = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._copy, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _read(sock, n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise OSError("closed")
            buf += chunk
        return buf

    def _requests(self, client, upstream):
        try:
            while True:
                size = self._read(client, 4)
                frame = self._read(client, struct.unpack(">i", size)[0])
                if self.drop_produce and struct.unpack(">h", frame[:2])[0] == 0:
                    raise OSError("produce dropped")
                upstream.sendall(size + frame)
        except OSError:
            for s in (client, upstream):
                s.close()

    @staticmethod
    def _copy(src, dst):
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            s.close()

    def close(self):
        self._closed = True
        self._srv.close()


def test_a_dlq_that_stays_unwritable_costs_a_counted_bad_event_not_the_worker(tmp_path, caplog):
    import subprocess

    caplog.set_level(logging.INFO, logger="mcrecall.ingest")
    broker_port = free_port()
    proxy = _DropProduceProxy(broker_port)
    # the broker advertises the proxy, so every client (the worker's too) goes through it
    cmd = broker_command(broker_port)
    cmd[cmd.index("--advertised-listener-url") + 1] = f"tcp://127.0.0.1:{proxy.port}"
    with open(tmp_path / "b.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", broker_port):
            assert time.monotonic() < deadline and proc.poll() is None, "broker did not start"
            time.sleep(0.1)
        bootstrap = f"127.0.0.1:{proxy.port}"
        topic = "nodlq"
        ensure_topic(bootstrap, topic, partitions=1)
        stream = [_good(k) for k in range(3)] + [b"not json", b"\xff" * (2 * MB)] + [_good(k) for k in range(3, 6)]
        _send(bootstrap, topic, stream)
        proxy.drop_produce = True

        cfg = _cfg(bootstrap, topic, tmp_path / "data")
        worker = IngestWorker(cfg, dlq_timeout_s=2.0)
        stats = _run(worker, until_idle=3)
        assert (stats.events, stats.bad_events) == (6, 2)
        store = TripleStore(cfg.data_dir)
        assert store_scores(store) == {(f"u{k}", f"i{k % 5}"): 1 for k in range(6)}
        assert store.offsets(topic) == {(topic, 0): len(stream)}  # moved past both
        c = store.counts()
        assert (c["bad_events"], c["dlq_failed"]) == (2, 2)
        lines = [r for r in caplog.records if r.getMessage() == "dlq_unwritable"]
        assert sorted(r.source_offset for r in lines) == [3, 4]
        assert all(r.source_topic == topic and r.source_partition == 0 for r in lines)
    finally:
        proxy.close()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def test_a_reason_quoting_hostile_input_still_makes_a_header():
    dl = dead_letters.DeadLetter("t", 0, 1, b"\x00k\n", b"\xff\xfe", "bad id '\ud800\\\n\t\x00'")
    _, value, headers = dead_letters.build_record(dl, 4096)
    assert value == b"\xff\xfe" and b"\\ud800" in dict(headers)["error"]

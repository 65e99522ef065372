"""The ingest worker against a real Kafka-protocol broker and a real LMDB store."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eventlib import expected_scores, random_events, store_scores
from fixtures_kafka import worker_client
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from mcrecall.core.config import load_config
from mcrecall.ingest.backfill import backfill_file
from mcrecall.ingest.produce import produce_lines
from mcrecall.ingest.store import TripleStore
from mcrecall.ingest.worker import IngestWorker

# every test runs once per [kafka] client (fixtures_kafka.kafka_client)
pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.usefixtures("kafka_client")]
ROOT = Path(__file__).resolve().parents[1]


def make_cfg(bootstrap, topic, data_dir, group="g"):
    return load_config(environ={}).with_overrides(
        kafka={"bootstrap_servers": bootstrap, "topic": topic, "group_id": group,
               "session_timeout_ms": 6000, "client": worker_client()},
        store={"data_dir": str(data_dir)})


def worker_env(bootstrap, topic, data_dir, group="g"):
    env = dict(os.environ)
    env.update({"MCRECALL_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "MCRECALL_KAFKA_TOPIC": topic,
                "MCRECALL_KAFKA_GROUP_ID": group, "MCRECALL_KAFKA_SESSION_TIMEOUT_MS": "6000",
                "MCRECALL_STORE_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)})
    return env


def start_worker(env, *extra, log_path=None):
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "mcrecall", "ingest", *extra], env=env,
                            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def send_raw(bootstrap, topic, values):
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=2 << 20)
    for v in values:
        p.send(topic, value=v)
    p.flush()
    p.close()


def read_dlq(bootstrap, topic, n, timeout=30):
    c = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    tp = TopicPartition(topic + ".dlq", 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            out.extend(recs)
    c.close()
    return out


def test_bad_events_go_to_dlq_and_good_neighbours_are_stored(kafka_bootstrap, kafka_topic, tmp_path):
    good = [json.dumps({"user_id": f"u{k}", "item_id": f"i{k % 3}", "action": "click"}).encode()
            for k in range(6)]
    bad = {
        b"\x00\x01 binary": "not JSON",
        b'"just a string"': "JSON object",
        b'{"user_id": 1.5, "item_id": 1, "action": "click"}': "user_id must be",
        b'{"user_id": "u", "item_id": 1, "action": "purchase"}': "unknown action",
        b'{"user_id": "", "item_id": 1, "action": "click"}': "user_id is empty",
        b'{"user_id": "u", "item_id": "", "action": "click"}': "item_id is empty",
        json.dumps({"user_id": "u", "item_id": 1, "action": "click", "pad": "x" * 70_000}).encode(): "max 65536",
        b"\xc3\x28": "not UTF-8",
    }
    stream = []
    for k, (raw, _) in enumerate(bad.items()):  # every bad event between two good ones
        stream += [good[k % len(good)], raw]
    stream += good
    send_raw(kafka_bootstrap, kafka_topic, stream)

    cfg = make_cfg(kafka_bootstrap, kafka_topic, tmp_path / "data")
    stats = IngestWorker(cfg).run(until_idle=3)
    assert (stats.events, stats.bad_events) == (len(stream) - len(bad), len(bad))

    store = TripleStore(cfg.data_dir)
    assert store_scores(store) == {(f"u{k}", f"i{k % 3}"): 1 for k in range(6)}
    assert store.counts()["bad_events"] == len(bad)

    dead = read_dlq(kafka_bootstrap, kafka_topic, len(bad))
    assert len(dead) == len(bad)
    for rec in dead:
        headers = {k: v.decode() for k, v in rec.headers}
        assert rec.value in bad, "the dead letter must be the message unchanged"
        assert bad[rec.value] in headers["error"], (headers["error"], bad[rec.value])
        assert headers["source-topic"] == kafka_topic
        # the offset header points at the original message
        c = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
        tp = TopicPartition(kafka_topic, int(headers["source-partition"]))
        c.assign([tp])
        c.seek(tp, int(headers["source-offset"]))
        orig = []
        deadline = time.monotonic() + 10
        while not orig and time.monotonic() < deadline:
            orig = c.poll(timeout_ms=500).get(tp, [])
        c.close()
        assert orig and orig[0].value == rec.value


def test_gathered_polls_keep_every_good_event_around_bad_ones(kafka_bootstrap, kafka_topic, tmp_path):
    """Several polls gathered into one transaction, validated 1,024 messages at a time: bad
    messages at a group's edges, in mid-group, first and last (a null value among them) go to the
    DLQ with their own coordinates and every good event around them is stored, exactly once."""
    lines = random_events(6000, 300, 200, seed=21, dup_rate=0.1)
    bad_at = {0: b"not json", 1023: b'{"user_id": "u", "item_id": "i", "action": "buy"}',
              1024: None, 2500: b'{"user_id": "", "item_id": "i", "action": "click"}',
              4097: b"[1, 2]", 6005: b'{"user_id": "u\\u0000", "item_id": 1.5, "action": "click"}'}
    stream = list(lines)
    for at in sorted(bad_at):  # ascending: each lands at its own index of the final stream
        stream.insert(at, bad_at[at])
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    for v in stream:  # one partition: the positions above are offsets
        p.send(kafka_topic, value=v, key=b"k" if v is None else None, partition=0)
    p.flush()
    p.close()
    cfg = make_cfg(kafka_bootstrap, kafka_topic, tmp_path / "data").with_overrides(
        kafka={"max_poll_records": 700}, ingest={"batch_events": 5000, "batch_wait_ms": 60_000})
    stats = IngestWorker(cfg).run(until_idle=3)
    assert (stats.events, stats.bad_events) == (len(lines), len(bad_at))
    store = TripleStore(cfg.data_dir)
    assert store_scores(store) == expected_scores(lines)
    assert store.counts()["events"] == len(lines) and store.counts()["bad_events"] == len(bad_at)
    assert store.offsets(kafka_topic) == {(kafka_topic, 0): len(stream)}
    dead = read_dlq(kafka_bootstrap, kafka_topic, len(bad_at))
    got = {int(dict(r.headers)["source-offset"]): r.value for r in dead}
    assert got == {at: v if v is not None else b"" for at, v in bad_at.items()}


def test_worker_resumes_from_store_offsets_not_kafka(kafka_bootstrap, kafka_topic, tmp_path):
    lines = random_events(3000, 50, 40, seed=11)
    cfg = make_cfg(kafka_bootstrap, kafka_topic, tmp_path / "data")
    produce_lines(lines[:1500], cfg)
    IngestWorker(cfg).run(until_idle=2)
    produce_lines(lines[1500:], cfg)
    IngestWorker(cfg).run(until_idle=2)
    store = TripleStore(cfg.data_dir)
    assert store_scores(store) == expected_scores(lines)
    assert store.counts()["events"] == len(lines)  # every event applied exactly once
    assert sum(store.offsets(kafka_topic).values()) == len(lines)


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_exact_store(kafka_bootstrap, kafka_topic, tmp_path):
    lines = random_events(200_000, 5000, 2000, seed=5, dup_rate=0.25)
    cfg = make_cfg(kafka_bootstrap, kafka_topic, tmp_path / "data")
    produce_lines(lines, cfg)
    env = worker_env(kafka_bootstrap, kafka_topic, cfg.data_dir)
    log_path = tmp_path / "worker.log"
    rng = random.Random(2)
    store = TripleStore(cfg.data_dir)
    kills = 0
    for _ in range(5):
        before = store.counts()["events"]
        proc = start_worker(env, log_path=log_path)
        # kill after a random time, counted from the first batch stored (the join takes ~3 s)
        deadline = time.monotonic() + 60
        while store.counts()["events"] == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if store.counts()["events"] >= len(lines):
            break
    mid = store.counts()["events"]
    assert 0 < mid, "the worker never stored anything before being killed"
    proc = start_worker(env, "--until-idle", "4", log_path=log_path)
    assert proc.wait(timeout=300) == 0, log_path.read_text()[-3000:]

    # the clean single run: the same events through the same scoring in one pass
    clean_file = tmp_path / "all.jsonl"
    clean_file.write_bytes(b"\n".join(lines) + b"\n")
    clean = TripleStore(tmp_path / "clean")
    backfill_file(clean_file, clean)
    got = store_scores(store)
    assert got == store_scores(clean)
    assert got == expected_scores(lines)
    assert sum(store.offsets(kafka_topic).values()) == len(lines)
    print(f"killed {kills} times; {mid} events stored before the last restart")


def test_two_workers_split_partitions(kafka_bootstrap, kafka_topic, tmp_path):
    data = tmp_path / "data"
    # a group of its own: on the local broker a member of an earlier test's group that did not
    # leave (the kafka-python run of this test) can stay its elected leader and wedge SyncGroup
    env = worker_env(kafka_bootstrap, kafka_topic, data, group=f"pair-{kafka_topic}")
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    procs = [start_worker(env, "--until-idle", "6", log_path=p) for p in logs]
    try:
        # wait until the group has settled with both members owning partitions
        deadline = time.monotonic() + 60
        owned = [set(), set()]
        while time.monotonic() < deadline:
            for k, p in enumerate(logs):
                found = re.findall(r"partitions_assigned partitions=(\S+)", p.read_text() if p.exists() else "")
                owned[k] = set(found[-1].split(",")) - {"-"} if found else set()
            if owned[0] and owned[1] and not owned[0] & owned[1] and len(owned[0] | owned[1]) == 4:
                break
            time.sleep(0.2)
        assert owned[0] and owned[1] and not owned[0] & owned[1], owned
        lines = random_events(20_000, 400, 300, seed=9)
        produce_lines(lines, make_cfg(kafka_bootstrap, kafka_topic, data))
        for p in procs:
            assert p.wait(timeout=120) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    done = [re.findall(r"ingest_done events=(\d+)", p.read_text())[-1] for p in logs]
    assert all(int(n) > 0 for n in done), done  # both did a share of the work
    assert sum(int(n) for n in done) >= len(lines)
    store = TripleStore(data)
    assert store_scores(store) == expected_scores(lines)

"""Stored offsets past the partition's end are not trusted silently ([kafka] offset_reset).

The scenario of the issue: a store filled from one broker, then a fresh broker (the in-memory one
restarted: every partition starts at 0 again), 200 new events, the worker on the old data dir.
Before: ``events=0 lag=0``, nothing stored, no warning.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from eventlib import expected_scores, random_events, store_scores
from fixtures_kafka import worker_client
from kafka import KafkaConsumer, TopicPartition

from mcrecall.core.config import load_config
from mcrecall.ingest.broker import LocalBroker
from mcrecall.ingest.kafka_io import ensure_topic
from mcrecall.ingest.offset_range import OffsetOutOfRangeError
from mcrecall.ingest.produce import produce_lines
from mcrecall.ingest.store import TripleStore
from mcrecall.ingest.worker import IngestWorker
from mcrecall.status import collect_status, render

# every test runs once per [kafka] client (fixtures_kafka.kafka_client)
pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.usefixtures("kafka_client")]
ROOT = Path(__file__).resolve().parents[1]
TOPIC = "resets"


def _cfg(bootstrap, data_dir, **kafka):
    return load_config(environ={}).with_overrides(
        kafka={"bootstrap_servers": bootstrap, "topic": TOPIC, "group_id": "g", "session_timeout_ms": 6000,
               "client": worker_client(),
               **kafka},
        store={"data_dir": str(data_dir)})


def _new_events(n, start=0):
    return [json.dumps({"user_id": f"n{k % 40}", "item_id": f"j{k % 17}", "action": "click"}).encode()
            for k in range(start, start + n)]


def _high_watermarks(bootstrap, partitions=2):
    """Each partition's true end: the high watermark of a fetch (not ListOffsets, see the worker)."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(TOPIC, p) for p in range(partitions)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    for _ in range(40):
        c.poll(timeout_ms=250)
        if all(c.highwater(tp) is not None and c.position(tp) >= c.highwater(tp) for tp in tps):
            break
    out = {p: c.highwater(TopicPartition(TOPIC, p)) for p in range(partitions)}
    c.close()
    return out


@pytest.fixture(scope="module")
def old_store(tmp_path_factory):
    """A store that consumed 600 events from a broker that is gone now."""
    root = tmp_path_factory.mktemp("old")
    lines = random_events(600, 50, 30, seed=21)
    with LocalBroker(log_file=root / "a.log") as broker:
        cfg = _cfg(broker.bootstrap_servers, root / "data")
        ensure_topic(broker.bootstrap_servers, TOPIC, 2)
        produce_lines(lines, cfg)
        IngestWorker(cfg).run(until_idle=2)
    store = TripleStore(cfg.data_dir)
    assert store.counts()["events"] == 600
    return root / "data", lines, store.offsets(TOPIC)


@pytest.fixture
def fresh_broker(tmp_path, old_store):
    """A fresh broker holding 200 new events; the old store copied to ``tmp_path/data``."""
    data, _, stored = old_store
    shutil.copytree(data, tmp_path / "data")
    with LocalBroker(log_file=tmp_path / "b.log") as broker:
        ensure_topic(broker.bootstrap_servers, TOPIC, 2)
        produce_lines(_new_events(200), _cfg(broker.bootstrap_servers, tmp_path / "data"))
        ends = _high_watermarks(broker.bootstrap_servers)
        assert sum(ends.values()) == 200
        assert all(stored[(TOPIC, p)] > ends[p] for p in ends), "the scenario needs stored > end"
        yield broker.bootstrap_servers, ends


def test_default_fail_stops_with_one_line_and_status_shows_the_partitions(fresh_broker, old_store, tmp_path):
    bootstrap, ends = fresh_broker
    _, old_lines, stored = old_store
    env = dict(os.environ, MCRECALL_KAFKA_BOOTSTRAP_SERVERS=bootstrap, MCRECALL_KAFKA_TOPIC=TOPIC,
               MCRECALL_KAFKA_GROUP_ID="g", MCRECALL_KAFKA_SESSION_TIMEOUT_MS="6000",
               MCRECALL_STORE_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT))
    env.pop("MCRECALL_KAFKA_OFFSET_RESET", None)
    proc = subprocess.run([sys.executable, "-m", "mcrecall", "ingest", "--until-idle", "5"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 5, proc.stderr[-3000:]
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("mcrecall ingest:")]
    assert len(line) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for p, end in ends.items():  # topic, partition, stored offset, range
        assert f"{TOPIC}[{p}] stored offset {stored[(TOPIC, p)]} not in [0, {end}]" in line[0]
    assert "offset_reset" in line[0]

    store = TripleStore(tmp_path / "data")
    assert store.counts()["events"] == 600 and store.offsets(TOPIC) == stored  # nothing consumed
    assert store_scores(store) == expected_scores(old_lines)

    cfg = _cfg(bootstrap, tmp_path / "data")
    st = collect_status(cfg)
    assert set(st["offsets_out_of_range"]) == {f"{TOPIC}[0]", f"{TOPIC}[1]"}
    assert st["offsets_out_of_range"][f"{TOPIC}[0]"]["end"] == ends[0]
    assert "OFFSETS OUT OF RANGE" in render(st)
    out = subprocess.run([sys.executable, "-m", "mcrecall", "status"], env=env, capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert f"{TOPIC}[1]  stored {stored[(TOPIC, 1)]} not in [0, {ends[1]}]" in out.stdout, out.stdout

    # the operator's way on: one run with offset_reset = earliest; the state leaves status
    IngestWorker(_cfg(bootstrap, tmp_path / "data", offset_reset="earliest")).run(until_idle=3)
    st = collect_status(cfg)
    assert st["offsets_out_of_range"] == {}
    assert set(st["offset_resets"]) == {f"{TOPIC}[0]", f"{TOPIC}[1]"}
    assert "offsets reset" in render(st)


def test_fail_in_process_raises_and_consumes_nothing(fresh_broker, old_store, tmp_path):
    bootstrap, ends = fresh_broker
    with pytest.raises(OffsetOutOfRangeError, match=r"not in \[0, "):
        IngestWorker(_cfg(bootstrap, tmp_path / "data")).run(until_idle=3)
    assert TripleStore(tmp_path / "data").offsets(TOPIC) == old_store[2]


def test_earliest_reads_the_new_partition_from_its_beginning(fresh_broker, old_store, tmp_path):
    bootstrap, ends = fresh_broker
    _, old_lines, _ = old_store
    stats = IngestWorker(_cfg(bootstrap, tmp_path / "data", offset_reset="earliest")).run(until_idle=3)
    assert stats.events == 200
    store = TripleStore(tmp_path / "data")
    assert store.offsets(TOPIC) == {(TOPIC, p): e for p, e in ends.items()}
    assert store_scores(store) == expected_scores(old_lines + _new_events(200))
    assert store.counts()["events"] == 800


def test_latest_skips_to_the_end_and_consumes_what_comes_after(fresh_broker, old_store, tmp_path):
    bootstrap, ends = fresh_broker
    _, old_lines, _ = old_store
    cfg = _cfg(bootstrap, tmp_path / "data", offset_reset="latest")
    assert IngestWorker(cfg).run(until_idle=3).events == 0
    store = TripleStore(tmp_path / "data")
    # the true end (a fetch's high watermark), not the broker's too-low ListOffsets answer
    assert store.offsets(TOPIC) == {(TOPIC, p): e for p, e in ends.items()}
    assert store_scores(store) == expected_scores(old_lines)
    later = _new_events(30, start=1000)
    produce_lines(later, cfg)
    assert IngestWorker(cfg).run(until_idle=3).events == 30
    assert store_scores(store) == expected_scores(old_lines + later)


def test_a_stored_offset_above_a_too_low_reported_end_is_not_out_of_range(tmp_path):
    """A worker that consumed a whole partition holds its true end; the local broker's
    ListOffsets(latest) answers less (the last batch's base offset). The default policy (fail)
    must not fire on that: a plain restart goes on."""
    with LocalBroker(log_file=tmp_path / "b.log") as broker:
        bootstrap = broker.bootstrap_servers
        cfg = _cfg(bootstrap, tmp_path / "data")
        ensure_topic(bootstrap, TOPIC, 2)
        produce_lines(_new_events(200), cfg)  # batched: several records per batch
        assert IngestWorker(cfg).run(until_idle=2).events == 200
        store = TripleStore(cfg.data_dir)
        stored = store.offsets(TOPIC)
        c = KafkaConsumer(bootstrap_servers=bootstrap)
        reported = c.end_offsets([TopicPartition(TOPIC, p) for p in range(2)])
        c.close()
        # the trap this test is about is really there (tansu as measured here)
        assert any(reported[TopicPartition(TOPIC, p)] < stored[(TOPIC, p)] for p in range(2))
        assert IngestWorker(cfg).run(until_idle=2).events == 0  # no OffsetOutOfRangeError
        assert store.offsets(TOPIC) == stored and store.offset_notes() == {}
        produce_lines(_new_events(25, start=500), cfg)
        assert IngestWorker(cfg).run(until_idle=2).events == 25


def test_range_rules_without_a_broker():
    from mcrecall.ingest.offset_range import PartitionRange, failure_message, reset_target

    def r(stored, b, e):
        return PartitionRange("t", 3, stored, b, e)

    assert r(0, 0, 0).in_range and r(5, 5, 9).in_range and r(9, 5, 9).in_range
    assert not r(4, 5, 9).in_range and not r(10, 5, 9).in_range  # retention; a lost broker
    assert (reset_target("earliest", r(10, 5, 9)), reset_target("latest", r(4, 5, 9))) == (5, 9)
    with pytest.raises(ValueError):
        reset_target("fail", r(10, 5, 9))
    msg = failure_message([r(10, 5, 9), r(1, 5, 9)])
    assert "\n" not in msg and "t[3] stored offset 10 not in [5, 9]" in msg and "offset_reset" in msg
    assert r(10, 5, 9).note("out_of_range")["state"] == "out_of_range"

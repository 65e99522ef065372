"""The worker under a Kafka outage and a full store: reported clearly, nothing half-written."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from eventlib import expected_scores, random_events, store_scores
from fixtures_kafka import worker_client
from kafka import KafkaConsumer, TopicPartition

from mcrecall.core.config import load_config
from mcrecall.ingest.broker import LocalBroker
from mcrecall.ingest.kafka_io import ensure_topic
from mcrecall.ingest.produce import produce_lines
from mcrecall.ingest.store import TripleStore
from mcrecall.ingest.worker import IngestWorker

# every test runs once per [kafka] client (fixtures_kafka.kafka_client)
pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.usefixtures("kafka_client")]
ROOT = Path(__file__).resolve().parents[1]


def _cfg(bootstrap, topic, data_dir, **kafka):
    return load_config(environ={}).with_overrides(
        kafka={"bootstrap_servers": bootstrap, "topic": topic, "group_id": "g",
               "session_timeout_ms": 6000, "client": worker_client(), **kafka},
        store={"data_dir": str(data_dir)})


def test_broker_outage_is_reported_and_the_worker_survives_it(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mcrecall.ingest")
    broker = LocalBroker(log_file=tmp_path / "b.log").start()
    port = broker.port
    try:
        cfg = _cfg(broker.bootstrap_servers, "outage", tmp_path / "data")
        ensure_topic(broker.bootstrap_servers, "outage", 2)
        lines = random_events(500, 20, 20, seed=4)
        produce_lines(lines, cfg)
        worker = IngestWorker(cfg, progress_every_s=1.0)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        store = TripleStore(cfg.data_dir)
        deadline = time.monotonic() + 60
        while store.counts()["events"] < len(lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store_scores(store) == expected_scores(lines)

        broker.stop()  # the outage
        deadline = time.monotonic() + 30
        while "kafka_unreachable" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "kafka_unreachable" in caplog.text
        assert thread.is_alive(), "the worker must not die on an outage"

        broker = LocalBroker(port=port, log_file=tmp_path / "b.log").start()  # back
        deadline = time.monotonic() + 60
        while "kafka_reconnected" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "kafka_reconnected" in caplog.text
        worker.stop()
        thread.join(30)
        assert not thread.is_alive()
        assert store_scores(store) == expected_scores(lines)  # nothing lost or changed
    finally:
        broker.stop()


def _topic_prefix(bootstrap, topic, offsets):
    """The messages of each partition below the store's offset for it."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    out = []
    for (t, p), end in offsets.items():
        tp = TopicPartition(t, p)
        c.assign([tp])
        c.seek_to_beginning(tp)
        got = []
        deadline = time.monotonic() + 30
        while len(got) < end and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                got.extend(r for r in recs if r.offset < end)
        assert len(got) == end
        out.extend(r.value for r in got)
    c.close()
    return out


def test_full_store_ends_the_worker_cleanly_with_nothing_half_written(kafka_bootstrap, kafka_topic, tmp_path):
    data = tmp_path / "data"
    cfg = _cfg(kafka_bootstrap, kafka_topic, data)
    lines = random_events(30_000, 3000, 3000, seed=8, dup_rate=0.0)
    produce_lines(lines, cfg)
    env = dict(os.environ, MCRECALL_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, MCRECALL_KAFKA_TOPIC=kafka_topic,
               MCRECALL_KAFKA_SESSION_TIMEOUT_MS="6000", MCRECALL_KAFKA_MAX_POLL_RECORDS="500",
               MCRECALL_INGEST_BATCH_EVENTS="500",  # transactions of ~500 events: it fills part-way
               MCRECALL_STORE_DATA_DIR=str(data), MCRECALL_STORE_MAP_SIZE_GB="0.0005",  # ~0.5 MB
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "mcrecall", "ingest", "--until-idle", "5"], env=env,
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "is full" in proc.stderr and "map_size_gb" in proc.stderr
    assert "Traceback" not in proc.stderr

    store = TripleStore(data, map_size_gb=0.0005)
    offsets = store.offsets(kafka_topic)
    stored_events = sum(offsets.values())
    assert 0 < stored_events < len(lines), "the store should have filled part-way"
    # exactly the events below the stored offsets are in the store: no batch half-written
    assert store_scores(store) == expected_scores(_topic_prefix(kafka_bootstrap, kafka_topic, offsets))
    assert store.counts()["events"] == stored_events

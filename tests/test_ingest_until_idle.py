"""``--until-idle S`` also ends when the brokers stay unreachable for S seconds: non-zero exit,
one clear line (before: the idle clock started only once partitions were assigned, so a worker
that never reached a broker waited forever)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from eventlib import expected_scores, random_events, store_scores
from fixtures_kafka import worker_client

from mcrecall.core.config import load_config
from mcrecall.ingest.broker import LocalBroker, free_port
from mcrecall.ingest.kafka_io import KafkaUnavailable, ensure_topic
from mcrecall.ingest.produce import produce_lines
from mcrecall.ingest.store import TripleStore
from mcrecall.ingest.worker import IngestWorker

# a Kafka-protocol broker per test, subprocesses, group joins: the slow lane
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures("kafka_client")
def test_until_idle_ends_with_one_line_when_no_broker_ever_answers(tmp_path):
    env = dict(os.environ, MCRECALL_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
               MCRECALL_STORE_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mcrecall", "ingest", "--until-idle", "3"], env=env,
                          capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert time.monotonic() - started < 60
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mcrecall ingest:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "unreachable for 3 s" in lines[0] and env["MCRECALL_KAFKA_BOOTSTRAP_SERVERS"] in lines[0]


@pytest.mark.kafka
@pytest.mark.usefixtures("kafka_client")
def test_until_idle_ends_when_the_broker_goes_away_mid_run(tmp_path):
    broker = LocalBroker(log_file=tmp_path / "b.log").start()
    try:
        cfg = load_config(environ={}).with_overrides(
            kafka={"bootstrap_servers": broker.bootstrap_servers, "topic": "gone", "group_id": "g",
                   "session_timeout_ms": 6000, "client": worker_client()},
            store={"data_dir": str(tmp_path / "data")})
        ensure_topic(broker.bootstrap_servers, "gone", 2)
        lines = random_events(300, 20, 20, seed=5)
        produce_lines(lines, cfg)
        worker = IngestWorker(cfg, progress_every_s=1.0)
        out = {}

        def run():
            try:
                out["stats"] = worker.run(until_idle=8)
            except Exception as e:
                out["error"] = e

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        store = TripleStore(cfg.data_dir)
        deadline = time.monotonic() + 60
        while store.counts()["events"] < len(lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        broker.stop()  # right after the data: the idle clock alone would end the run with 0
        thread.join(90)
        assert not thread.is_alive()
        assert isinstance(out.get("error"), KafkaUnavailable), out
        assert "unreachable for 8 s" in str(out["error"])
        assert worker.stats.exit_reason == "kafka_unreachable"
        assert store_scores(store) == expected_scores(lines)  # nothing lost
    finally:
        broker.stop()


@pytest.mark.kafka
@pytest.mark.usefixtures("kafka_client")
def test_a_worker_without_partitions_ends_on_until_idle_and_says_why(tmp_path, caplog):
    """Issue 20 #5: the idle clock runs from the start; a worker the group gives no partition
    warns (naming the group) and never reports lag=0 while events wait."""
    import logging

    broker = LocalBroker(log_file=tmp_path / "b.log").start()
    try:
        cfg = load_config(environ={}).with_overrides(
            kafka={"bootstrap_servers": broker.bootstrap_servers, "topic": "one", "group_id": "grp-1",
                   "session_timeout_ms": 2000, "client": worker_client()},
            store={"data_dir": str(tmp_path / "data")})
        ensure_topic(broker.bootstrap_servers, "one", 1)
        holder = IngestWorker(cfg, progress_every_s=60)
        t_holder = threading.Thread(target=holder.run, daemon=True)
        t_holder.start()
        store = TripleStore(cfg.data_dir)
        produce_lines(random_events(50, 5, 5, seed=1), cfg)
        deadline = time.monotonic() + 60
        while store.counts()["events"] < 50 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.counts()["events"] == 50  # the holder owns the one partition
        idle = IngestWorker(cfg.with_overrides(store={"data_dir": str(tmp_path / "data2")}),
                            progress_every_s=1.0)
        caplog.set_level(logging.INFO, logger="mcrecall.ingest")
        started = time.monotonic()
        stats = idle.run(until_idle=6)
        took = time.monotonic() - started
        assert stats.exit_reason == "idle 6s" and took < 30, (stats.exit_reason, took)
        # the idle worker's own lines (it runs in this thread; the holder logs from its own, and
        # may itself be without its partition for a moment while the group rebalances)
        mine = [r for r in caplog.records if r.thread == threading.get_ident()]
        warned = [r for r in mine if r.getMessage() == "no_partitions"]
        assert len(warned) == 1 and warned[0].group == "grp-1", [r.getMessage() for r in caplog.records]
        progress = [r for r in mine if r.getMessage() == "ingest_progress"
                    and r.name == "mcrecall.ingest" and getattr(r, "partitions", None) == 0]
        assert progress and all(r.lag == "unknown" for r in progress)
        holder.stop()
        t_holder.join(60)
    finally:
        broker.stop()


@pytest.mark.usefixtures("kafka_client")
def test_an_outage_is_reported_the_same_way_by_both_clients(tmp_path):
    """Issue 20 #2: confluent's librdkafka logged every failed connection (~20 lines a second);
    both clients now say kafka_unreachable about every 10 s and nothing else."""
    env = dict(os.environ, MCRECALL_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
               MCRECALL_STORE_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "mcrecall", "ingest", "--until-idle", "14"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 4, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert len(lines) <= 8, "\n".join(lines)
    assert not [ln for ln in lines if "librdkafka" in ln], "\n".join(lines)
    assert 1 <= sum("kafka_unreachable" in ln for ln in lines) <= 3, "\n".join(lines)
    assert "no_partitions" not in proc.stderr  # an outage is not a rebalance

"""The streaming ingest worker: Kafka topic -> validated, scored triples in LMDB.

Per poll: validate every message (DESIGN §1), send bad ones to ``<topic>.dlq`` with the reason
and flush that producer, then write the merged pairs AND the offsets that cover them in one LMDB
transaction. Only after that are offsets committed to Kafka, for lag monitoring only: on every
partition assignment the worker seeks to the offsets stored in LMDB, which makes a crash at any
instant harmless (re-reading is idempotent because scores merge by bitwise OR).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ingest.consumers import KAFKA_ERRORS, EventConsumer, open_consumer, open_dlq_producer
from ingest.events import BadEvent, parse_scored
from ingest.kafka_io import dlq_topic
from ingest.store import StoreFullError, TripleStore

log = logging.getLogger("mcrecall.ingest")


@dataclass
class WorkerStats:
    events: int = 0
    bad_events: int = 0
    batches: int = 0
    changed_pairs: int = 0
    started: float = field(default_factory=time.monotonic)
    first_batch_at: float | None = None  # monotonic time the first non-empty poll returned
    last_batch_at: float | None = None  # monotonic time the last batch was committed
    exit_reason: str = ""


class _SeekToStore:
    def __init__(self, worker: "IngestWorker"):
        self.worker = worker

    def on_partitions_revoked(self, revoked):
        self.worker._drain()
        log.info("partitions_revoked", extra={"partitions": _fmt_tps(revoked)})

    def on_partitions_assigned(self, assigned):
        self.worker._drain()  # the store offsets must include the batch still being written
        self.worker._seek_to_store(assigned)
        log.info("partitions_assigned", extra={"partitions": _fmt_tps(assigned)})


class _OutageReport:
    """Logs ``kafka_unreachable`` (every 10 s while it lasts) and ``kafka_reconnected``."""

    GRACE_S, REPEAT_S = 2.0, 10.0

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap
        self.since: float | None = None
        self.warned_at: float | None = None

    def check(self, now: float, reachable: bool | None) -> None:
        if reachable is None:
            return
        if reachable:
            if self.warned_at is not None:
                log.info("kafka_reconnected", extra={"bootstrap": self.bootstrap,
                                                     "after_s": round(now - self.since, 1)})
            self.since = self.warned_at = None
            return
        if self.since is None:
            self.since = now
        elif now - self.since >= self.GRACE_S and (
                self.warned_at is None or now - self.warned_at >= self.REPEAT_S):
            log.warning("kafka_unreachable", extra={
                "bootstrap": self.bootstrap, "for_s": round(now - self.since, 1),
                "action": "retrying; nothing is lost, the store resumes from its own offsets"})
            self.warned_at = now


def _fmt_tps(tps) -> str:
    return ",".join(str(tp.partition) for tp in sorted(tps, key=lambda t: t.partition)) or "-"


class IngestWorker:
    """Consume ``[kafka] topic`` into the triple store of ``[store] data_dir``.

    Parameters
    ----------
    cfg : core.config.Config
    progress_every_s : seconds between progress log lines.
    """

    def __init__(self, cfg, *, progress_every_s: float = 5.0):
        self.cfg = cfg
        self.topic = cfg.kafka.topic
        self.store = TripleStore(cfg.data_dir, map_size_gb=cfg.store.map_size_gb)
        self.progress_every_s = progress_every_s
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self.consumer: EventConsumer | None = None  # of [kafka] client (ingest/consumers.py)
        self.producer = None  # the dead-letter producer, same client family
        # One batch is written to LMDB (fsync releases the GIL) while the next one is fetched.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmdb-writer")
        self._pending: tuple[Future, dict] | None = None
        self._reach_at = -1e9  # when the broker's reachability was last asked

    # ------------------------------------------------------------------ lifecycle
    def stop(self, *_args) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _connect(self) -> bool:
        k = self.cfg.kafka
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self.consumer = open_consumer(self.cfg)
                self.producer = open_dlq_producer(self.cfg)
                listener = _SeekToStore(self)
                self.consumer.subscribe(self.topic, on_assigned=listener.on_partitions_assigned,
                                        on_revoked=listener.on_partitions_revoked)
                log.info("connected", extra={"bootstrap": k.bootstrap_servers, "topic": self.topic,
                                             "group": k.group_id, "client": k.client})
                return True
            except (*KAFKA_ERRORS, OSError) as e:
                log.warning("kafka_unreachable", extra={"bootstrap": k.bootstrap_servers,
                                                        "error": str(e), "retry_in_s": backoff})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        return False

    def _seek_to_store(self, tps) -> None:
        stored = self.store.offsets(self.topic)
        for tp in tps:
            off = stored.get((tp.topic, tp.partition))
            if off is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, off)

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close()
            except Exception:  # closing after an outage must not mask the real exit reason
                pass
        if self.producer is not None:
            try:
                self.producer.close(timeout=5)
            except Exception:
                pass

    # ------------------------------------------------------------------ main loop
    def run(self, until_idle: float | None = None, max_events: int | None = None) -> WorkerStats:
        """Consume until stopped, until ``until_idle`` quiet seconds, or ``max_events``."""
        if not self._connect():
            self.stats.exit_reason = "stopped"
            return self.stats
        last_data = None  # the idle clock starts once partitions are assigned
        last_progress = time.monotonic()
        progress_events = 0
        outage = _OutageReport(self.cfg.kafka.bootstrap_servers)
        try:
            while not self._stop.is_set():
                try:
                    records = self.consumer.poll(0.5)
                except KAFKA_ERRORS as e:
                    log.warning("poll_failed", extra={"error": str(e)})
                    self._stop.wait(1.0)
                    continue
                now = time.monotonic()
                if records:
                    try:
                        self._process(records)
                    except KAFKA_ERRORS as e:
                        # nothing of this batch reached the store: read it again from the stored offsets
                        log.warning("batch_retry", extra={"error": str(e)})
                        self._drain()
                        self._seek_to_store(self.consumer.assignment())
                        self._stop.wait(1.0)
                        continue
                    last_data = now
                else:
                    self._drain()  # nothing new: finish the write in flight now
                    if last_data is None and self.consumer.assignment():
                        last_data = now
                    outage.check(now, self._broker_reachable())
                if now - last_progress >= self.progress_every_s:
                    self._log_progress(now - last_progress, self.stats.events + self.stats.bad_events - progress_events)
                    progress_events = self.stats.events + self.stats.bad_events
                    last_progress = now
                if until_idle is not None and last_data is not None and now - last_data >= until_idle:
                    self.stats.exit_reason = f"idle {until_idle:g}s"
                    break
                pending = self._pending[1]["good"] + self._pending[1]["bad"] if self._pending else 0
                if max_events is not None and self.stats.events + self.stats.bad_events + pending >= max_events:
                    self._drain()
                    self.stats.exit_reason = "max_events"
                    break
            else:
                self.stats.exit_reason = "stopped"
        except StoreFullError as e:
            self.stats.exit_reason = "store_full"
            log.error("store_full", extra={"error": str(e)})
            raise
        finally:
            try:
                self._drain()
            finally:
                self._log_progress(None, None, final=True)
                self.close()
                self._writer.shutdown(wait=True)
        return self.stats

    def _process(self, records: dict) -> None:
        """Validate one poll's records, dead-letter the bad ones, hand the rest to the writer."""
        if self.stats.first_batch_at is None:
            self.stats.first_batch_at = time.monotonic()
        pairs: dict[tuple[str, str], int] = {}
        offsets: dict[tuple[str, int], int] = {}
        good = bad = 0
        dlq = dlq_topic(self.topic)
        futures = []
        for tp, batch in records.items():
            for rec in batch:
                try:
                    user_id, item_id, bits = parse_scored(rec.value)
                except BadEvent as e:
                    bad += 1
                    futures.append(self.producer.send(
                        dlq, key=rec.key, value=rec.value if rec.value is not None else b"",
                        headers=[("error", e.reason.encode("utf-8")),
                                 ("source-topic", tp.topic.encode()),
                                 ("source-partition", str(tp.partition).encode()),
                                 ("source-offset", str(rec.offset).encode())]))
                    continue
                good += 1
                key = (user_id, item_id)
                pairs[key] = pairs.get(key, 0) | bits
            if batch:
                offsets[(tp.topic, tp.partition)] = batch[-1].offset + 1
        if futures:
            # the dead letters must be durable before the offsets that skip them are
            self.producer.flush(timeout=30)
            for f in futures:
                f.get(timeout=30)
        self._drain()
        fut = self._writer.submit(self.store.apply, pairs, offsets, events=good, bad_events=bad)
        self._pending = (fut, {"offsets": offsets, "good": good, "bad": bad})

    def _drain(self) -> None:
        """Wait for the batch being written; then account for it and commit its offsets."""
        if self._pending is None:
            return
        fut, info = self._pending
        self._pending = None
        result = fut.result()  # re-raises StoreFullError in the main thread
        self.stats.events += info["good"]
        self.stats.bad_events += info["bad"]
        self.stats.batches += 1
        self.stats.changed_pairs += result["changed"]
        self.stats.last_batch_at = time.monotonic()
        try:  # for monitoring only (the store's offsets are the truth), so async: no round trip
            self.consumer.commit_async(info["offsets"])
        except (*KAFKA_ERRORS, AssertionError) as e:
            log.debug("kafka_commit_failed", extra={"error": str(e)})

    def _broker_reachable(self) -> bool | None:
        """Whether the cluster answers (None: unknown). poll() returns nothing, silently, while
        the brokers are down; this is how an outage becomes visible. Asked at most once a second."""
        now = time.monotonic()
        if now - self._reach_at < 1.0:
            return None
        self._reach_at = now
        try:
            return self.consumer.reachable(timeout_s=1.0)
        except Exception:
            return None

    def _lag(self) -> int | None:
        return self.consumer.lag()

    def _log_progress(self, window_s, window_events, final=False) -> None:
        s = self.stats
        fields = {"events": s.events, "bad": s.bad_events, "batches": s.batches, "changed_pairs": s.changed_pairs}
        if window_s:
            fields["events_per_s"] = round(window_events / window_s, 1)
        try:
            lag = self._lag() if self.consumer is not None and not final else None
        except Exception:
            lag = None
        fields["lag"] = "unknown" if lag is None else lag
        if final:
            fields["elapsed_s"] = round(time.monotonic() - s.started, 1)
            fields["reason"] = s.exit_reason or "error"
        log.info("ingest_done" if final else "ingest_progress", extra=fields)

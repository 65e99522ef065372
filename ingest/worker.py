"""The streaming ingest worker: Kafka topic -> validated, scored triples in LMDB.

Per poll: validate every message (DESIGN §1; ``parse_scored_many``, a whole poll at once), send
bad ones to ``<topic>.dlq`` with the reason and flush that producer (cut to ``[ingest]
max_message_bytes``; one the topic still refuses after bounded retries is counted and logged as
``dlq_unwritable``), and add the good ones to the batch being gathered. A batch (polls up to
``[ingest] batch_events`` events, or ``batch_wait_ms`` old, or whatever is there when a poll comes
back empty) is written, its events AND the offsets that cover them (and those counters), in one
LMDB transaction, by a writer thread while the next batch is gathered: no message stops ingest.
Only after that are offsets committed to Kafka, for lag monitoring only: on every
partition assignment the worker seeks to the offsets stored in LMDB, which makes a crash at any
instant harmless (re-reading is idempotent because scores merge by bitwise OR). Those stored
offsets are checked against each partition's range first (``mcrecall.ingest.offset_range``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from mcrecall.ingest import dead_letters, offset_range
from mcrecall.ingest.attributes import split_attributes, version_key
from mcrecall.ingest.consumers import (
    KAFKA_ERRORS,
    EventConsumer,
    PolledBatch,
    fetched_high_watermarks,
    open_consumer,
    open_dlq_producer,
)
from mcrecall.ingest.events import parse_scored_many
from mcrecall.ingest.kafka_io import KafkaUnavailable, dlq_topic
from mcrecall.ingest.offset_range import OffsetOutOfRangeError, PartitionRange
from mcrecall.ingest.store import StoreFullError, TripleStore

log = logging.getLogger("mcrecall.ingest")
PROGRESS_HEARTBEAT_S = 60.0  # an idle worker's progress line, at most this often


@dataclass
class WorkerStats:
    events: int = 0
    bad_events: int = 0
    dlq_failed: int = 0  # bad events the dead-letter topic did not take (in bad_events too)
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
        self.worker._write_all()
        log.info("partitions_revoked", extra={"partitions": _fmt_tps(revoked)})

    def on_partitions_assigned(self, assigned):
        self.worker._write_all()  # the store offsets must include the batches gathered and in flight
        self.worker._seek_to_store(assigned)
        log.info("partitions_assigned", extra={"partitions": _fmt_tps(assigned)})


class _UnassignedReport:
    """Warns ``no_partitions`` (naming the group) when the worker has had no partition for
    longer than a rebalance takes (the session timeout), then every minute while it lasts."""

    REPEAT_S = 60.0

    def __init__(self, group: str, topic: str, grace_s: float):
        self.group, self.topic, self.grace_s = group, topic, grace_s
        self.since: float | None = time.monotonic()
        self.said: float | None = None

    def check(self, now: float, assigned: bool) -> None:
        if assigned:
            self.since = self.said = None
            return
        if self.since is None:
            self.since = now
        if now - self.since >= self.grace_s and (self.said is None or now - self.said >= self.REPEAT_S):
            self.said = now
            log.warning("no_partitions", extra={
                "group": self.group, "topic": self.topic, "seconds": round(now - self.since, 1),
                "hint": f"every partition of {self.topic!r} is held by other members of group "
                        f"{self.group!r} (more workers than partitions?); this worker consumes nothing"})


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


class _Gathered:
    """The events of the polls gathered for the next write transaction, column-shaped."""

    __slots__ = ("users", "items", "bits", "attrs", "offsets", "bad", "dlq_failed", "since")

    def __init__(self):
        self.users: list[str] = []
        self.items: list[str] = []
        self.bits: list[int] = []
        self.attrs: list = []  # [(AttributeUpdate, version)] (ingest/attributes.py)
        self.offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset
        self.bad = self.dlq_failed = 0
        self.since: float | None = None  # monotonic time of the first poll gathered

    def __len__(self) -> int:  # events handled (good and bad)
        return len(self.bits) + len(self.attrs) + self.bad

    def empty(self) -> bool:
        return not self.offsets


def _fmt_tps(tps) -> str:
    return ",".join(str(tp.partition) for tp in sorted(tps, key=lambda t: t.partition)) or "-"


class IngestWorker:
    """Consume ``[kafka] topic`` into the triple store of ``[store] data_dir``.

    Parameters
    ----------
    cfg : core.config.Config
    progress_every_s : seconds between progress log lines.
    dlq_timeout_s : the wait for the dead-letter topic to take a poll's bad events, per attempt
        (:data:`mcrecall.ingest.dead_letters.ATTEMPTS`); then they are counted as ``dlq_failed``.
    metrics : mcrecall.ingest.metrics.WorkerMetrics, optional
        Counters to move as each batch commits, and the lag gauge (``--metrics-port``).
    """

    def __init__(self, cfg, *, progress_every_s: float = 5.0, dlq_timeout_s: float = 30.0,
                 metrics=None):
        self.cfg = cfg
        self.topic = cfg.kafka.topic
        self.store = TripleStore(cfg.data_dir, map_size_gb=cfg.store.map_size_gb)
        self.progress_every_s = progress_every_s
        self.dlq_timeout_s = dlq_timeout_s
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self.consumer: EventConsumer | None = None  # of [kafka] client (ingest/consumers.py)
        self.producer = None  # the dead-letter producer, same client family
        # One batch is written to LMDB (fsync releases the GIL) while the next one is fetched.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmdb-writer")
        self._pending: tuple[Future, dict] | None = None
        self._gathered = _Gathered()  # polls not yet handed to the writer
        self.batch_events = cfg.ingest.batch_events
        self.batch_wait_s = cfg.ingest.batch_wait_ms / 1000.0
        self._fatal: Exception | None = None  # raised by run() once it has shut down cleanly
        self._unchecked: set = set()  # assigned partitions whose stored offset awaits its range check
        self._reach_at = -1e9  # when the broker's reachability was last asked
        self.metrics = metrics
        self._lag_at = -1e9  # when the lag gauge was last set

    # ------------------------------------------------------------------ lifecycle
    def stop(self, *_args) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _connect(self, give_up_after: float | None = None) -> bool:
        """Create the clients, retrying; False when stopped, or when the brokers stayed
        unreachable for ``give_up_after`` seconds (``self._fatal`` says so)."""
        k = self.cfg.kafka
        backoff = 0.5
        started = time.monotonic()
        while not self._stop.is_set():
            left = None if give_up_after is None else give_up_after - (time.monotonic() - started)
            # bounded waits: an unreachable cluster is reported every ~10 s, as once connected
            wait = _OutageReport.REPEAT_S if left is None else max(0.5, min(left, _OutageReport.REPEAT_S))
            try:
                self.consumer = open_consumer(self.cfg, connect_timeout_s=wait)
                self.producer = open_dlq_producer(self.cfg, timeout_s=self.dlq_timeout_s)
                listener = _SeekToStore(self)
                self.consumer.subscribe(self.topic, on_assigned=listener.on_partitions_assigned,
                                        on_revoked=listener.on_partitions_revoked)
                log.info("connected", extra={"bootstrap": k.bootstrap_servers, "topic": self.topic,
                                             "group": k.group_id, "client": k.client})
                return True
            except (*KAFKA_ERRORS, OSError) as e:
                if give_up_after is not None and time.monotonic() - started >= give_up_after:
                    self._fatal = self._unreachable_error(give_up_after, e)
                    return False
                log.warning("kafka_unreachable", extra={
                    "bootstrap": k.bootstrap_servers, "for_s": round(time.monotonic() - started, 1),
                    "error": str(e), "retry_in_s": backoff})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        return False

    def _unreachable_error(self, seconds: float, error=None) -> KafkaUnavailable:
        return KafkaUnavailable(
            f"Kafka at {self.cfg.kafka.bootstrap_servers} unreachable for {seconds:g} s (--until-idle "
            f"{seconds:g}){f': {error}' if error else ''}; nothing is lost: the next run resumes from "
            "the store's offsets")

    def _seek_to_store(self, tps) -> None:
        stored = self.store.offsets(self.topic)
        for tp in tps:
            off = stored.get((tp.topic, tp.partition))
            if off is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, off)
                # checked against the partition's range by run(), after this poll: a rebalance
                # listener may not block on the broker (kafka-python 3 runs it on its IO thread)
                self._unchecked.add(tp)

    def _check_assigned(self, records: PolledBatch) -> PolledBatch:
        """Check the stored offsets of newly assigned partitions against their ranges; a
        partition whose start moved (``offset_reset``) is sought there and its messages in this
        poll's ``records`` are dropped (fetched from the stored offset, they are not wanted)."""
        tps, self._unchecked = self._unchecked, set()
        stored = self.store.offsets(self.topic)
        known = {tp: stored[(tp.topic, tp.partition)] for tp in tps
                 if (tp.topic, tp.partition) in stored and tp in self.consumer.assignment()}
        moved = []
        for tp, off in (self._check_offsets(known) if known else {}).items():
            if off != known[tp]:
                self.consumer.seek(tp, off)
                moved.append(tp)
        return records.without(moved) if moved and len(records) else records

    def _check_offsets(self, stored: dict) -> dict:
        """Where to start each partition of ``stored`` (``{tp: stored offset}``): the stored
        offset when it lies in the partition's range, else what ``[kafka] offset_reset`` says
        (``fail``: the stored offset, ``self._fatal`` set and the worker stopping)."""
        try:
            # {tp: (beginning, end)} as ListOffsets answers it; the end may be too low (below)
            ranges = self.consumer.watermarks(list(stored))
        except (*KAFKA_ERRORS, OSError) as e:  # cannot judge: keep the store's word, as before
            log.warning("offset_range_unknown", extra={"error": str(e)})
            return dict(stored)
        # The broker's "latest offset" (ListOffsets) can be too LOW: the local broker (tansu)
        # answers the base offset of the partition's last record batch, so a worker that consumed
        # the whole partition holds a stored offset above it. "above the end" therefore counts only
        # once the high watermark of a real fetch (from the reported end, which exists) confirms it.
        above = {tp: end for tp, (_, end) in ranges.items() if stored[tp] > end}
        if above:
            try:
                fetched = fetched_high_watermarks(self.cfg, above)
            except (*KAFKA_ERRORS, OSError) as e:
                fetched = {}
                log.debug("high_watermark_probe_failed", extra={"error": str(e)})
            for tp in above:
                if tp not in fetched:  # unconfirmed: trust the store (a wait, never a skip)
                    log.warning("offset_range_unconfirmed", extra={
                        "topic": tp.topic, "partition": tp.partition, "stored": stored[tp],
                        "reported_end": above[tp]})
                    ranges[tp] = (ranges[tp][0], max(stored[tp], above[tp]))
                else:
                    ranges[tp] = (ranges[tp][0], max(above[tp], fetched[tp]))
        policy = self.cfg.kafka.offset_reset
        notes = self.store.offset_notes()
        start, problems = {}, []
        for tp, off in stored.items():
            r = PartitionRange(tp.topic, tp.partition, off, *ranges[tp])
            start[tp] = off
            if r.in_range:
                if notes.get((tp.topic, tp.partition), {}).get("state") == "out_of_range":
                    self.store.note_offset(tp.topic, tp.partition, None)  # the broker has it again
                continue
            if policy == "fail":
                problems.append(r)
                self.store.note_offset(tp.topic, tp.partition, r.note("out_of_range", policy="fail"))
                continue
            target = offset_range.reset_target(policy, r)
            if not self.store.reset_offset(tp.topic, tp.partition, off, target,
                                           r.note("reset", policy=policy, reset_to=target)):
                target = self.store.offsets(self.topic).get((tp.topic, tp.partition), target)
            start[tp] = target
            log.warning("offset_reset", extra={"topic": tp.topic, "partition": tp.partition, "stored": off,
                                               "beginning": r.beginning, "end": r.end, "policy": policy,
                                               "reset_to": target})
        if problems:
            log.error("offset_out_of_range", extra={"partitions": "; ".join(p.describe() for p in problems),
                                                    "policy": "fail"})
            self._fatal = OffsetOutOfRangeError(offset_range.failure_message(problems))
            self.stop()
        return start

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
        if not self._connect(give_up_after=until_idle):
            self.stats.exit_reason = "kafka_unreachable" if self._fatal else "stopped"
            self._log_progress(None, None, final=True)
            self.close()
            self._writer.shutdown(wait=True)
            if self._fatal:
                raise self._fatal
            return self.stats
        # The idle clock runs from the start: a worker the group never gives a partition (more
        # workers than partitions) is idle too, and --until-idle must end it. Until its first
        # assignment it is given at least three session timeouts to join: a member that was
        # just killed holds its partitions for one, then the rebalance runs (measured here on
        # the local broker: 14 s from connecting to the first assignment with 6 s sessions); the
        # first assignment restarts the clock when nothing came before it.
        last_data = time.monotonic()
        ever_assigned = False
        join_s = 3 * self.cfg.kafka.session_timeout_ms / 1000.0
        unassigned = _UnassignedReport(self.cfg.kafka.group_id, self.topic,
                                       self.cfg.kafka.session_timeout_ms / 1000.0)
        last_progress = time.monotonic()
        progress_events, progress_said = 0, -1e9
        outage = _OutageReport(self.cfg.kafka.bootstrap_servers)
        try:
            while not self._stop.is_set():
                try:
                    records = self.consumer.poll_batch(0.5)
                except KAFKA_ERRORS as e:
                    log.warning("poll_failed", extra={"error": str(e)})
                    self._stop.wait(1.0)
                    continue
                now = time.monotonic()
                if self._unchecked:
                    records = self._check_assigned(records)
                if self._fatal is not None:  # a stored offset out of range: consume nothing
                    self.stats.exit_reason = "offset_out_of_range"
                    break
                if len(records):
                    try:
                        self._process(records)
                    except KAFKA_ERRORS as e:
                        # nothing of this poll reached the batch: read it again from the stored offsets
                        log.warning("batch_retry", extra={"error": str(e)})
                        self._write_all()
                        self._seek_to_store(self.consumer.assignment())
                        self._stop.wait(1.0)
                        continue
                    last_data, ever_assigned = now, True
                    g = self._gathered
                    if len(g) >= self.batch_events or now - g.since >= self.batch_wait_s:
                        self._flush()
                else:
                    self._write_all()  # nothing new: write what was gathered, and finish it now
                    outage.check(now, self._broker_reachable())
                    assigned = bool(self.consumer.assignment())
                    if assigned and not ever_assigned:
                        last_data, ever_assigned = now, True
                    # an outage is not a rebalance: only a reachable cluster's silence counts
                    unassigned.check(now, assigned or outage.since is not None)
                if self.metrics is not None and now - self._lag_at >= 1.0:
                    self._lag_at = now
                    self._update_lag_gauge()
                if now - last_progress >= self.progress_every_s:
                    total = self.stats.events + self.stats.bad_events
                    # an idle worker: a line when something changed, else a heartbeat a minute
                    if total != progress_events or now - progress_said >= PROGRESS_HEARTBEAT_S:
                        self._log_progress(now - last_progress, total - progress_events)
                        progress_said = now
                    progress_events = total
                    last_progress = now
                if until_idle is not None and outage.since is not None:
                    # idle only counts while the brokers answer; unreachable as long ends the run
                    if now - outage.since >= until_idle:
                        self.stats.exit_reason = "kafka_unreachable"
                        self._fatal = self._unreachable_error(until_idle)
                        break
                elif until_idle is not None and now - last_data >= (
                        until_idle if ever_assigned else max(until_idle, join_s)):
                    self.stats.exit_reason = f"idle {until_idle:g}s"
                    break
                pending = self._pending[1]["good"] + self._pending[1]["bad"] if self._pending else 0
                pending += len(self._gathered)
                if max_events is not None and self.stats.events + self.stats.bad_events + pending >= max_events:
                    self._write_all()
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
                if self.stats.exit_reason != "store_full":
                    self._flush()
                self._drain()
            finally:
                self._log_progress(None, None, final=True)
                self.close()
                self._writer.shutdown(wait=True)
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    def _process(self, records: PolledBatch) -> None:
        """Validate one poll's messages (all at once), dead-letter the bad ones, gather the rest
        for the next write transaction."""
        if self.stats.first_batch_at is None:
            self.stats.first_batch_at = time.monotonic()
        users, items, bits, bad = parse_scored_many(records.values)
        attrs = []
        if bad:  # attribute messages have no action: the event rules put them here
            updates, bad = split_attributes(records.values, bad)
            for k, up in updates:
                tp, offset, _ = records.locate(k)
                attrs.append((up, version_key(up.ts, tp.partition, offset)))
        dlq_failed = 0
        if bad:
            letters = []
            for k, reason in bad:
                tp, offset, key = records.locate(k)
                letters.append(dead_letters.DeadLetter(tp.topic, tp.partition, offset, key,
                                                       records.values[k], reason))
            # the dead letters must be durable before the offsets that skip them are
            dlq_failed = self._dead_letter(letters)
        g = self._gathered
        if g.since is None:
            g.since = time.monotonic()
        g.users += users
        g.items += items
        g.bits += bits
        g.attrs += attrs
        g.bad += len(bad)
        g.dlq_failed += dlq_failed
        # a later poll of a partition is further on (a seek back first writes what was gathered)
        g.offsets.update(records.next_offsets)

    def _flush(self) -> None:
        """Hand the gathered polls to the writer (after the write in flight): one transaction."""
        g = self._gathered
        if g.empty():
            return
        self._gathered = _Gathered()
        self._drain()
        offsets = g.offsets  # {Partition: next offset}; a Partition is a (topic, partition) tuple
        good = len(g.bits) + len(g.attrs)
        fut = self._writer.submit(self.store.apply_events, g.users, g.items, g.bits, offsets,
                                  events=len(g.bits), bad_events=g.bad, dlq_failed=g.dlq_failed,
                                  attributes=g.attrs)
        self._pending = (fut, {"offsets": offsets, "good": good, "bad": g.bad,
                               "dlq_failed": g.dlq_failed})

    def _dead_letter(self, letters) -> int:
        """Forward ``letters`` to the dead-letter topic; return how many it would not take (each
        logged with its coordinates; the caller counts them with the offsets that skip them)."""
        unwritten = dead_letters.forward(self.producer, dlq_topic(self.topic), letters,
                                         self.cfg.ingest.max_message_bytes, self.dlq_timeout_s)
        for dl, error in unwritten:
            log.error("dlq_unwritable", extra={
                "source_topic": dl.topic, "source_partition": dl.partition, "source_offset": dl.offset,
                "size": len(dl.value or b""), "reason": dl.reason[:200], "error": error[:300],
                "action": "counted as bad (store counter dlq_failed); the offset moves past it"})
        return len(unwritten)

    def _write_all(self) -> None:
        """Write what was gathered and wait for every write in flight (before a seek, a
        rebalance, an idle wait or the end: the stored offsets then cover all that was read)."""
        self._flush()
        self._drain()

    def _drain(self) -> None:
        """Wait for the batch being written; then account for it and commit its offsets."""
        if self._pending is None:
            return
        fut, info = self._pending
        self._pending = None
        result = fut.result()  # re-raises StoreFullError in the main thread
        self.stats.events += info["good"]
        self.stats.bad_events += info["bad"]
        self.stats.dlq_failed += info["dlq_failed"]
        self.stats.batches += 1
        self.stats.changed_pairs += result["changed"]
        self.stats.last_batch_at = time.monotonic()
        if self.metrics is not None:
            self.metrics.batch_committed(events=info["good"], bad_events=info["bad"],
                                         dlq_failed=info["dlq_failed"], changed_pairs=result["changed"])
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
        if not self.consumer.assignment():  # nothing assigned: the group's lag is not ours to say
            return None
        return self.consumer.lag()

    def _update_lag_gauge(self) -> None:
        try:  # the consumer's cached watermarks (no round trip), from the worker's own thread
            lag = self._lag() if self.consumer is not None else None
        except Exception:
            lag = None
        self.metrics.set_lag(lag)

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
        if self.consumer is not None and not final:
            try:
                fields["partitions"] = len(self.consumer.assignment())
            except Exception:
                pass
        if final:
            fields["elapsed_s"] = round(time.monotonic() - s.started, 1)
            fields["reason"] = s.exit_reason or "error"
        log.info("ingest_done" if final else "ingest_progress", extra=fields)

"""The worker's Kafka clients behind one small interface, chosen by ``[kafka] client``.

``kafka-python`` (pure Python, the default) or ``confluent`` (confluent-kafka on librdkafka, the
optional extra ``mcrecall[fast]``: it fetches and decodes in C threads, ~3x the consume rate).
Both give the worker the same things:

- :meth:`EventConsumer.poll`: ``{Partition: [record, ...]}``, each record with ``offset``,
  ``value`` and ``key`` (kafka-python's own records pass through unchanged);
- :meth:`EventConsumer.poll_batch`: the same poll column-shaped (:class:`PolledBatch`: the values
  in a list, the next offset per partition, a message's coordinates on demand), built by C-level
  passes over the poll: the worker's hot path does no Python work per message;
- rebalance callbacks in which :meth:`~EventConsumer.seek` sets where a new partition starts;
- :meth:`~EventConsumer.commit_async`, :meth:`~EventConsumer.pause` / ``resume``;
- :meth:`~EventConsumer.watermarks` (beginning and end offsets, asked of the broker) and
  :meth:`~EventConsumer.lag` (from the fetch responses' high watermarks);
- :meth:`~EventConsumer.reachable`: a metadata-sized request with a short timeout (neither
  client has a public "is a broker connected" call; this asks the cluster itself);
- a dead-letter producer of the same family: ``send(topic, key=, value=, headers=)`` returns a
  future whose ``get(timeout)`` raises on a failed delivery; ``flush(timeout)``; ``close()``.

Errors of either client are in :data:`KAFKA_ERRORS` (what the worker treats as "Kafka failed").

>>> consumer = open_consumer(cfg)                                 # doctest: +SKIP
>>> consumer.subscribe(cfg.kafka.topic, on_assigned=seek_all, on_revoked=drain)  # doctest: +SKIP
>>> batch = consumer.poll(0.5)                                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_right
from itertools import chain
from operator import attrgetter
from typing import Callable, Iterable, NamedTuple

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as _KTP
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from mcrecall.core.config import ConfigError
from mcrecall.ingest.kafka_io import confluent_security_conf, kafka_security_kwargs

try:  # the optional extra mcrecall[fast]
    import confluent_kafka as _ck
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    _ck = None

log = logging.getLogger("mcrecall.ingest")

KAFKA_ERRORS: tuple[type[BaseException], ...] = (KafkaError,) + ((_ck.KafkaException,) if _ck else ())
CLIENTS = ("kafka-python", "confluent")
DLQ_FRAMING_BYTES = 64 * 1024  # a produce request's framing beyond its one record
_FETCH = {"partition_bytes": 4 * 1024 * 1024, "total_bytes": 16 * 1024 * 1024}


class Partition(NamedTuple):
    """A topic partition; equal to (and hashes like) kafka-python's ``TopicPartition``."""

    topic: str
    partition: int


class Record(NamedTuple):
    """One message of a poll (the confluent adapter's; kafka-python's ConsumerRecord has the same fields)."""

    offset: int
    value: bytes | None
    key: bytes | None


Callback = Callable[[list], None]
_VALUE = attrgetter("value")


class PolledBatch:
    """One poll, column-shaped: what the worker needs of it without a Python step per message.

    Attributes
    ----------
    values : list of bytes (or None)
        Every message's value, partition after partition, each in offset order.
    next_offsets : dict
        ``{Partition: last offset + 1}`` of each partition with a message in the poll.

    :meth:`locate` gives message ``k``'s ``(Partition, offset, key)`` (for a dead letter); it is
    only asked for bad messages.
    """

    __slots__ = ("values", "next_offsets", "_locate")

    def __init__(self, values: list, next_offsets: dict, locate: Callable[[int], tuple]):
        self.values, self.next_offsets, self._locate = values, next_offsets, locate

    def __len__(self) -> int:
        return len(self.values)

    def locate(self, k: int) -> tuple:
        """``(Partition, offset, key)`` of message ``k``."""
        return self._locate(k)

    def without(self, tps) -> "PolledBatch":
        """This poll less the messages of partitions ``tps`` (a rare path: a Python step per message)."""
        drop = {Partition(tp.topic, tp.partition) for tp in tps}
        keep = [k for k in range(len(self.values)) if self._locate(k)[0] not in drop]
        return PolledBatch([self.values[k] for k in keep],
                           {tp: o for tp, o in self.next_offsets.items() if tp not in drop},
                           lambda j: self._locate(keep[j]))

    @classmethod
    def from_records(cls, records: dict) -> "PolledBatch":
        """From :meth:`EventConsumer.poll`'s ``{Partition: [record, ...]}`` (records with
        ``offset``, ``value`` and ``key``)."""
        batches = [(Partition(tp.topic, tp.partition), b) for tp, b in records.items() if b]
        flat = list(chain.from_iterable(b for _, b in batches))
        starts, tps, at = [], [], 0
        for tp, b in batches:
            starts.append(at)
            tps.append(tp)
            at += len(b)

        def locate(k: int) -> tuple:
            r = flat[k]
            return tps[bisect_right(starts, k) - 1], r.offset, r.key

        return cls(list(map(_VALUE, flat)), {tp: b[-1].offset + 1 for tp, b in batches}, locate)


EMPTY_BATCH = PolledBatch([], {}, lambda k: None)


def confluent_available() -> bool:
    return _ck is not None


def _require_confluent():
    if _ck is None:
        raise ConfigError('[kafka] client = "confluent" needs the confluent-kafka package '
                          "(pip install 'mcrecall[fast]' or confluent-kafka>=2.3)")
    return _ck


def open_consumer(cfg, *, group_id: str | None = None,
                  connect_timeout_s: float | None = None) -> "EventConsumer":
    """The consumer of ``[kafka] client`` for the worker (offsets never auto-committed).
    ``connect_timeout_s`` bounds a constructor that waits for the brokers (kafka-python >= 3
    waits 30 s per bootstrap by default; librdkafka's constructor never waits)."""
    cls = {"kafka-python": KafkaPythonConsumer, "confluent": ConfluentConsumer}[cfg.kafka.client]
    return cls(cfg, group_id=group_id, connect_timeout_s=connect_timeout_s)


def open_dlq_producer(cfg, *, timeout_s: float = 30.0) -> "DeadLetterProducer":
    """The dead-letter producer of ``[kafka] client`` (acks=all, headers supported): records up
    to ``[ingest] max_message_bytes`` (the limit dead letters are cut to), each one's outcome
    known within about ``timeout_s``."""
    cls = {"kafka-python": KafkaPythonProducer, "confluent": ConfluentProducer}[cfg.kafka.client]
    return cls(cfg, max_request_bytes=cfg.ingest.max_message_bytes + DLQ_FRAMING_BYTES,
               timeout_s=timeout_s)


def fetched_high_watermarks(cfg, from_offsets: dict, timeout_s: float = 10.0) -> dict:
    """``{tp: high watermark}`` as fetch responses from ``from_offsets[tp]`` report it.

    A fetch's high watermark is right where a broker's ListOffsets answer can be too low (the
    local broker's is). Asked by a separate kafka-python consumer without a group, whatever
    ``[kafka] client`` is, so the worker's own positions are not touched. Partitions with no
    answer within ``timeout_s`` are left out."""
    probe = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap_servers, group_id=None,
                          enable_auto_commit=False, max_partition_fetch_bytes=64 * 1024,
                          **kafka_security_kwargs(cfg))
    try:
        asked = {_KTP(tp.topic, tp.partition): off for tp, off in from_offsets.items()}
        probe.assign(list(asked))
        for tp, off in asked.items():
            probe.seek(tp, off)
        deadline = time.monotonic() + timeout_s
        marks: dict = {}
        while len(marks) < len(asked) and time.monotonic() < deadline:
            probe.poll(timeout_ms=200)  # the records themselves are not needed
            marks = {tp: hw for tp in asked if (hw := probe.highwater(tp)) is not None}
        return {Partition(tp.topic, tp.partition): hw for tp, hw in marks.items()}
    finally:
        probe.close(autocommit=False)


class EventConsumer:
    """What the worker needs of a Kafka consumer (see the module docstring)."""

    client = ""

    def subscribe(self, topic: str, on_assigned: Callback, on_revoked: Callback) -> None:
        raise NotImplementedError

    def poll(self, timeout_s: float) -> dict:
        """Up to ``[kafka] max_poll_records`` messages: ``{Partition: [record, ...]}``, in
        offset order per partition; ``{}`` after ``timeout_s`` without any."""
        raise NotImplementedError

    def poll_batch(self, timeout_s: float) -> PolledBatch:
        """:meth:`poll` as a :class:`PolledBatch` (empty after ``timeout_s`` without a message)."""
        records = self.poll(timeout_s)
        return PolledBatch.from_records(records) if records else EMPTY_BATCH

    def assignment(self) -> set:
        raise NotImplementedError

    def seek(self, tp, offset: int) -> None:
        raise NotImplementedError

    def seek_to_beginning(self, tp) -> None:
        raise NotImplementedError

    def seek_to_end(self, tp) -> None:
        raise NotImplementedError

    def pause(self, tps: Iterable) -> None:
        raise NotImplementedError

    def resume(self, tps: Iterable) -> None:
        raise NotImplementedError

    def commit_async(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit ``{(topic, partition): next_offset}`` to the group, without waiting (monitoring only)."""
        raise NotImplementedError

    def watermarks(self, tps: Iterable, timeout_s: float = 5.0) -> dict:
        """``{Partition: (beginning, end)}`` asked of the broker (ListOffsets); raises a
        KAFKA_ERRORS on timeout. The local broker (tansu) answers ``end`` too low: the base
        offset of the partition's last record batch + 1, not its last offset + 1."""
        raise NotImplementedError

    def lag(self) -> int | None:
        """Messages behind the last fetched high watermark over the assignment; None if unknown."""
        raise NotImplementedError

    def reachable(self, timeout_s: float = 1.0) -> bool:
        """Whether the cluster answers a metadata-sized request within ``timeout_s``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


# ----------------------------------------------------------------------------- kafka-python
class _Listener(ConsumerRebalanceListener):
    def __init__(self, on_assigned: Callback, on_revoked: Callback):
        self.on_assigned, self.on_revoked = on_assigned, on_revoked

    def on_partitions_revoked(self, revoked):
        self.on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned):
        self.on_assigned(list(assigned))


class KafkaPythonConsumer(EventConsumer):
    client = "kafka-python"

    def __init__(self, cfg, *, group_id: str | None = None, connect_timeout_s: float | None = None):
        k = cfg.kafka
        self.topic = k.topic
        bounded = {}
        if connect_timeout_s is not None and "bootstrap_timeout_ms" in KafkaConsumer.DEFAULT_CONFIG:
            bounded = {"bootstrap_timeout_ms": int(max(1.0, min(30.0, connect_timeout_s)) * 1000)}
        self._c = KafkaConsumer(
            bootstrap_servers=k.bootstrap_servers,
            group_id=group_id or k.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=max(100, k.session_timeout_ms // 3),
            max_poll_records=k.max_poll_records,
            max_partition_fetch_bytes=_FETCH["partition_bytes"],
            fetch_max_bytes=_FETCH["total_bytes"],
            **bounded,
            **kafka_security_kwargs(cfg),
        )

    @property
    def config(self) -> dict:
        """The client's own configuration (kafka-python names)."""
        return self._c.config

    def subscribe(self, topic, on_assigned, on_revoked):
        self._c.subscribe([topic], listener=_Listener(on_assigned, on_revoked))

    def poll(self, timeout_s):
        return self._c.poll(timeout_ms=int(timeout_s * 1000))  # TopicPartition == Partition

    def assignment(self):
        return self._c.assignment()

    def seek(self, tp, offset):
        self._c.seek(_KTP(tp.topic, tp.partition), offset)

    def seek_to_beginning(self, tp):
        self._c.seek_to_beginning(_KTP(tp.topic, tp.partition))

    def seek_to_end(self, tp):
        self._c.seek_to_end(_KTP(tp.topic, tp.partition))

    def pause(self, tps):
        self._c.pause(*[_KTP(t.topic, t.partition) for t in tps])

    def resume(self, tps):
        self._c.resume(*[_KTP(t.topic, t.partition) for t in tps])

    def commit_async(self, offsets):
        self._c.commit_async({_KTP(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()})

    def watermarks(self, tps, timeout_s=5.0):
        tps = [_KTP(t.topic, t.partition) for t in tps]
        ms = int(timeout_s * 1000)
        lo = self._c.beginning_offsets(tps, timeout_ms=ms)
        hi = self._c.end_offsets(tps, timeout_ms=ms)
        return {Partition(*tp): (lo[tp], hi[tp]) for tp in tps}

    def lag(self):
        # the fetch responses' high watermark, not end_offsets(): the local broker answers
        # the latter too low. Unknown until a fetch has returned for every assigned partition.
        total = 0
        for tp in self._c.assignment():
            hw = self._c.highwater(tp)
            if hw is None:
                return None
            total += max(0, hw - self._c.position(tp))
        return total

    def reachable(self, timeout_s=1.0):
        try:
            self._c.end_offsets([_KTP(self.topic, 0)], timeout_ms=int(timeout_s * 1000))
            return True
        except (KafkaError, OSError):
            return False

    def close(self):
        self._c.close(autocommit=False)


class DeadLetterProducer:
    """What the worker needs of the dead-letter producer: acks=all sends with headers whose
    outcome is known within the producer's ``timeout_s``, then flush and close."""

    def send(self, topic, *, key=None, value=b"", headers=()):
        """Queue one record; returns a future-like object whose outcome the caller checks."""
        raise NotImplementedError

    def flush(self, timeout=30.0):
        raise NotImplementedError

    def close(self, timeout=5.0):
        raise NotImplementedError


class KafkaPythonProducer(DeadLetterProducer):
    """kafka-python's KafkaProducer as the dead-letter producer (``send`` returns its future)."""

    def __init__(self, cfg, *, max_request_bytes, timeout_s=30.0):
        ms = int(timeout_s * 1000)
        self._p = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all", linger_ms=5,
                                max_request_size=max_request_bytes, retries=5,
                                request_timeout_ms=max(500, ms // 2), delivery_timeout_ms=max(1000, ms),
                                max_block_ms=max(1000, ms), **kafka_security_kwargs(cfg))

    @property
    def config(self) -> dict:
        return self._p.config

    def send(self, topic, *, key=None, value=b"", headers=()):
        return self._p.send(topic, key=key, value=value, headers=list(headers))

    def flush(self, timeout=30.0):
        self._p.flush(timeout=timeout)

    def close(self, timeout=5.0):
        self._p.close(timeout=timeout)


# ----------------------------------------------------------------------------- confluent
class _RdLogFilter(logging.Filter):
    """librdkafka logs every failed connection attempt (``FAIL ... Connection refused``, ~20 a
    second while a broker is down). An outage is the worker's to report, the same way for both
    clients (``kafka_unreachable``, every 10 s): connection-level lines go to DEBUG; any other
    librdkafka line is kept, at most once per 10 s per facility."""

    TRANSPORT = ("FAIL", "BROKERFAIL", "CONNECT", "DISCONNECT", "ALLBROKERSDOWN", "RESOLVE",
                 "REQTMOUT", "ERROR")
    TRANSPORT_TEXT = ("Connection refused", "Connect to ", "Disconnected", "all brokers are down",
                      "Failed to resolve", "timed out", "Connection reset", "Network is unreachable",
                      "No route to host", "brokers are down")
    REPEAT_S = 10.0

    def __init__(self):
        super().__init__()
        self.last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            return True
        text = record.getMessage()
        fac = text.split(" ", 1)[0]
        if fac in self.TRANSPORT and any(t in text for t in self.TRANSPORT_TEXT):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return record.name != "" and logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        now = time.monotonic()
        if now - self.last.get(fac, -1e9) < self.REPEAT_S:
            return False
        self.last[fac] = now
        return True


def _rd_logger():
    lg = logging.getLogger("mcrecall.ingest.librdkafka")
    if not any(isinstance(f, _RdLogFilter) for f in lg.filters):
        lg.addFilter(_RdLogFilter())
    return lg


class _ClientErrors:
    """librdkafka's error callback: an outage is the worker's to report (kafka_unreachable);
    anything else (authentication, TLS, a fatal error) is logged once per 10 s per code."""

    QUIET = ("_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE")

    def __init__(self):
        self.last: dict[str, float] = {}

    def __call__(self, err):
        name = err.name()
        if name in self.QUIET:
            log.debug("kafka_client_error", extra={"error": err.str()})
            return
        now = time.monotonic()
        if now - self.last.get(name, -1e9) >= 10.0:
            self.last[name] = now
            log.warning("kafka_client_error", extra={"error": f"{name}: {err.str()}",
                                                     "fatal": bool(err.fatal())})


def _confluent_base(cfg) -> dict:
    return {"bootstrap.servers": cfg.kafka.bootstrap_servers, "error_cb": _ClientErrors(),
            "logger": _rd_logger(), **confluent_security_conf(cfg)}


class ConfluentConsumer(EventConsumer):
    client = "confluent"
    config: dict = {}  # the librdkafka configuration it was made with

    def _conf(self, cfg, conf: dict) -> dict:
        self.config = conf
        return conf

    def __init__(self, cfg, *, group_id: str | None = None, connect_timeout_s: float | None = None):
        ck = _require_confluent()
        k = cfg.kafka
        self.topic = k.topic
        self.max_records = k.max_poll_records
        self._c = ck.Consumer(self._conf(cfg, {
            **_confluent_base(cfg),
            "group.id": group_id or k.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": k.session_timeout_ms,
            "heartbeat.interval.ms": max(100, k.session_timeout_ms // 3),
            "max.partition.fetch.bytes": _FETCH["partition_bytes"],
            "fetch.max.bytes": _FETCH["total_bytes"],
        }))
        self._assigned: set[Partition] = set()
        self._in_assign: dict[Partition, int] | None = None  # seeks made inside on_assign
        self._lock = threading.Lock()

    # rebalance: librdkafka calls these from inside consume()/poll(), on this thread
    def subscribe(self, topic, on_assigned, on_revoked):
        ck = _ck

        def assign_cb(consumer, parts):
            tps = [Partition(p.topic, p.partition) for p in parts]
            self._in_assign = {}
            try:
                on_assigned(tps)
                chosen = self._in_assign
            finally:
                self._in_assign = None
            # a partition the callback did not seek starts where the group committed (or earliest)
            consumer.assign([ck.TopicPartition(tp.topic, tp.partition, chosen.get(tp, ck.OFFSET_STORED))
                             for tp in tps])
            self._assigned = set(tps)

        def revoke_cb(consumer, parts):
            try:
                on_revoked([Partition(p.topic, p.partition) for p in parts])
            finally:
                self._assigned = set()
                consumer.unassign()

        self._c.subscribe([topic], on_assign=assign_cb, on_revoke=revoke_cb, on_lost=revoke_cb)

    def poll(self, timeout_s):
        c = self._c
        first = c.poll(timeout_s)  # blocks until one message (consume(n) would wait for n)
        if first is None:
            return {}
        msgs = c.consume(self.max_records - 1, 0) if self.max_records > 1 else []  # what is queued
        msgs.insert(0, first)
        out: dict[Partition, list] = {}
        lists: dict[int, list] = {}  # partition -> its list (one topic)
        new, rec = tuple.__new__, Record  # the hot loop: C calls only, no Python frame per message
        for m in msgs:
            if m.error() is not None:
                self._message_error(m)
                continue
            p = m.partition()
            lst = lists.get(p)
            if lst is None:
                lst = lists[p] = out[Partition(m.topic() or self.topic, p)] = []
            lst.append(new(rec, (m.offset(), m.value(), m.key())))
        return out

    def poll_batch(self, timeout_s):
        c = self._c
        first = c.poll(timeout_s)  # blocks until one message (consume(n) would wait for n)
        if first is None:
            return EMPTY_BATCH
        msgs = c.consume(self.max_records - 1, 0) if self.max_records > 1 else []  # what is queued
        msgs.insert(0, first)
        msg = _ck.Message
        errors = list(map(msg.error, msgs))
        if errors.count(None) != len(errors):  # rare: errors (partition EOF and the like) among them
            for m in (m for m, e in zip(msgs, errors, strict=False) if e is not None):
                self._message_error(m)
            msgs = [m for m, e in zip(msgs, errors, strict=False) if e is None]
            if not msgs:
                return EMPTY_BATCH
        # the last message of each partition (a partition's messages come in offset order)
        last = dict(zip(map(msg.partition, msgs), msgs, strict=False))
        topic = self.topic
        nexts = {Partition(m.topic() or topic, p): m.offset() + 1 for p, m in last.items()}

        def locate(k: int) -> tuple:
            m = msgs[k]
            return Partition(m.topic() or topic, m.partition()), m.offset(), m.key()

        return PolledBatch(list(map(msg.value, msgs)), nexts, locate)

    @staticmethod
    def _message_error(m):
        err = m.error()
        if err.code() == _ck.KafkaError._PARTITION_EOF:
            return
        log.warning("kafka_message_error", extra={"error": f"{err.name()}: {err.str()}",
                                                  "partition": m.partition()})

    def assignment(self):
        return set(self._assigned)

    def _seek(self, tp, offset):
        tp = Partition(tp.topic, tp.partition)
        if self._in_assign is not None:
            self._in_assign[tp] = offset
        else:
            self._c.seek(_ck.TopicPartition(tp.topic, tp.partition, offset))

    def seek(self, tp, offset):
        self._seek(tp, int(offset))

    def seek_to_beginning(self, tp):
        self._seek(tp, _ck.OFFSET_BEGINNING)

    def seek_to_end(self, tp):
        self._seek(tp, _ck.OFFSET_END)

    def pause(self, tps):
        self._c.pause([_ck.TopicPartition(t.topic, t.partition) for t in tps])

    def resume(self, tps):
        self._c.resume([_ck.TopicPartition(t.topic, t.partition) for t in tps])

    def commit_async(self, offsets):
        if offsets:
            self._c.commit(offsets=[_ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                           asynchronous=True)

    def watermarks(self, tps, timeout_s=5.0):
        out = {}
        for t in tps:
            lo, hi = self._c.get_watermark_offsets(_ck.TopicPartition(t.topic, t.partition),
                                                   timeout=timeout_s)
            out[Partition(t.topic, t.partition)] = (lo, hi)
        return out

    def lag(self):
        tps = [_ck.TopicPartition(t.topic, t.partition) for t in self._assigned]
        if not tps:
            return 0
        total = 0
        for tp in self._c.position(tps):
            _, hw = self._c.get_watermark_offsets(tp, cached=True)
            if hw < 0 or tp.offset < 0:
                return None
            total += max(0, hw - tp.offset)
        return total

    def reachable(self, timeout_s=1.0):
        try:
            self._c.list_topics(self.topic, timeout=timeout_s)
            return True
        except _ck.KafkaException:
            return False

    def close(self):
        self._c.close()


class _Delivery:
    """The future of one confluent produce: ``get(timeout)`` serves delivery reports until it is done."""

    __slots__ = ("_producer", "error", "done")

    def __init__(self, producer):
        self._producer, self.error, self.done = producer, None, False

    def __call__(self, err, _msg):
        self.error, self.done = err, True

    def get(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not self.done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KafkaTimeoutError(f"dead letter not acknowledged within {timeout:g}s")
            self._producer.poll(min(left, 0.1))
        if self.error is not None:
            raise _ck.KafkaException(self.error)
        return True


class ConfluentProducer(DeadLetterProducer):
    """confluent-kafka's Producer as the dead-letter producer (acks=all, headers)."""

    def __init__(self, cfg, *, max_request_bytes, timeout_s=30.0):
        ck = _require_confluent()
        ms = int(timeout_s * 1000)
        self.config = {**_confluent_base(cfg), "acks": "all", "linger.ms": 5,
                       "message.max.bytes": max_request_bytes, "retries": 5, "enable.idempotence": False,
                       "request.timeout.ms": max(500, ms // 2), "message.timeout.ms": max(1000, ms)}
        self._p = ck.Producer(self.config)

    def send(self, topic, *, key=None, value=b"", headers=()):
        d = _Delivery(self._p)
        self._p.produce(topic, value=value, key=key, headers=list(headers), on_delivery=d)
        self._p.poll(0)  # serve earlier delivery reports; keeps the local queue short
        return d

    def flush(self, timeout=30.0):
        left = self._p.flush(timeout)
        if left:
            raise KafkaTimeoutError(f"{left} dead letters not acknowledged within {timeout:g}s")

    def close(self, timeout=5.0):
        if self._p is not None:
            self._p.flush(timeout)
            # librdkafka has no close(): dropping the last reference destroys the handle, which
            # otherwise keeps reconnecting in its own threads
            self._p = None

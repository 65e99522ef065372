"""Send events from a JSONL file to the topic, keyed by user id (one user's events, one partition)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from kafka import KafkaProducer

from mcrecall.core.eventfile import open_event_file
from mcrecall.ingest.attributes import BadAttributes, parse_attribute_message
from mcrecall.ingest.broker import port_open
from mcrecall.ingest.events import BadEvent, parse_event
from mcrecall.ingest.kafka_io import KafkaUnavailable, ensure_topic, kafka_security_kwargs

log = logging.getLogger("mcrecall.produce")


@dataclass
class ProduceStats:
    sent: int = 0
    invalid: int = 0
    seconds: float = 0.0


def make_producer(bootstrap: str, **options) -> KafkaProducer:
    """The event producer; ``options`` (e.g. ``kafka_security_kwargs(cfg)``) go to KafkaProducer."""
    kw = dict(acks="all", linger_ms=10, batch_size=256 * 1024, max_request_size=2 * 1024 * 1024)
    return KafkaProducer(bootstrap_servers=bootstrap, **{**kw, **options})


def check_broker_reachable(bootstrap: str, timeout_s: float = 1.0) -> None:
    """Fail fast, with what to do, when nothing listens at any of the bootstrap addresses.

    kafka-python would retry for ~30 s in silence before giving up.

    Raises
    ------
    KafkaUnavailable
        No ``host:port`` of ``bootstrap`` accepts a TCP connection within ``timeout_s``.
    """
    addresses = [a.strip() for a in bootstrap.split(",") if a.strip()][:4]
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            if port_open(host.strip("[]") or "127.0.0.1", int(port), timeout=timeout_s):
                return
        except ValueError:  # not host:port - kafka-python reports that itself
            return
    raise KafkaUnavailable(
        f"no Kafka broker at {bootstrap}: nothing accepts connections there. Start a local one "
        "with `mcrecall broker` (in another terminal), or point [kafka] bootstrap_servers "
        "(MCRECALL_KAFKA_BOOTSTRAP_SERVERS) at your cluster")


def produce_lines(lines: Iterable[bytes], cfg, *, validate: bool = True,
                  producer: KafkaProducer | None = None) -> ProduceStats:
    """Send each line as one message. With ``validate``, invalid lines are reported, not sent;
    without it they are sent as they are (to exercise the dead-letter path)."""
    k = cfg.kafka
    if producer is None:
        check_broker_reachable(k.bootstrap_servers)
    security = kafka_security_kwargs(cfg)
    ensure_topic(k.bootstrap_servers, k.topic, k.partitions, security=security)
    own = producer is None
    producer = producer or make_producer(k.bootstrap_servers, **security)
    stats = ProduceStats()
    t0 = time.monotonic()
    try:
        for lineno, raw in enumerate(lines, start=1):
            raw = raw.rstrip(b"\r\n") if isinstance(raw, bytes) else raw.rstrip("\r\n").encode("utf-8")
            if not raw.strip():
                continue
            key = None
            try:
                key = message_key(raw)
            except (BadEvent, BadAttributes) as e:
                if validate:
                    stats.invalid += 1
                    log.warning("invalid_event", extra={"line": lineno, "reason": e.reason})
                    continue
            producer.send(k.topic, key=key, value=raw)
            stats.sent += 1
        producer.flush(timeout=60)
    finally:
        if own:
            producer.close(timeout=10)
    stats.seconds = time.monotonic() - t0
    return stats


def message_key(raw: bytes) -> bytes:
    """The Kafka key of a valid message (the user id; an item's attribute message: the item
    id), or BadEvent / BadAttributes with the reason the worker would give."""
    up = parse_attribute_message(raw)
    if up is not None:
        return up.entity_id.encode("utf-8")
    return parse_event(raw).user_id.encode("utf-8")


def produce_file(path: str | Path, cfg, *, validate: bool = True) -> ProduceStats:
    with open_event_file(path) as f:  # a leading BOM is skipped, as by every event-file reader
        stats = produce_lines(f, cfg, validate=validate)
    log.info("produce_done", extra={"file": str(path), "sent": stats.sent, "invalid": stats.invalid,
                                    "events_per_s": round(stats.sent / max(stats.seconds, 1e-9))})
    return stats


def attribute_line(kind: str, entity_id, attributes: dict, ts: int | None = None) -> bytes:
    """One attribute message (``kind`` ``"item"`` or ``"user"``) as a JSONL line."""
    obj = {f"{kind}_id": entity_id, "attributes": attributes}
    if ts is not None:
        obj["ts"] = ts
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_line(user_id, item_id, action: str, ts: int | None = None) -> bytes:
    obj = {"user_id": user_id, "item_id": item_id, "action": action}
    if ts is not None:
        obj["ts"] = ts
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")

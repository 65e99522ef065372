"""The model log: every published version (and each item refresh of it) written to Kafka, so that
serving replicas (``mcrecall replica``, :mod:`mcrecall.serve.replica`) can rebuild it from the log
alone (docs/design.md §11 "The model log"; the pattern of LinkedIn Venice's read replicas).

Layout (a contract; ``C`` = ``[replication] topic``, default ``<kafka.topic>.models``):

* ``C`` — the control topic: 1 partition, ``cleanup.policy=compact``, key ``current``; value the
  JSON of the newest published version ``{"version", "topic", "records", "checksum",
  "n_users", "n_items", "bytes", "published_at"}``. Written only after all of the version's
  records were acknowledged, so a reader that follows it never waits on a half-written version;
  the last record wins.
* ``C.v<N>`` — one topic per version, 1 partition (order matters), in this order:
  ``meta`` (the version's metadata JSON, with its vector-store spec), ``users`` chunks,
  ``items`` chunks, ``end`` (counts and the checksum), then one ``refresh`` record per item
  refresh cycle of N. Deleting a version deletes its topic (the primary keeps the current and
  the previous version, as it does locally).

Every record value is ``<header JSON, UTF-8>\\n<payload>``. A chunk's payload is its ids
(each a 2-byte big-endian length and the UTF-8 bytes) followed by ``n x dim`` little-endian
float32 (the model-space vectors the primary published; no pickle), at most
:data:`CHUNK_BYTES` per chunk; its header carries ``seq`` (its index among the chunks, so a
re-delivered chunk overwrites itself), ``n``, ``dim``, ``ids_bytes`` and the payload's
``sha256``. The end record's ``checksum`` is the SHA-256 of the chunks' digests (raw 32 bytes
each) in ``seq`` order: a replica recomputes it from what it stored before making N current.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
from typing import Iterable, Sequence

import numpy as np

log = logging.getLogger("mcrecall.train")

CHUNK_BYTES = 256 << 10  # well under Kafka's default 1 MiB message limit, headers included
FORMAT = 1
CONTROL_KEY = b"current"
KINDS = ("meta", "users", "items", "item_tokens", "user_tokens", "end", "refresh")
# chunked records of (ids, float32 vectors): the version's vectors, and the hybrid model's token
# embeddings (ids = the token vocabulary, train/attributes.py) that fold-in and refresh read
CHUNK_KINDS = ("users", "items", "item_tokens", "user_tokens")
_LEN = struct.Struct(">H")


class ModelLogError(RuntimeError):
    """The model log could not be written (Kafka unreachable past ``[replication] timeout_s``)."""


class ModelLogFormatError(ValueError):
    """A model-log record does not parse (not this layout, truncated, bad checksum)."""


def version_topic(control_topic: str, version: int) -> str:
    """The topic of version N: ``<control topic>.v<N>``."""
    return f"{control_topic}.v{int(version)}"


def version_of_topic(control_topic: str, topic: str) -> int | None:
    """N for ``<control topic>.v<N>``, else None."""
    prefix = f"{control_topic}.v"
    if topic.startswith(prefix) and topic[len(prefix):].isdigit():
        return int(topic[len(prefix):])
    return None


# ---------------------------------------------------------------------- record codec
def encode_record(header: dict, payload: bytes = b"") -> bytes:
    """``<header JSON>\\n<payload>`` (json.dumps escapes newlines, so the first one ends it)."""
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n" + payload


def decode_record(value: bytes | None) -> tuple[dict, bytes]:
    """Split a record value into (header, payload); ModelLogFormatError if it is not one."""
    if not value:
        raise ModelLogFormatError("empty model-log record")
    value = bytes(value)
    nl = value.find(b"\n")
    try:
        header = json.loads(value[:nl] if nl >= 0 else b"")
    except ValueError:
        raise ModelLogFormatError("model-log record without a JSON header") from None
    if not isinstance(header, dict) or header.get("kind") not in KINDS:
        raise ModelLogFormatError(f"model-log record of unknown kind {header.get('kind')!r}"
                                  if isinstance(header, dict) else "model-log header is not an object")
    return header, value[nl + 1:]


def encode_ids(ids: Sequence[str]) -> bytes:
    out = bytearray()
    for i in ids:
        b = str(i).encode("utf-8")
        out += _LEN.pack(len(b)) + b
    return bytes(out)


def decode_ids(blob: bytes, n: int) -> list[str]:
    ids, pos = [], 0
    for _ in range(n):
        if pos + 2 > len(blob):
            raise ModelLogFormatError("chunk ids truncated")
        (ln,) = _LEN.unpack_from(blob, pos)
        pos += 2
        ids.append(blob[pos:pos + ln].decode("utf-8"))
        pos += ln
    if pos != len(blob):
        raise ModelLogFormatError("chunk ids block has trailing bytes")
    return ids


def decode_chunk(header: dict, payload: bytes, *, verify: bool = True) -> tuple[list[str], np.ndarray]:
    """(ids, (n, dim) float32 vectors) of a ``users``/``items``/``refresh`` record."""
    if verify and hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ModelLogFormatError(f"{header.get('kind')} record seq {header.get('seq')}: bad checksum")
    n, dim, nid = int(header["n"]), int(header["dim"]), int(header["ids_bytes"])
    if len(payload) != nid + 4 * n * dim:
        raise ModelLogFormatError(f"{header.get('kind')} record seq {header.get('seq')}: "
                                  f"{len(payload)} payload bytes, expected {nid + 4 * n * dim}")
    ids = decode_ids(payload[:nid], n)
    vecs = np.frombuffer(payload[nid:], dtype="<f4").reshape(n, dim).astype(np.float32)
    return ids, vecs


def _chunk_payload(ids: Sequence[str], vectors: np.ndarray) -> tuple[bytes, int]:
    blob = encode_ids(ids)
    return blob + np.ascontiguousarray(vectors, dtype="<f4").tobytes(), len(blob)


def _chunks(ids: Sequence[str], vectors: np.ndarray) -> Iterable[tuple[list[str], np.ndarray]]:
    """Consecutive slices whose payload stays under CHUNK_BYTES (at least one row each)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    sizes = np.fromiter((2 + len(str(i).encode("utf-8")) for i in ids), dtype=np.int64,
                        count=len(ids)) + 4 * dim
    start, n = 0, len(ids)
    ends = np.cumsum(sizes)
    while start < n:
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + CHUNK_BYTES, side="right"))
        stop = max(stop, start + 1)
        yield list(ids[start:stop]), vectors[start:stop]
        start = stop


def chunk_digest(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


def combined_checksum(digests: Iterable[bytes]) -> str:
    """The end record's checksum: SHA-256 of the chunks' raw digests in seq order."""
    h = hashlib.sha256()
    for d in digests:
        h.update(d)
    return h.hexdigest()


def version_records(version: int, meta: dict, user_ids: Sequence[str], user_vectors: np.ndarray,
                    item_ids: Sequence[str], item_vectors: np.ndarray,
                    tokens: dict | None = None) -> tuple[list[tuple[bytes, bytes]], dict]:
    """The records of version N in log order, as (key, value); and the end record's header.

    ``meta`` is the version's complete metadata (what the registry stores, with
    ``vector_store``); vectors are the model-space vectors the primary published; ``tokens``:
    the hybrid model's ``{"item"|"user": (vocab, embeddings)}`` (``item_tokens`` /
    ``user_tokens`` chunks, counted and checksummed with the rest).
    """
    version = int(version)
    user_vectors = np.asarray(user_vectors, dtype=np.float32)
    item_vectors = np.asarray(item_vectors, dtype=np.float32)
    dim = int(item_vectors.shape[1])
    out = [(b"meta", encode_record({"kind": "meta", "format": FORMAT, "version": version,
                                    "meta": meta}))]
    digests, seq, counts = [], 0, {"users": 0, "items": 0}
    parts = [("users", user_ids, user_vectors), ("items", item_ids, item_vectors)]
    for side, (vocab, emb) in sorted((tokens or {}).items()):
        parts.append((f"{side}_tokens", list(vocab), np.asarray(emb, dtype=np.float32)))
        counts[f"{side}_tokens"] = 0
    for kind, ids, vecs in parts:
        for c_ids, c_vecs in _chunks(list(map(str, ids)), vecs):
            payload, nid = _chunk_payload(c_ids, c_vecs)
            digests.append(chunk_digest(payload))
            out.append((kind.encode(), encode_record(
                {"kind": kind, "version": version, "seq": seq, "n": len(c_ids), "dim": int(vecs.shape[1]),
                 "ids_bytes": nid, "sha256": digests[-1].hex()}, payload)))
            seq += 1
            counts[kind] += len(c_ids)
    end = {"kind": "end", "format": FORMAT, "version": version, "chunks": seq, "dim": dim,
           "n_users": counts["users"], "n_items": counts["items"],
           **{f"n_{k}": n for k, n in counts.items() if k.endswith("_tokens")},
           "checksum": combined_checksum(digests)}
    out.append((b"end", encode_record(end)))
    return out, end


def refresh_record(version: int, info: dict, ids: Sequence[str], vectors: np.ndarray) -> tuple[bytes, bytes]:
    """One item-refresh cycle of version N: its registry record (``info``, with the
    ``generation``) and the replaced items' model-space vectors (already clipped)."""
    vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
    payload, nid = _chunk_payload(list(map(str, ids)), vectors)
    return b"refresh", encode_record(
        {"kind": "refresh", "version": int(version), "generation": int(info.get("generation", 0)),
         "seq": int(info.get("generation", 0)), "info": info, "n": len(ids),
         "dim": int(vectors.shape[1]), "ids_bytes": nid,
         "sha256": hashlib.sha256(payload).hexdigest()}, payload)


def control_record(version: int, topic: str, end: dict, nbytes: int) -> tuple[bytes, bytes]:
    return CONTROL_KEY, json.dumps({
        "version": int(version), "topic": topic, "records": int(end["chunks"]) + 2,
        "checksum": end["checksum"], "n_users": end["n_users"], "n_items": end["n_items"],
        "bytes": int(nbytes), "published_at": time.time(), "format": FORMAT}, sort_keys=True).encode()


def parse_control(value: bytes | None) -> dict | None:
    """The control record's JSON, or None if it is not one (ignored, logged by the caller)."""
    try:
        rec = json.loads(value)
    except (TypeError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("version"), int) or not rec.get("topic"):
        return None
    return rec


# ---------------------------------------------------------------------- the writer
class ModelLog:
    """Writes versions and refresh cycles to the model log (``[replication] publish = true``).

    Every write waits for Kafka's acknowledgement from all in-sync replicas (``acks=all``),
    retrying an unreachable cluster for ``[replication] timeout_s``; then it raises
    :class:`ModelLogError` (one line) and the caller does not make the version current.
    """

    def __init__(self, cfg):
        from mcrecall.ingest.kafka_io import kafka_security_kwargs

        self.cfg = cfg
        self.bootstrap = cfg.kafka.bootstrap_servers
        self.control = cfg.model_log_topic
        self.timeout_s = float(cfg.replication.timeout_s)
        self.security = kafka_security_kwargs(cfg)
        self._producer = None

    # -- plumbing --------------------------------------------------------------------------
    def _deadline_left(self, deadline: float) -> float:
        return max(0.0, deadline - time.monotonic())

    def _get_producer(self, deadline: float):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        if self._producer is not None:
            return self._producer
        last = None
        while True:
            try:
                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap, acks="all", retries=2**31 - 1, linger_ms=5,
                    max_request_size=4 << 20, request_timeout_ms=max(1000, int(min(30.0, self.timeout_s) * 1000)),
                    **self.security)
                return self._producer
            except (KafkaError, OSError) as e:
                last = e
            if self._deadline_left(deadline) <= 0:
                raise ModelLogError(f"model log: Kafka at {self.bootstrap} unreachable for "
                                    f"{self.timeout_s:g} s ([replication] timeout_s): {last}")
            time.sleep(min(0.5, self._deadline_left(deadline)))

    def _ensure_topics(self, topics: list[tuple[str, dict]], deadline: float) -> None:
        from kafka.admin import NewTopic
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        from mcrecall.ingest.kafka_io import KafkaUnavailable, admin_client

        try:
            admin = admin_client(self.bootstrap, max(1.0, self._deadline_left(deadline)), self.security)
        except KafkaUnavailable as e:
            raise ModelLogError(f"model log: {e}") from None
        try:
            existing = set(admin.list_topics())
            for name, configs in topics:
                if name in existing:
                    continue
                try:
                    admin.create_topics([NewTopic(name, 1, 1, topic_configs=configs)])
                except TopicAlreadyExistsError:
                    pass
        except (KafkaError, OSError) as e:
            raise ModelLogError(f"model log: cannot create topics at {self.bootstrap}: {e}") from None
        finally:
            admin.close()

    def _send_all(self, topic: str, records: list[tuple[bytes, bytes]], deadline: float) -> int:
        """Send in order and wait for every acknowledgement (acks=all); return the bytes sent."""
        from kafka.errors import KafkaError

        producer = self._get_producer(deadline)
        try:
            # partition 0 whatever the topic has: the log is one ordered partition per topic
            futures = [producer.send(topic, key=k, value=v, partition=0) for k, v in records]
            producer.flush(timeout=max(0.1, self._deadline_left(deadline)))
            for f in futures:
                f.get(timeout=max(0.1, self._deadline_left(deadline)))
        except (KafkaError, OSError) as e:
            self.close()  # a fresh producer next time: this one may hold unsent batches
            raise ModelLogError(f"model log: writing {topic} to Kafka at {self.bootstrap} failed "
                                f"within {self.timeout_s:g} s ([replication] timeout_s): "
                                f"{type(e).__name__}: {e}") from None
        return sum(len(k) + len(v) for k, v in records)

    # -- the writes ------------------------------------------------------------------------
    def publish_version(self, version: int, meta: dict, user_ids, user_vectors, item_ids,
                        item_vectors, tokens: dict | None = None) -> dict:
        """Write version N completely, then point the control topic at it.

        Returns ``{"topic", "records", "bytes", "checksum"}``. Raises ModelLogError.
        """
        deadline = time.monotonic() + self.timeout_s
        topic = version_topic(self.control, version)
        records, end = version_records(version, meta, user_ids, user_vectors, item_ids, item_vectors,
                                       tokens=tokens)
        self._ensure_topics([(self.control, {"cleanup.policy": "compact"}), (topic, {})], deadline)
        nbytes = self._send_all(topic, records, deadline)
        self._send_all(self.control, [control_record(version, topic, end, nbytes)], deadline)
        return {"topic": topic, "records": len(records), "bytes": nbytes, "checksum": end["checksum"]}

    def publish_refresh(self, version: int, info: dict, ids, vectors) -> int:
        """Append one refresh cycle of N to N's topic (acknowledged); returns bytes sent."""
        deadline = time.monotonic() + self.timeout_s
        return self._send_all(version_topic(self.control, version),
                              [refresh_record(version, info, ids, vectors)], deadline)

    def drop_versions(self, keep: set[int]) -> list[int]:
        """Delete the topics of versions not in ``keep`` (best effort: logged, never raised)."""
        from mcrecall.ingest.kafka_io import admin_client

        try:
            admin = admin_client(self.bootstrap, min(10.0, self.timeout_s), self.security)
        except Exception as e:  # the version is published; old topics go next time
            log.warning("model_log_drop_failed", extra={"error": str(e)})
            return []
        try:
            old = sorted(v for t in admin.list_topics()
                         if (v := version_of_topic(self.control, t)) is not None and v not in keep)
            if old:
                admin.delete_topics([version_topic(self.control, v) for v in old])
            return old
        except Exception as e:
            log.warning("model_log_drop_failed", extra={"error": str(e)})
            return []
        finally:
            admin.close()

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=2)
            except Exception:  # closing after an outage must not mask the real error
                pass
            self._producer = None


def model_log_from_config(cfg) -> ModelLog | None:
    """A :class:`ModelLog` when ``[replication] publish = true``, else None."""
    if cfg is None or not getattr(getattr(cfg, "replication", None), "publish", False):
        return None
    return ModelLog(cfg)

"""``mcrecall replica``: a serving host fed by Kafka (issue 18; docs/design.md §11 "The model log").

One process, two feeds, each into its own LMDB with its offsets in the same transaction:

* the event topic -> this host's ``triples.lmdb``, by the same exactly-once
  :class:`mcrecall.ingest.worker.IngestWorker` as the primary (a thread here), so fold-in and
  ``exclude_seen`` see this host's triples;
* the model log (:mod:`mcrecall.train.model_log`) -> this host's ``users.lmdb``: every record of
  version N is staged under ``rstage/<N>/`` in the transaction that stores the topic's next
  offset (``replica/offset/<topic>``). When N's end record is in, the stage is verified (every
  chunk's SHA-256, the combined checksum, the counts); only then are N's user vectors written in
  the registry format, the local index built from the item vectors (exact/faiss/hnswlib) or the
  shared Milvus collection adopted by its spec, the metadata written and the pointer flipped —
  the same ONE atomic step as on the primary. A SIGKILL anywhere leaves either the stage (redone
  on restart: every step is idempotent) or the finished version.

Until N is verified — and whenever Kafka is unreachable — recalls keep using the previous
version: readers follow only the pointer in ``users.lmdb``, exactly as on the primary, so
:meth:`mcrecall.serve.RecallClient.from_config` works unchanged on a replica's configuration.

A version that fails verification (bad checksum, counts that do not match, an unparsable
record) is never made current; it is logged (``replica_version_corrupt``) and recorded
(``replica/bad/<N>``, shown by ``mcrecall status``), and the replica goes on serving and
following the current version. A version without its end record simply stays incomplete.

Fold-in parity: a version's ``store_seq`` is the PRIMARY's store seq; a replica's store numbers
its batches differently. The version carries the event offsets that seq covers
(``store_offsets``); the replica waits until its own store covers them and stores, as the
version's ``store_seq``, its own seq at that point (exact when its store stands on those offsets
when N is applied, else the last position seen at or before them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import struct
import threading
import time
from pathlib import Path

import numpy as np

from mcrecall.core.crashpoints import REPLICA as CRASH_HOOK
from mcrecall.core.crashpoints import crash_point
from mcrecall.plugins import open_vector_store, vector_store_from_config
from mcrecall.plugins.base import DEFAULT_PARAMS
from mcrecall.train import model_log as ml
from mcrecall.train.versions import REFRESH, ModelRegistry, _ver

log = logging.getLogger("mcrecall.replica")

ROLE = b"replica/role"
STATUS = b"replica/status"
OFFSET = b"replica/offset/"
BAD = b"replica/bad/"
STAGE = b"rstage/"
_U32 = struct.Struct(">I")
CRASH_ENV = CRASH_HOOK.env  # MCR_REPLICA_CRASH_AT (core/crashpoints.py): SIGKILL at a named step
CRASH_POINTS = ("staged", "verified", "users", "index", "metadata", "current")


def _crash(name: str) -> None:
    crash_point(name, CRASH_HOOK)


def _stage(version: int, what: bytes) -> bytes:
    return STAGE + _ver(version) + b"/" + what


def _chunk_key(version: int, seq: int) -> bytes:
    return _stage(version, b"c/" + _U32.pack(int(seq)))


def _parse_offsets(d: dict | None) -> dict[tuple[str, int], int]:
    out = {}
    for k, v in (d or {}).items():
        t, _, p = str(k).rpartition("[")
        if t and p.endswith("]") and p[:-1].isdigit():
            out[(t, int(p[:-1]))] = int(v)
    return out


class ReplicaError(RuntimeError):
    """The replica cannot run (its configuration does not fit the published versions)."""


class Replica:
    """Follow the event topic and the model log into this host's data directory.

    Parameters
    ----------
    cfg : core.config.Config of this host (its own ``[store] data_dir`` and ``[kafka] group_id``).
    events : also run the ingest worker (default); False follows the model log only.
    """

    def __init__(self, cfg, *, events: bool = True, poll_s: float = 0.2, metrics=None):
        self.cfg = cfg
        # ingest.metrics.WorkerMetrics of `--metrics-port` (None: no metrics): the event worker's
        # counters, plus this replica's version and lag gauges in the same registry
        self.metrics = metrics
        self._gauges = _replica_gauges(metrics.registry) if metrics is not None else None
        self.control_topic = cfg.model_log_topic
        self.poll_s = poll_s
        self.registry = ModelRegistry(cfg.data_dir, map_size=int(cfg.store.map_size_gb * (1 << 30)))
        self.env = self.registry._open()
        with self.env.begin(write=True) as txn:
            txn.put(ROLE, b"replica")
        self.backend = cfg.index.backend
        self.vs = vector_store_from_config(cfg)
        self._stop = threading.Event()
        self._consumer = None
        self._assigned: tuple | None = None
        self._assigned_at = 0.0
        self._wait_logged = time.monotonic()
        self._timing: dict = {}  # of the version being transferred (logged when it is current)
        self.control: dict | None = None  # the newest control record seen
        self._blocked: int | None = None  # version whose end is in but that waits (triples)
        self._events = events
        self._worker = None
        self._worker_thread = None
        self._worker_error: BaseException | None = None
        self._positions: list[tuple[int, dict]] = []  # (store seq, offsets) seen, oldest first
        self._lag_events: int | None = None
        self._lag_at = 0.0
        self._status_at = 0.0
        self._reachable = False
        self._caught_up_at = time.time()
        self._started = time.time()
        self.state = "starting"

    # ------------------------------------------------------------------ lifecycle
    def stop(self, *_args) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.stop()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _start_worker(self) -> None:
        from mcrecall.ingest.worker import IngestWorker

        self._worker = IngestWorker(self.cfg, metrics=self.metrics)

        def run():
            try:
                self._worker.run()
            except BaseException as e:  # reported by the main loop, which then stops
                self._worker_error = e

        self._worker_thread = threading.Thread(target=run, name="replica-ingest", daemon=True)
        self._worker_thread.start()

    def close(self) -> None:
        self.stop()
        if self._worker_thread is not None:
            self._worker_thread.join(timeout=30)
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception:  # closing after an outage must not mask the exit reason
                pass
            self._consumer = None
        self.vs.close()
        self.registry.close()

    def run(self, *, until=None) -> int:
        """Follow both feeds until stopped (or ``until()`` is true); 0, or 1 when the ingest
        worker failed (its one-line reason logged)."""
        if self._events:
            self._start_worker()
        try:
            self._resume_staged()
            while not self._stop.is_set():
                if self._worker_error is not None:
                    log.error("replica_ingest_failed", extra={"error": str(self._worker_error)})
                    return 1
                self.step()
                if until is not None and until():
                    break
            return 0
        finally:
            self._write_status(force=True)
            self.close()

    # ------------------------------------------------------------------ Kafka
    def _connect(self) -> bool:
        if self._consumer is not None:
            return True
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        from mcrecall.ingest.kafka_io import kafka_security_kwargs

        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.cfg.kafka.bootstrap_servers, group_id=None,
                enable_auto_commit=False, auto_offset_reset="earliest",
                max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20,
                request_timeout_ms=5000, metadata_max_age_ms=2000,  # a topic created later is seen
                allow_auto_create_topics=False,  # the primary creates the log's topics, compacted
                **kafka_security_kwargs(self.cfg))
            self._assigned = None
            self._reachable = True
            return True
        except (KafkaError, OSError) as e:
            if self._reachable or self.state == "starting":
                log.warning("model_log_unreachable", extra={
                    "bootstrap": self.cfg.kafka.bootstrap_servers, "error": str(e),
                    "action": "serving the current version; retrying"})
            self._reachable = False
            self.state = "kafka_unreachable"
            self._stop.wait(1.0)
            return False

    def _target(self) -> int | None:
        """The version topic to follow: the newest on the log if it is newer than the current
        one and not known bad, else the current one (its refresh records)."""
        cur = self.registry.current_version()
        newest = self.control.get("version") if self.control else None
        if newest is not None and (cur is None or newest > cur) and not self._is_bad(newest):
            return newest
        return cur

    def _assign(self) -> None:
        from kafka import TopicPartition

        target = self._target()
        want = (target,)
        if self.control is None and time.monotonic() - self._assigned_at > 3.0:
            # a control topic assigned before it existed is not fetched once it does (kafka-python
            # keeps the failed offset reset): assign it again until its first record arrives
            self._assigned = None
        if self._assigned == want:
            return
        self._assigned_at = time.monotonic()
        tps = [TopicPartition(self.control_topic, 0)]
        if target is not None:
            tps.append(TopicPartition(ml.version_topic(self.control_topic, target), 0))
        self._consumer.assign(tps)
        if self.control is None:  # the control topic: read all of it (compacted, small)
            self._consumer.seek_to_beginning(tps[0])
        if target is not None:
            self._consumer.seek(tps[1], self._offset(tps[1].topic))
        self._assigned = want

    def _offset(self, topic: str) -> int:
        with self.env.begin() as txn:
            raw = txn.get(OFFSET + topic.encode())
        return int(raw) if raw is not None else 0

    # ------------------------------------------------------------------ one step
    def step(self) -> None:
        """One poll of the model log (and the bookkeeping around it)."""
        self._note_position()
        if self._blocked is not None:
            if self._try_finalize(self._blocked) == "waiting":
                self._write_status()
                self._stop.wait(self.poll_s)
                return
            self._blocked = None
        if not self._connect():
            self._write_status()
            return
        from kafka.errors import KafkaError

        try:
            self._assign()
            polled = self._consumer.poll(timeout_ms=int(self.poll_s * 1000), max_records=500)
        except (KafkaError, OSError, AssertionError) as e:
            log.warning("model_log_poll_failed", extra={"error": str(e)})
            self._reset_consumer()
            self._stop.wait(1.0)
            return
        newest = self.control.get("version") if self.control else None
        for tp, records in sorted(polled.items(), key=lambda kv: kv[0].topic != self.control_topic):
            if tp.topic == self.control_topic:
                for r in records:
                    rec = ml.parse_control(r.value)
                    if rec is None:
                        log.warning("model_log_bad_control", extra={"offset": r.offset})
                    else:
                        self.control = rec
                continue
            version = ml.version_of_topic(self.control_topic, tp.topic)
            if version is None or (self._assigned or (None,))[0] != version:
                continue  # from an assignment replaced in this poll
            for r in records:
                if self._stop.is_set() or not self._handle(version, tp.topic, r):
                    self._consumer.seek(tp, self._offset(tp.topic))  # read again from the store
                    break
        self._update_lag()
        # a new version on the log shows in the status at once (else at most a second late)
        self._write_status(force=(self.control or {}).get("version") != newest)

    def _reset_consumer(self) -> None:
        try:
            if self._consumer is not None:
                self._consumer.close()
        except Exception:  # a broken connection: closing may fail too
            pass
        self._consumer = None
        self._assigned = None

    # ------------------------------------------------------------------ records
    def _handle(self, version: int, topic: str, record) -> bool:
        """Stage or apply one record of ``version``'s topic with its offset; False to stop
        reading this topic for now (a version waiting on its triples, or marked bad)."""
        nxt = str(record.offset + 1).encode()
        okey = OFFSET + topic.encode()
        try:
            header, payload = ml.decode_record(record.value)
            if int(header.get("version", -1)) != version:
                raise ml.ModelLogFormatError(f"record of version {header.get('version')} in {topic}")
        except ml.ModelLogFormatError as e:
            return self._mark_bad(version, f"offset {record.offset}: {e}", okey, nxt)
        kind = header["kind"]
        if kind == "refresh":
            return self._refresh(version, header, payload, record, okey, nxt)
        if version == self.registry.current_version():  # a re-read of the current version
            with self.env.begin(write=True) as txn:
                txn.put(okey, nxt)
            return True
        if kind in ml.CHUNK_KINDS:
            if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
                return self._mark_bad(version, f"{kind} chunk seq {header.get('seq')} at offset "
                                      f"{record.offset}: bad checksum", okey, nxt)
            key = _chunk_key(version, int(header["seq"]))
        else:
            key = _stage(version, kind.encode())
        with self.env.begin(write=True) as txn:
            txn.put(key, bytes(record.value))
            txn.put(okey, nxt)
        if kind == "meta":
            self._timing = {"stage_from": time.monotonic()}
        _crash("staged")
        if kind == "end":
            if self._try_finalize(version) == "waiting":
                self._blocked = version
                return False
        return not self._is_bad(version)

    def _mark_bad(self, version: int, reason: str, okey: bytes | None = None, nxt: bytes | None = None) -> bool:
        log.error("replica_version_corrupt", extra={"version": version, "reason": reason,
                                                    "action": "never made current; serving the current version"})
        with self.env.begin(write=True) as txn:
            txn.put(BAD + _ver(version), json.dumps({"reason": reason, "at": time.time()}).encode())
            if okey is not None:
                txn.put(okey, nxt)
        self._drop_stage(version)
        self._assigned = None  # follow the current version again
        self._write_status(force=True)  # status shows the refusal with its newest version at once
        return False

    def _is_bad(self, version: int) -> bool:
        with self.env.begin() as txn:
            return txn.get(BAD + _ver(version)) is not None

    def bad_versions(self) -> dict[int, dict]:
        return _bad_versions(self.env)

    def _refresh(self, version, header, payload, record, okey, nxt) -> bool:
        cur = self.registry.current_version()
        if version != cur:
            if self._has_stage(version, b"end"):  # staged, not yet current: wait for it
                self._blocked = version
                return False
            with self.env.begin(write=True) as txn:  # a version never made current here
                txn.put(okey, nxt)
            return True
        gen = int(header.get("generation", 0))
        if gen <= self.registry.refresh_generation(version):  # a re-delivered cycle
            with self.env.begin(write=True) as txn:
                txn.put(okey, nxt)
            return True
        try:
            ids, vecs = ml.decode_chunk(header, payload)
        except ml.ModelLogFormatError as e:
            log.error("replica_refresh_corrupt", extra={"version": version, "offset": record.offset,
                                                        "reason": str(e), "action": "skipped"})
            with self.env.begin(write=True) as txn:
                txn.put(okey, nxt)
            return True
        if ids and self.backend != "milvus":  # Milvus: the primary refreshed the shared collection
            self.vs.replace_items(version, ids, vecs)  # idempotent: a kill here redoes it
        with self.env.begin(write=True) as txn:
            txn.put(REFRESH + _ver(version), json.dumps(header["info"], sort_keys=True).encode("utf-8"))
            txn.put(okey, nxt)
        log.info("replica_refreshed", extra={"version": version, "generation": gen, "items": len(ids)})
        return True

    # ------------------------------------------------------------------ versions
    def _has_stage(self, version: int, what: bytes) -> bool:
        with self.env.begin() as txn:
            return txn.get(_stage(version, what)) is not None

    def _staged_versions(self) -> list[int]:
        out = set()
        with self.env.begin() as txn:
            cur = txn.cursor()
            ok = cur.set_range(STAGE)
            while ok and cur.key().startswith(STAGE):
                out.add(_U32.unpack(cur.key()[len(STAGE):len(STAGE) + 4])[0])
                ok = cur.next()
        return sorted(out)

    def _resume_staged(self) -> None:
        """After a restart: finish a version whose end record was staged before the kill."""
        cur = self.registry.current_version()
        for v in self._staged_versions():
            if cur is not None and v <= cur:
                self._drop_stage(v)
            elif self._has_stage(v, b"end") and self._try_finalize(v) == "waiting":
                self._blocked = v

    def _drop_stage(self, version: int) -> None:
        prefix = STAGE + _ver(version)
        while True:
            with self.env.begin(write=True) as txn:
                cur = txn.cursor()
                ok, n = cur.set_range(prefix), 0
                while ok and cur.key().startswith(prefix) and n < 10_000:
                    ok = cur.delete()
                    n += 1
                done = not ok or not cur.key().startswith(prefix)
            if done:
                return

    def _read_stage(self, version: int):
        """(meta header, end header, [(kind, header, payload)] in seq order) or None."""
        with self.env.begin() as txn:
            meta_raw, end_raw = txn.get(_stage(version, b"meta")), txn.get(_stage(version, b"end"))
            if meta_raw is None or end_raw is None:
                return None
            chunks = []
            prefix = _stage(version, b"c/")
            cur = txn.cursor()
            ok = cur.set_range(prefix)
            while ok and cur.key().startswith(prefix):
                chunks.append(bytes(cur.value()))
                ok = cur.next()
        meta, _ = ml.decode_record(meta_raw)
        end, _ = ml.decode_record(end_raw)
        return meta, end, [ml.decode_record(c) for c in chunks]

    def _verify(self, version: int, end: dict, chunks) -> str | None:
        """Why the staged version is not what its end record says (None: it is)."""
        if len(chunks) != int(end["chunks"]):
            return f"{len(chunks)} chunks staged, the end record says {end['chunks']}"
        digests, n = [], dict.fromkeys(ml.CHUNK_KINDS, 0)
        for j, (h, payload) in enumerate(chunks):
            if int(h["seq"]) != j:
                return f"chunk {j} missing"
            d = ml.chunk_digest(payload)
            if d.hex() != h.get("sha256"):
                return f"chunk seq {j}: bad checksum"
            digests.append(d)
            n[h["kind"]] += int(h["n"])
        if ml.combined_checksum(digests) != end.get("checksum"):
            return "combined checksum does not match the end record"
        if n["users"] != int(end["n_users"]) or n["items"] != int(end["n_items"]):
            return (f"{n['users']} user / {n['items']} item vectors, the end record says "
                    f"{end['n_users']} / {end['n_items']}")
        for kind in ("item_tokens", "user_tokens"):
            if n[kind] != int(end.get(f"n_{kind}", 0)):
                return f"{n[kind]} {kind}, the end record says {end.get(f'n_{kind}', 0)}"
        return None

    def _local_store_seq(self, meta: dict) -> int | None:
        """This store's seq for the version's training offsets; None while the store has not
        reached them (the version waits)."""
        want = _parse_offsets(meta.get("store_offsets"))
        if not want or not self._events:  # --no-events: no store of its own to wait for
            return int(meta.get("store_seq", 0))  # a version without offsets: the primary's seq
        pos = self._position()
        if pos is None:
            return None
        seq, have = pos
        topic = self.cfg.kafka.topic
        want = {tp: o for tp, o in want.items() if tp[0] == topic}
        if any(have.get(tp, 0) < o for tp, o in want.items()):
            now = time.monotonic()
            if now - self._wait_logged > 30.0:  # visible, not silent, when it lasts
                self._wait_logged = now
                log.warning("replica_waiting_for_events", extra={
                    "version": meta.get("version"), "store_seq": seq,
                    "behind": {f"{t}[{p}]": o - have.get((t, p), 0) for (t, p), o in want.items()
                               if have.get((t, p), 0) < o},
                    "action": "the version waits until this store holds the events it was trained on"})
            return None
        if all(have.get(tp, 0) == o for tp, o in want.items()):
            return seq
        best = None
        for s, offs in self._positions:  # the last position seen at or before the offsets
            if all(offs.get(tp, 0) <= o for tp, o in want.items()):
                best = s
        if best is None:
            log.warning("replica_store_ahead", extra={
                "action": "this store passed the version's training offsets before it was seen; "
                          "users changed in between are served their model vectors"})
            return seq
        return best

    def _position(self):
        try:
            from mcrecall.ingest.store import TripleStore

            if self._worker is not None:
                return self._worker.store.position()
            if not (self.cfg.data_dir / "triples.lmdb" / "data.mdb").exists():
                return 0, {}
            store = TripleStore(self.cfg.data_dir, readonly=True)
            try:
                return store.position()
            finally:
                store.close()
        except FileNotFoundError:
            return 0, {}

    def _note_position(self) -> None:
        pos = self._position()
        if pos is not None and (not self._positions or self._positions[-1][0] != pos[0]):
            self._positions.append(pos)
            del self._positions[:-2000]

    def _try_finalize(self, version: int) -> str:
        """Make a fully staged version current: ``current`` | ``waiting`` | ``bad`` | ``incomplete``."""
        cur = self.registry.current_version()
        if cur is not None and version <= cur:
            self._drop_stage(version)
            return "current"
        if self._is_bad(version):
            return "bad"
        try:
            staged = self._read_stage(version)
        except ml.ModelLogFormatError as e:
            self._mark_bad(version, str(e))
            return "bad"
        if staged is None:
            return "incomplete"
        meta_h, end, chunks = staged
        problem = self._verify(version, end, chunks)
        if problem is not None:
            self._mark_bad(version, problem)
            return "bad"
        _crash("verified")
        meta = dict(meta_h["meta"])
        if meta.get("backend", self.backend) != self.backend:
            self._mark_bad(version, f"published for backend {meta.get('backend')!r}, this replica's "
                                    f"[index] backend is {self.backend!r}")
            return "bad"
        local_seq = self._local_store_seq(meta)
        if local_seq is None:
            self.state = "waiting_for_events"
            return "waiting"
        self.state = "applying"
        t0 = time.perf_counter()
        stage_from = self._timing.get("stage_from")
        self._timing = {"stage_s": None if stage_from is None else round(time.monotonic() - stage_from, 2)}
        try:
            spec = self._apply(version, meta, chunks)
        except ReplicaError as e:
            self._mark_bad(version, str(e))
            return "bad"
        except Exception as e:  # the vector store is down (Milvus): keep the stage, retry
            log.warning("replica_apply_failed", extra={"version": version, "error": f"{type(e).__name__}: {e}",
                                                       "action": "serving the current version; retrying"})
            self.state = "apply_failed"
            return "waiting"
        meta.update(store_seq=int(local_seq), vector_store=spec,
                    replica={"primary_store_seq": int(meta.get("store_seq", 0)),
                             "applied_at": time.time(), "log_checksum": end["checksum"]})
        self.registry.write_metadata(version, meta)
        _crash("metadata")
        self.registry.set_current(version)  # THE atomic step, as on the primary
        _crash("current")
        if self.backend != "milvus":
            try:
                self.vs.make_current(version)
            except Exception as e:  # serving follows users.lmdb
                log.warning("replica_make_current_failed", extra={"error": str(e)})
        for v in self._staged_versions():  # this one, and any superseded before it completed
            if v <= version:
                self._drop_stage(v)
        self._drop_old(keep={version} | ({cur} if cur is not None else set()))
        self._assigned = None
        log.info("replica_version_current", extra={
            "version": version, "previous": cur, "users": end["n_users"], "items": end["n_items"],
            "apply_s": round(time.perf_counter() - t0, 2), **self._timing})
        self.state = "following"
        self._write_status(force=True)
        return "current"

    def _apply(self, version: int, meta: dict, chunks) -> dict:
        """Write N's user vectors and its index (or adopt Milvus'); returns the spec to store."""
        from mcrecall.plugins.base import VersionSpec

        if version in self.registry.stored_versions():  # a kill during an earlier apply
            self.registry.drop(version, in_flight_ok=True)
        t0 = time.perf_counter()
        tokens: dict[str, tuple[list, list]] = {}
        for h, payload in chunks:
            if h["kind"] == "users":
                ids, vecs = ml.decode_chunk(h, payload, verify=False)
                self.registry.write_users(version, ids, vecs)
            elif h["kind"] in ("item_tokens", "user_tokens"):  # the hybrid model's token tables
                ids, vecs = ml.decode_chunk(h, payload, verify=False)
                vocab, parts = tokens.setdefault(h["kind"].split("_")[0], ([], []))
                vocab.extend(ids)
                parts.append(vecs)
        for side, (vocab, parts) in tokens.items():
            self.registry.write_tokens(version, side, vocab, np.concatenate(parts))
        self._timing["users_s"] = round(time.perf_counter() - t0, 2)
        _crash("users")
        spec = VersionSpec(**meta["vector_store"])
        if self.backend == "milvus":
            if meta.get("collection_base", self.cfg.index.collection) != self.cfg.index.collection:
                raise ReplicaError(f"published in Milvus collection {meta.get('collection_base')!r}, "
                                   f"this replica's [index] collection is {self.cfg.index.collection!r}")
            self.vs.adopt_version(spec)
            n = self.vs.count(version)
            if n != sum(int(h["n"]) for h, _ in chunks if h["kind"] == "items"):
                raise ReplicaError(f"the shared Milvus collection of version {version} holds {n} items, "
                                   "the log says otherwise")
            return json.loads(spec.to_json())
        params = {k: spec.params[k] for k in DEFAULT_PARAMS if k in spec.params and k != "timeout_s"}
        builder = open_vector_store(self.backend, data_dir=self.cfg.data_dir, uri=self.cfg.index.uri,
                                    collection=self.cfg.index.collection, timeout_s=self.cfg.index.timeout_s,
                                    **params)
        try:
            if version in builder.stored_versions():
                builder.drop_version(version)
            builder.purge_leftovers()
            builder.create_version(version, dim=spec.dim, metric=spec.metric,
                                   index_type=spec.params.get("requested_index_type", spec.index_type),
                                   similarity=spec.similarity, max_norm=spec.max_norm)
            for h, payload in chunks:
                if h["kind"] == "items":
                    ids, vecs = ml.decode_chunk(h, payload, verify=False)
                    builder.upsert(version, ids, vecs)
            builder.finalize(version)
            self._timing["index_s"] = round(time.perf_counter() - t0 - self._timing["users_s"], 2)
            _crash("index")
            return json.loads(builder.version_info(version).to_json())
        finally:
            builder.close()

    def _drop_old(self, keep: set[int]) -> None:
        for v in self.registry.stored_versions():
            if v not in keep:
                self.registry.drop(v, in_flight_ok=True)
        if self.backend == "milvus":
            return  # the shared server's collections are the primary's to drop
        try:
            for v in self.vs.stored_versions():
                if v not in keep:
                    self.vs.drop_version(v)
            self.vs.purge_leftovers()
        except Exception as e:
            log.warning("replica_drop_failed", extra={"error": str(e)})

    # ------------------------------------------------------------------ status
    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at < 2.0 or self._consumer is None:
            return
        self._lag_at = now
        try:
            from kafka import TopicPartition

            pos = self._position() or (0, {})
            # partitions from the store (no metadata round trip that could block while Kafka is away)
            tps = [TopicPartition(t, p) for (t, p) in pos[1] if t == self.cfg.kafka.topic]
            ends = self._consumer.end_offsets(tps, timeout_ms=2000) if tps else {}
            self._lag_events = sum(max(0, e - pos[1].get((tp.topic, tp.partition), 0)) for tp, e in ends.items())
            self._reachable = True
        except Exception:
            self._lag_events = None
            self._reachable = False

    def _write_status(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._status_at < 1.0:
            return
        self._status_at = now
        cur = self.registry.current_version()
        newest = self.control.get("version") if self.control else None
        up = (newest is None or cur == newest or self._is_bad(newest)) and self._lag_events == 0
        if up and self._reachable:
            self._caught_up_at = now
            if self.state not in ("waiting_for_events", "applying"):
                self.state = "following"
        rec = {"newest_version": newest, "lag_events": self._lag_events, "caught_up_at": self._caught_up_at,
               "updated_at": now, "state": self.state, "kafka_reachable": self._reachable,
               "log_topic": self.control_topic, "pid": os.getpid(), "started_at": self._started}
        with self.env.begin(write=True) as txn:
            txn.put(STATUS, json.dumps(rec, sort_keys=True).encode())
        if self._gauges is not None:
            g = self._gauges
            if cur is not None:
                g["current"].set(cur)
            if newest is not None:
                g["newest"].set(newest)
                g["lag_versions"].set(max(0, newest - (cur or 0)) if not self._is_bad(newest) else 0)
            g["lag_events"].set(float("nan") if self._lag_events is None else self._lag_events)
            g["lag_s"].set(0.0 if up and self._reachable else max(0.0, now - self._caught_up_at))


def _replica_gauges(registry) -> dict:
    """The replica's gauges (DESIGN §10 names, as ``mcrecall serve`` exposes them), in ``registry``."""
    from prometheus_client import Gauge

    return {
        "current": Gauge("mcrecall_model_version", "current model version on this replica", registry=registry),
        "newest": Gauge("mcrecall_replica_newest_version", "newest version on the model log", registry=registry),
        "lag_versions": Gauge("mcrecall_replica_lag_versions", "versions behind the log", registry=registry),
        "lag_events": Gauge("mcrecall_replica_lag_events", "events behind the event topic", registry=registry),
        "lag_s": Gauge("mcrecall_replica_lag_seconds", "seconds since last caught up", registry=registry),
    }


def _bad_versions(env) -> dict[int, dict]:
    out = {}
    with env.begin() as txn:
        cur = txn.cursor()
        ok = cur.set_range(BAD)
        while ok and cur.key().startswith(BAD):
            out[_U32.unpack(cur.key()[len(BAD):])[0]] = json.loads(cur.value())
            ok = cur.next()
    return out


STALE_S = 5.0  # a status record older than this: the replica process is not running


def replica_status(cfg) -> dict | None:
    """What ``mcrecall status`` and ``/readyz`` show of a replica; None on a primary.

    Returns
    -------
    dict or None
        ``role`` ("replica"), ``current_version``, ``newest_version`` (on the model log, as last
        seen), ``lag_versions`` (newest - current, 0 when up to date), ``lag_events`` (events on
        the topic not yet in this store; None when unknown), ``lag_s`` (seconds since this host
        was last caught up on both feeds: 0 while it is), plus ``state``, ``running``,
        ``kafka_reachable``, ``bad_versions``, ``updated_at``.
    """
    path = Path(cfg.data_dir) / "users.lmdb"
    if not (path / "data.mdb").exists():
        return None
    reg = ModelRegistry(cfg.data_dir, readonly=True)
    try:
        env = reg._open()
        if env is None:
            return None
        with env.begin() as txn:
            if txn.get(ROLE) != b"replica":
                return None
            raw = txn.get(STATUS)
        st = json.loads(raw) if raw else {}
        cur = reg.current_version()
        bad = _bad_versions(env)
    finally:
        reg.close()
    now = time.time()
    newest = st.get("newest_version")
    running = bool(st) and now - float(st.get("updated_at", 0)) < STALE_S
    lag_versions = 0 if newest is None or (cur is not None and cur >= newest) or newest in bad else (
        newest - (cur or 0))
    caught = float(st.get("caught_up_at", st.get("started_at", now)) or now)
    up = running and lag_versions == 0 and st.get("lag_events") == 0 and st.get("kafka_reachable", False)
    return {
        "role": "replica",
        "current_version": cur,
        "newest_version": newest,
        "lag_versions": int(lag_versions),
        "lag_events": st.get("lag_events"),
        "lag_s": 0.0 if up else round(max(0.0, now - caught), 1),
        "state": st.get("state", "never started") if running else "not running",
        "running": running,
        "kafka_reachable": st.get("kafka_reachable"),
        "log_topic": st.get("log_topic", cfg.model_log_topic),
        "bad_versions": {str(v): b.get("reason") for v, b in bad.items()},
        "updated_at": st.get("updated_at"),
    }


# ---------------------------------------------------------------------- command line
def add_replica_arguments(parser) -> None:
    from mcrecall.ingest.cli import add_metrics_arguments

    parser.add_argument("--no-events", action="store_true",
                        help="follow the model log only (no triple store: no fold-in, no exclude_seen)")
    add_metrics_arguments(parser)  # --metrics-port P: the worker's counters and the replica's lag


def run_replica(args, cfg) -> int:
    """``mcrecall replica``: follow the event topic and the model log until SIGTERM / Ctrl-C."""
    from mcrecall.core.datadir import check_data_dir
    from mcrecall.ingest.cli import start_metrics_from_args

    check_data_dir(cfg.data_dir, write=True, must_exist=False)
    server = start_metrics_from_args(args)
    rep = Replica(cfg, events=not getattr(args, "no_events", False),
                  metrics=server.metrics if server is not None else None)
    rep.install_signal_handlers()
    print(f"replica: {cfg.data_dir} <- events {cfg.kafka.topic} (group {cfg.kafka.group_id}) and model log "
          f"{cfg.model_log_topic} at {cfg.kafka.bootstrap_servers}; current version "
          f"{rep.registry.current_version()} (Ctrl-C stops)", flush=True)
    try:
        return rep.run()
    finally:
        if server is not None:
            server.close()


__all__ = ["Replica", "ReplicaError", "replica_status", "add_replica_arguments", "run_replica"]

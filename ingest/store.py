"""The triple store: ``<data_dir>/triples.lmdb`` (DESIGN §3).

Layout (LMDB named databases)::

    pairs     >II (user_idx, item_idx)  -> 1 byte action mask (see ingest.events)
    user_ids  external id (UTF-8)       -> >I dense index      users_by_idx  >I -> external id
    item_ids  external id (UTF-8)       -> >I dense index      items_by_idx  >I -> external id
    user_seq  >I user_idx               -> >Q store seq of the batch that last changed the user
    item_seq  >I item_idx               -> >Q store seq of the batch that last changed the item
    item_log  >QI (seq, item_idx)       -> b"" one entry per item, at its item_seq (changes since S
                                           = a cursor from S + 1: O(changed items), no scan)
    item_pairs >II (item_idx, user_idx) -> 1 byte action mask (the pairs, indexed by item)
    offsets   "<topic>\\0<partition>"     -> >q next offset to consume
    offset_notes "<topic>\\0<partition>"  -> JSON: the stored offset was found outside the
                                           partition's range (and what was done about it)
    meta      name                      -> >Q counter (seq, n_users, n_items, n_pairs, events, ...)
    item_attrs >I item_idx              -> version (20 bytes, ingest.attributes.version_key) + the
    user_attrs >I user_idx                 token set as a JSON array (an empty set is kept: its
                                           version stops an older message from coming back)
    attr_tokens b"i"|b"u" + token       -> >Q number of items | users holding the token
An attribute change stamps the entity like a pair change (``item_seq`` and its ``item_log``
entry, ``user_seq``), so refresh finds changed items through the same change log.

A batch of events and the Kafka offsets that cover it are written in ONE write transaction, so a
worker killed at any instant resumes from the stored offsets and ends exactly as if it had not
stopped. Dense indices are assigned inside that transaction, which makes several writer processes
safe (LMDB serialises writers).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import lmdb
import numpy as np

from mcrecall.core import lmdbenv
from mcrecall.core.datadir import disk_full_message, is_disk_full_error, lmdb_env_writable
from mcrecall.ingest.attributes import VERSION_BYTES, decode_tokens, encode_tokens
from mcrecall.ingest.events import mask_for_score, score_of

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_PAIR = struct.Struct(">II")
_SCORE_TABLE = np.array([score_of(m) for m in range(256)], dtype=np.float32)
_MASK_BYTES = [bytes((m,)) for m in range(256)]  # a stored mask value, by mask


def _be_keys(values: np.ndarray, width: int) -> list[bytes]:
    """Each value as a big-endian key of ``width`` bytes (a list of bytes, for LMDB)."""
    return np.frombuffer(values.astype(f">u{width}").tobytes(), dtype=f"V{width}").tolist()

# dlq_failed: bad events the dead-letter topic would not take (counted and logged, then skipped)
# rejected: bad backfill lines, written to F.rejected.jsonl (counted in bad_events too, never
# sent to the dead-letter topic)
COUNTERS = ("seq", "n_users", "n_items", "n_pairs", "events", "bad_events", "dlq_failed", "rejected",
            "attr_events", "attr_items", "attr_users", "attr_item_tokens", "attr_user_tokens")


class StoreFullError(RuntimeError):
    """The LMDB map or the disk is full; the transaction was rolled back (nothing half-written)."""


@dataclass(frozen=True)
class Snapshot:
    """All triples at one store sequence number, as dense numpy arrays."""

    user_idx: np.ndarray  # int32 (n,)
    item_idx: np.ndarray  # int32 (n,)
    score: np.ndarray  # float32 (n,), 0..4
    user_ids: list[str]  # dense user index -> external id
    item_ids: list[str]
    seq: int
    item_tokens: dict | None = None  # {dense item index: tuple of tokens} (non-empty sets only)
    user_tokens: dict | None = None
    # {(topic, partition): next offset} read in the same transaction: what the triples cover
    offsets: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.score.shape[0])


def open_env(path: Path, map_size: int, max_dbs: int = 32, readonly: bool = False) -> lmdb.Environment:
    """The process's shared environment at ``path`` (core/lmdbenv.py: reference-counted, the
    last :meth:`TripleStore.close` closes it; a writer asking for a larger map than the open
    one is refused). Each call must be matched by one ``lmdbenv.release(path)``."""

    def opener() -> lmdb.Environment:
        if readonly and not lmdb_env_writable(path):
            # read-only mount or permissions: no lock file can be written, so read without one
            # (nothing can be writing through this directory from here)
            return lmdb.open(str(path), max_dbs=max_dbs, subdir=True, readonly=True, lock=False)
        path.mkdir(parents=True, exist_ok=True)
        return lmdb.open(str(path), map_size=map_size, max_dbs=max_dbs, subdir=True,
                         max_readers=512, writemap=False, metasync=True, sync=True)

    return lmdbenv.acquire(path, opener, None if readonly else map_size)


def _offset_key(topic: str, partition: int) -> bytes:
    return topic.encode() + b"\0" + str(int(partition)).encode()


class TripleStore:
    """Scored (user, item) pairs, the id maps and the consumed Kafka offsets, in LMDB.

    Parameters
    ----------
    data_dir : directory holding ``triples.lmdb`` (created if missing).
    readonly : refuse writes through this handle, and do not create a missing store
        (``FileNotFoundError`` instead).
    map_size_gb : LMDB address space to reserve (a sparse file; not allocated up front).
    """

    def __init__(self, data_dir: str | os.PathLike, *, readonly: bool = False, map_size_gb: float = 8.0):
        self.path = Path(data_dir) / "triples.lmdb"
        self.readonly = readonly
        if readonly and not (self.path / "data.mdb").exists():
            raise FileNotFoundError(f"no triple store at {self.path} (nothing ingested yet?)")
        self.env = open_env(self.path, int(map_size_gb * (1 << 30)), readonly=readonly)
        self._released = False
        e = self.env
        self._pairs = e.open_db(b"pairs")
        self._user_ids = e.open_db(b"user_ids")
        self._users_by_idx = e.open_db(b"users_by_idx")
        self._item_ids = e.open_db(b"item_ids")
        self._items_by_idx = e.open_db(b"items_by_idx")
        self._user_seq = e.open_db(b"user_seq")
        self._item_seq = e.open_db(b"item_seq")
        self._item_log = e.open_db(b"item_log")
        self._item_pairs = e.open_db(b"item_pairs")
        self._offsets = e.open_db(b"offsets")
        self._meta = e.open_db(b"meta")
        self._offset_notes = self._optional_db(b"offset_notes")
        self._attrs = {"item": self._optional_db(b"item_attrs"), "user": self._optional_db(b"user_attrs")}
        self._attr_tokens = self._optional_db(b"attr_tokens")
        if not readonly:
            self._build_item_index()
        # id -> dense index, filled only from committed transactions (maps are append-only)
        self._user_cache: dict[str, int] = {}
        self._item_cache: dict[str, int] = {}

    # ------------------------------------------------------------------ writing
    def apply(
        self,
        pairs: Mapping[tuple[str, str], int],
        offsets: Mapping[tuple[str, int], int] | None = None,
        *,
        events: int = 0,
        bad_events: int = 0,
        dlq_failed: int = 0,
    ) -> dict:
        """OR the action masks of ``pairs`` into the store and record ``offsets``, atomically.

        Parameters
        ----------
        pairs : ``{(user_id, item_id): mask}`` already merged within the batch.
        offsets : ``{(topic, partition): next_offset}``; a stored offset only moves forward.
        events, bad_events : counters to add.
        dlq_failed : bad events (counted in ``bad_events`` too) that the dead-letter topic did not
            take; counted in the transaction that moves the offset past them.

        Returns
        -------
        dict with ``changed`` (pairs whose score or existence changed) and ``seq``.
        """
        users = [u for u, _ in pairs]
        items = [i for _, i in pairs]
        return self.apply_events(users, items, list(pairs.values()), offsets,
                                 events=events, bad_events=bad_events, dlq_failed=dlq_failed)

    def apply_events(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        bits: Sequence[int] | np.ndarray,
        offsets: Mapping[tuple[str, int], int] | None = None,
        *,
        events: int | None = None,
        bad_events: int = 0,
        dlq_failed: int = 0,
        attributes: Sequence | None = None,
        rejected: int = 0,
    ) -> dict:
        """OR each event's action bits into its (user, item) pair and record ``offsets``, in one
        write transaction.

        Event ``k`` is ``(user_ids[k], item_ids[k], bits[k])``; a pair may repeat. For every
        pair p of the batch (M_b(p) = OR of its events' bits, M_s(p) = the stored mask, 0 if none)::

            M_s(p) <- M_s(p) | M_b(p)        # changed if p is new or M_s(p) grew

        A user or item new to the store gets the next dense index in order of first appearance
        in the batch; each changed pair's user and item are stamped with this batch's seq (the
        item moves its one change-log entry there). The work per event is done by numpy and by
        LMDB's multi-key calls on sorted keys, not by Python code per pair.

        Parameters
        ----------
        user_ids, item_ids : canonical ids (:mod:`mcrecall.core.ids`), one per event.
        bits : action masks (``mcrecall.ingest.events.ACTION_BITS``), one per event.
        offsets : ``{(topic, partition): next_offset}``; a stored offset only moves forward.
        events : counter to add (default ``len(user_ids)``); bad_events and dlq_failed likewise
            (see :meth:`apply`).
        attributes : ``[(AttributeUpdate, version)]`` (:mod:`mcrecall.ingest.attributes`,
            ``version = version_key(ts, partition, offset)``): each entity keeps the set of its
            largest (version, tokens); counted in ``attr_events``.

        Returns
        -------
        dict with ``changed`` (pairs whose score or existence changed) and ``seq``.
        """
        if self.readonly:
            raise PermissionError("this TripleStore handle is read-only")
        n = len(user_ids)
        if len(item_ids) != n or len(bits) != n:
            raise ValueError(f"one user id, item id and mask per event: got {n}, {len(item_ids)}, {len(bits)}")
        new_users: dict[str, int] = {}
        new_items: dict[str, int] = {}
        try:
            with self.env.begin(write=True) as txn:
                counters = {name: self._get_counter(txn, name) for name in COUNTERS}
                seq = counters["seq"] + 1
                changed = 0
                if n:
                    u = self._dense(txn, user_ids, self._user_cache, new_users, self._user_ids,
                                    self._users_by_idx, counters, "n_users")
                    i = self._dense(txn, item_ids, self._item_cache, new_items, self._item_ids,
                                    self._items_by_idx, counters, "n_items")
                    changed = self._merge_pairs(txn, u, i, np.asarray(bits, dtype=np.uint8),
                                                _U64.pack(seq), counters)
                changed_attrs = 0
                if attributes:
                    changed_attrs = self._merge_attributes(txn, attributes, _U64.pack(seq), counters,
                                                           new_users, new_items)
                for (topic, partition), offset in (offsets or {}).items():
                    k = _offset_key(topic, partition)
                    old = txn.get(k, db=self._offsets)
                    # Two workers may briefly both own a partition during a rebalance; merges are
                    # idempotent and each writer covers a contiguous range from a stored offset,
                    # so keeping the maximum never leaves a gap.
                    if old is None or _I64.unpack(old)[0] < offset:
                        txn.put(k, _I64.pack(int(offset)), db=self._offsets)
                if changed or changed_attrs:
                    counters["seq"] = seq
                counters["attr_events"] += len(attributes or ())
                counters["events"] += int(n if events is None else events)
                counters["bad_events"] += int(bad_events)
                counters["dlq_failed"] += int(dlq_failed)
                counters["rejected"] += int(rejected)
                for name, value in counters.items():
                    txn.put(name.encode(), _U64.pack(value), db=self._meta)
        except lmdb.MapFullError as e:
            raise StoreFullError(
                f"triple store {self.path} is full (LMDB map size reached; raise [store] map_size_gb): {e}"
            ) from None
        except (lmdb.Error, OSError) as e:
            if is_disk_full_error(e, self.path):
                raise StoreFullError(disk_full_message(self.path, e, "this batch")) from None
            raise
        # committed: the new indices are now real
        self._user_cache.update(new_users)
        self._item_cache.update(new_items)
        return {"changed": changed, "changed_attributes": changed_attrs, "seq": counters["seq"]}

    def _merge_attributes(self, txn, updates, seq_bytes: bytes, counters: dict, new_users: dict,
                          new_items: dict) -> int:
        """Keep, per entity, the attribute set of the largest (version, tokens) among the batch's
        updates and the stored one; stamp changed entities with ``seq_bytes``. Returns the
        number of entities whose stored set changed."""
        best: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        for up, version in updates:
            cand = (bytes(version), encode_tokens(up.tokens))
            key = (up.kind, up.entity_id)
            if key not in best or cand > best[key]:
                best[key] = cand
        n_changed = 0
        for kind in ("item", "user"):
            ents = [e for (k, e) in best if k == kind]
            if not ents:
                continue
            if kind == "item":
                dense = self._dense(txn, ents, self._item_cache, new_items, self._item_ids,
                                    self._items_by_idx, counters, "n_items")
            else:
                dense = self._dense(txn, ents, self._user_cache, new_users, self._user_ids,
                                    self._users_by_idx, counters, "n_users")
            db, prefix = self._attrs[kind], kind[0].encode()
            stamped = []
            for ent, idx in zip(ents, dense.tolist(), strict=False):
                version, enc = best[(kind, ent)]
                ikey = _U32.pack(idx)
                old = txn.get(ikey, db=db)
                if old is not None and (bytes(old[:VERSION_BYTES]), bytes(old[VERSION_BYTES:])) >= (version, enc):
                    continue  # the stored message is the later one (or this very one again)
                txn.put(ikey, version + enc, db=db)
                old_tokens = decode_tokens(old[VERSION_BYTES:]) if old is not None else ()
                new_tokens = decode_tokens(enc)
                if old_tokens == new_tokens:
                    continue  # a newer message with the same set: nothing the model sees changed
                counters[f"attr_{kind}s"] += (len(new_tokens) > 0) - (len(old_tokens) > 0)
                for tok in set(old_tokens) - set(new_tokens):
                    tkey = prefix + tok.encode("utf-8")
                    c = _U64.unpack(txn.get(tkey, db=self._attr_tokens))[0] - 1
                    if c:
                        txn.put(tkey, _U64.pack(c), db=self._attr_tokens)
                    else:
                        txn.delete(tkey, db=self._attr_tokens)
                        counters[f"attr_{kind}_tokens"] -= 1
                for tok in set(new_tokens) - set(old_tokens):
                    tkey = prefix + tok.encode("utf-8")
                    raw = txn.get(tkey, db=self._attr_tokens)
                    if raw is None:
                        counters[f"attr_{kind}_tokens"] += 1
                    txn.put(tkey, _U64.pack((_U64.unpack(raw)[0] if raw is not None else 0) + 1),
                            db=self._attr_tokens)
                stamped.append(ikey)
            n_changed += len(stamped)
            if not stamped:
                continue
            stamped.sort()
            if kind == "user":
                txn.cursor(db=self._user_seq).putmulti(zip(stamped, repeat(seq_bytes)))
            else:
                for ikey, old_seq in txn.cursor(db=self._item_seq).getmulti(stamped):
                    txn.delete(bytes(old_seq) + bytes(ikey), db=self._item_log)
                txn.cursor(db=self._item_seq).putmulti(zip(stamped, repeat(seq_bytes)))
                txn.cursor(db=self._item_log).putmulti(zip([seq_bytes + k for k in stamped], repeat(b"")))
        return n_changed

    def _dense(self, txn, ext_ids, cache, new, by_id_db, by_idx_db, counters, counter) -> np.ndarray:
        """Dense index of each id (uint64 array): committed cache, stored, or new (in ``new``).

        Ids new to the cache are looked up in the store (another handle or writer may have
        added them) and the rest get the next indices in order of first appearance, by passes
        over all of them at once (a backfill meets ~150,000 new ids per million events)."""
        dense = np.array(list(map(cache.get, ext_ids, repeat(-1))), dtype=np.int64)  # most are known
        missing = np.flatnonzero(dense < 0)
        if len(missing):
            missing_ids = list(map(ext_ids.__getitem__, missing.tolist()))
            unseen = list(dict.fromkeys(missing_ids))  # in order of first appearance
            keys = list(map(str.encode, unseen))  # UTF-8
            stored = dict(txn.cursor(db=by_id_db).getmulti(sorted(keys)))
            found = {i: _U32.unpack(stored[k])[0] for i, k in zip(unseen, keys, strict=False) if k in stored}
            fresh = [(i, k) for i, k in zip(unseen, keys, strict=False) if k not in stored]
            if fresh:
                first = counters[counter]
                counters[counter] += len(fresh)
                idx_keys = _be_keys(np.arange(first, first + len(fresh), dtype=np.uint64), 4)
                fresh_keys = [k for _, k in fresh]
                txn.cursor(db=by_id_db).putmulti(sorted(zip(fresh_keys, idx_keys, strict=False)))
                txn.cursor(db=by_idx_db).putmulti(zip(idx_keys, fresh_keys, strict=False))  # increasing keys
                found.update(zip([i for i, _ in fresh], range(first, first + len(fresh)), strict=False))
            new.update(found)
            dense[missing] = list(map(found.__getitem__, missing_ids))
        return dense.astype(np.uint64)

    def _merge_pairs(self, txn, u: np.ndarray, i: np.ndarray, bits: np.ndarray, seq_bytes: bytes,
                     counters: dict) -> int:
        """OR the events' masks into ``pairs``/``item_pairs``, stamp changed users and items with
        ``seq_bytes``; return the number of changed pairs. The pair key ``>II (u, i)`` is the
        big-endian bytes of ``u << 32 | i``, so a uint64 sort is the key order."""
        key = (u << np.uint64(32)) | i
        order = np.argsort(key, kind="stable")
        key, bits = key[order], bits[order]
        starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
        keys = key[starts]
        masks = np.bitwise_or.reduceat(bits, starts)
        key_bytes = _be_keys(keys, 8)
        stored = txn.cursor(db=self._pairs).getmulti(key_bytes)  # [(key, mask)] of stored pairs
        old = np.zeros(len(keys), dtype=np.uint8)
        exists = np.zeros(len(keys), dtype=bool)
        if stored:
            at = np.searchsorted(keys, np.frombuffer(b"".join(k for k, _ in stored), dtype=">u8"))
            old[at] = np.frombuffer(b"".join(v[:1] for _, v in stored), dtype=np.uint8)
            exists[at] = True
        new = old | masks
        changed = np.flatnonzero(~exists | (new != old))
        if not len(changed):
            return 0
        counters["n_pairs"] += int(len(keys) - np.count_nonzero(exists))
        ck, cm = keys[changed], new[changed]
        txn.cursor(db=self._pairs).putmulti(
            zip([key_bytes[j] for j in changed.tolist()], map(_MASK_BYTES.__getitem__, cm.tolist()), strict=False))
        low = np.uint64(0xFFFFFFFF)
        by_item = ((ck & low) << np.uint64(32)) | (ck >> np.uint64(32))
        o = np.argsort(by_item)
        txn.cursor(db=self._item_pairs).putmulti(
            zip(_be_keys(by_item[o], 8), map(_MASK_BYTES.__getitem__, cm[o].tolist()), strict=False))
        users = _be_keys(np.unique(ck >> np.uint64(32)), 4)
        txn.cursor(db=self._user_seq).putmulti(zip(users, repeat(seq_bytes)))
        items = _be_keys(np.unique(ck & low), 4)
        for ikey, old_seq in txn.cursor(db=self._item_seq).getmulti(items):
            txn.delete(bytes(old_seq) + bytes(ikey), db=self._item_log)  # the item's old entry
        txn.cursor(db=self._item_seq).putmulti(zip(items, repeat(seq_bytes)))
        txn.cursor(db=self._item_log).putmulti(zip([seq_bytes + k for k in items], repeat(b"")))
        return len(changed)

    def put_scores(self, user_ids: Sequence, item_ids: Sequence, scores: Sequence[int]) -> dict:
        """Write triples directly (tools and tests); merged with what is stored like events."""
        pairs: dict[tuple[str, str], int] = {}
        for u, i, s in zip(user_ids, item_ids, scores, strict=False):
            key = (str(u), str(i))
            pairs[key] = pairs.get(key, 0) | mask_for_score(int(s))
        return self.apply(pairs)

    def _build_item_index(self) -> None:
        """Index pairs by item once, for a store written before ``item_pairs`` existed.

        Items changed before this point have no change-log entry (the next training covers them).
        """
        with self.env.begin() as txn:
            if txn.get(b"item_index", db=self._meta) is not None:
                return
        with self.env.begin(write=True) as txn:
            if txn.get(b"item_index", db=self._meta) is not None:  # another writer did it
                return
            for k, v in txn.cursor(db=self._pairs):
                u, i = _PAIR.unpack(k)
                txn.put(_PAIR.pack(i, u), bytes(v), db=self._item_pairs)
            txn.put(b"item_index", _U64.pack(1), db=self._meta)

    def _optional_db(self, name: bytes):
        """A named database added after the first release: a read-only handle on an older store
        has none (None), a writable one creates it."""
        if not self.readonly:
            return self.env.open_db(name)
        try:
            return self.env.open_db(name, create=False)
        except (lmdb.NotFoundError, lmdb.ReadonlyError):
            return None

    # ------------------------------------------------------------------ offsets out of range
    def note_offset(self, topic: str, partition: int, note: Mapping | None) -> None:
        """Record (``None``: clear) what was found about a partition's stored offset, for
        ``mcrecall status``; the offset itself is not changed."""
        if self.readonly:
            raise PermissionError("this TripleStore handle is read-only")
        k = _offset_key(topic, partition)
        with self.env.begin(write=True) as txn:
            if note is None:
                txn.delete(k, db=self._offset_notes)
            else:
                txn.put(k, json.dumps(dict(note), sort_keys=True).encode(), db=self._offset_notes)

    def reset_offset(self, topic: str, partition: int, expected: int, offset: int, note: Mapping) -> bool:
        """Move a stored offset to ``offset`` (backwards too) if it still is ``expected``, and
        record ``note``, in one transaction; False (nothing written) if another writer moved it.

        The only way an offset moves backwards: after the partition's range was checked
        (``[kafka] offset_reset = earliest | latest``).
        """
        if self.readonly:
            raise PermissionError("this TripleStore handle is read-only")
        k = _offset_key(topic, partition)
        with self.env.begin(write=True) as txn:
            old = txn.get(k, db=self._offsets)
            if old is None or _I64.unpack(old)[0] != int(expected):
                return False
            txn.put(k, _I64.pack(int(offset)), db=self._offsets)
            txn.put(k, json.dumps(dict(note), sort_keys=True).encode(), db=self._offset_notes)
        return True

    def offset_notes(self) -> dict[tuple[str, int], dict]:
        """``{(topic, partition): note}`` recorded by :meth:`note_offset` / :meth:`reset_offset`."""
        if self._offset_notes is None:
            return {}
        out = {}
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self._offset_notes):
                t, _, p = bytes(k).rpartition(b"\0")
                out[(t.decode(), int(p))] = json.loads(bytes(v))
        return out

    def _get_counter(self, txn, name: str) -> int:
        raw = txn.get(name.encode(), db=self._meta)
        return _U64.unpack(raw)[0] if raw is not None else 0

    # ------------------------------------------------------------------ reading
    @property
    def seq(self) -> int:
        with self.env.begin() as txn:
            return self._get_counter(txn, "seq")

    def counts(self) -> dict:
        """Counters: pairs, users, items, events, bad_events (all bad events), dlq_failed,
        rejected (bad backfill lines: in F.rejected.jsonl, not the dead-letter topic), seq."""
        with self.env.begin() as txn:
            c = {name: self._get_counter(txn, name) for name in COUNTERS}
        return {"pairs": c["n_pairs"], "users": c["n_users"], "items": c["n_items"],
                "events": c["events"], "bad_events": c["bad_events"], "dlq_failed": c["dlq_failed"],
                "rejected": c["rejected"], "seq": c["seq"], "attribute_events": c["attr_events"],
                "items_with_attributes": c["attr_items"], "users_with_attributes": c["attr_users"],
                "item_tokens": c["attr_item_tokens"], "user_tokens": c["attr_user_tokens"]}

    def offsets(self, topic: str | None = None) -> dict[tuple[str, int], int]:
        """Stored next offsets ``{(topic, partition): offset}`` (optionally for one topic)."""
        out = {}
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self._offsets):
                t, _, p = bytes(k).rpartition(b"\0")
                name = t.decode()
                if topic is None or name == topic:
                    out[(name, int(p))] = _I64.unpack(v)[0]
        return out

    def snapshot(self) -> Snapshot:
        """All triples as numpy arrays, read in one consistent transaction."""
        with self.env.begin(buffers=False) as txn:
            seq = self._get_counter(txn, "seq")
            cur = txn.cursor(db=self._pairs)
            keys = b"".join(cur.iternext(keys=True, values=False))
            cur = txn.cursor(db=self._pairs)
            masks = b"".join(cur.iternext(keys=False, values=True))
            user_ids = [v.decode("utf-8") for v in txn.cursor(db=self._users_by_idx).iternext(keys=False)]
            item_ids = [v.decode("utf-8") for v in txn.cursor(db=self._items_by_idx).iternext(keys=False)]
            item_tokens, user_tokens = self._read_tokens(txn, "item"), self._read_tokens(txn, "user")
            offsets = self._read_offsets(txn)
        idx = np.frombuffer(keys, dtype=">u4").reshape(-1, 2).astype(np.int32)
        score = _SCORE_TABLE[np.frombuffer(masks, dtype=np.uint8)]
        return Snapshot(np.ascontiguousarray(idx[:, 0]), np.ascontiguousarray(idx[:, 1]),
                        score, user_ids, item_ids, seq, item_tokens, user_tokens, offsets=offsets)

    def _read_tokens(self, txn, kind: str) -> dict:
        db = self._attrs[kind]
        if db is None:
            return {}
        out = {}
        for k, v in txn.cursor(db=db):
            tokens = decode_tokens(bytes(v)[VERSION_BYTES:])
            if tokens:
                out[_U32.unpack(k)[0]] = tokens
        return out

    def attributes(self, kind: str) -> dict[str, tuple[str, ...]]:
        """``{external id: tokens}`` of every ``"item"`` or ``"user"`` with a non-empty set."""
        by_idx = self._items_by_idx if kind == "item" else self._users_by_idx
        with self.env.begin() as txn:
            return {bytes(txn.get(_U32.pack(j), db=by_idx)).decode("utf-8"): t
                    for j, t in self._read_tokens(txn, kind).items()}

    def entity_attributes(self, kind: str, ext_ids: Sequence[str]) -> list[tuple[str, ...]]:
        """The token set of each id (``()`` for none), one transaction."""
        ids_db = self._item_ids if kind == "item" else self._user_ids
        db = self._attrs[kind]
        out = []
        with self.env.begin() as txn:
            for e in ext_ids:
                raw = txn.get(str(e).encode("utf-8"), db=ids_db)
                v = txn.get(bytes(raw), db=db) if (raw is not None and db is not None) else None
                out.append(decode_tokens(bytes(v)[VERSION_BYTES:]) if v is not None else ())
        return out

    def token_counts(self, kind: str) -> dict[str, int]:
        """``{token: number of entities of this kind holding it}``."""
        if self._attr_tokens is None:
            return {}
        prefix = kind[0].encode()
        out = {}
        with self.env.begin() as txn:
            cur = txn.cursor(db=self._attr_tokens)
            if cur.set_range(prefix):
                for k, v in cur:
                    k = bytes(k)
                    if not k.startswith(prefix):
                        break
                    out[k[1:].decode("utf-8")] = _U64.unpack(v)[0]
        return out

    def _read_offsets(self, txn, topic: str | None = None) -> dict[tuple[str, int], int]:
        out = {}
        for k, v in txn.cursor(db=self._offsets):
            t, _, p = bytes(k).rpartition(b"\0")
            name = t.decode()
            if topic is None or name == topic:
                out[(name, int(p))] = _I64.unpack(bytes(v))[0]
        return out

    def position(self) -> tuple[int, dict[tuple[str, int], int]]:
        """``(seq, offsets)`` read in one transaction: the store seq and the Kafka offsets its
        triples cover at that seq (a replica maps a version's training offsets to its own seq)."""
        with self.env.begin() as txn:
            return self._get_counter(txn, "seq"), self._read_offsets(txn)

    def copy_consistent(self, dest_dir: str | os.PathLike) -> dict:
        """``mcrecall snapshot``: a compacted copy of the store as ``<dest_dir>/triples.lmdb``,
        taken inside ONE read transaction with the seq, counters and offsets read in it (the
        copy holds exactly those offsets, so a worker started on it resumes from them).
        Returns ``{"seq", "offsets", "counts"}`` of the copy."""
        dest = Path(dest_dir) / "triples.lmdb"
        dest.mkdir(parents=True, exist_ok=False)
        with self.env.begin() as txn:
            seq = self._get_counter(txn, "seq")
            offsets = self._read_offsets(txn)
            counts = {name: self._get_counter(txn, name) for name in COUNTERS}
            self.env.copy(str(dest), compact=True, txn=txn)
        return {"seq": seq, "offsets": offsets, "counts": counts}

    def user_history(self, user_id: str) -> tuple[list[str], np.ndarray]:
        """One user's items and scores (``([], empty)`` for an unknown user)."""
        with self.env.begin() as txn:
            raw = txn.get(str(user_id).encode("utf-8"), db=self._user_ids)
            if raw is None:
                return [], np.zeros(0, dtype=np.float32)
            prefix = raw  # pair keys start with the 4-byte user index
            items, masks = [], []
            cur = txn.cursor(db=self._pairs)
            if cur.set_range(prefix):
                for k, v in cur:
                    if k[:4] != prefix:
                        break
                    items.append(txn.get(k[4:8], db=self._items_by_idx).decode("utf-8"))
                    masks.append(v[0])
        return items, _SCORE_TABLE[np.array(masks, dtype=np.uint8)]

    def user_seq(self, user_id: str) -> int:
        """Store seq of the last batch that changed ``user_id``'s triples (0 if never)."""
        return self._seq(user_id, self._user_ids, self._user_seq)

    def _seq(self, ext_id: str, ids_db, seq_db) -> int:
        # external id -> dense index (ids_db) -> seq of its last change (seq_db)
        with self.env.begin() as txn:
            raw = txn.get(str(ext_id).encode("utf-8"), db=ids_db)
            if raw is None:
                return 0
            s = txn.get(raw, db=seq_db)
        return _U64.unpack(s)[0] if s is not None else 0

    def changed_items(self, since_seq: int) -> tuple[list[str], int]:
        """Items whose triples changed in a batch after store seq ``since_seq``, and the seq now.

        Reads only the change log from ``since_seq + 1``: O(changed items), one transaction.
        """
        out = []
        with self.env.begin() as txn:
            seq = self._get_counter(txn, "seq")
            cur = txn.cursor(db=self._item_log)
            if cur.set_range(_U64.pack(int(since_seq) + 1)):
                for k in cur.iternext(keys=True, values=False):
                    raw = txn.get(bytes(k[8:12]), db=self._items_by_idx)
                    out.append(bytes(raw).decode("utf-8"))
        return out, seq

    def item_histories(self, item_ids: Sequence[str]) -> list[tuple[list[str], np.ndarray]]:
        """Each item's users and scores (``([], empty)`` for an unknown item), one transaction.

        Cost: O(the items' triples) through the by-item index.
        """
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self._item_pairs)
            for item_id in item_ids:
                raw = txn.get(str(item_id).encode("utf-8"), db=self._item_ids)
                users, masks = [], []
                if raw is not None:
                    prefix = bytes(raw)
                    if cur.set_range(prefix):
                        for k, v in cur:
                            if k[:4] != prefix:
                                break
                            users.append(bytes(txn.get(k[4:8], db=self._users_by_idx)).decode("utf-8"))
                            masks.append(v[0])
                out.append((users, _SCORE_TABLE[np.array(masks, dtype=np.uint8)]))
        return out

    def item_seq(self, item_id: str) -> int:
        """Store seq of the last batch that changed ``item_id``'s triples (0 if never)."""
        return self._seq(item_id, self._item_ids, self._item_seq)

    def iter_triples(self, batch: int = 65536) -> Iterable[tuple[str, str, int]]:
        """Yield ``(user_id, item_id, score)`` with external ids, in (user, item) index order."""
        snap = self.snapshot()
        for start in range(0, len(snap), batch):
            for u, i, s in zip(snap.user_idx[start:start + batch].tolist(),
                               snap.item_idx[start:start + batch].tolist(),
                               snap.score[start:start + batch].tolist(), strict=False):
                yield snap.user_ids[u], snap.item_ids[i], int(s)

    def backup(self, dest_dir: str | os.PathLike) -> Path:
        """A consistent copy of the store as ``<dest_dir>/triples.lmdb`` (safe while writers run)."""
        dest = Path(dest_dir) / "triples.lmdb"
        dest.mkdir(parents=True, exist_ok=False)
        self.env.copy(str(dest), compact=True)
        return dest

    def close(self) -> None:
        """Release this handle; the process's last handle on the store closes the environment
        (core/lmdbenv.py). Idempotent; the handle is unusable afterwards."""
        if not self._released:
            self._released = True
            lmdbenv.release(self.path)

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
    meta      name                      -> >Q counter (seq, n_users, n_items, n_pairs, events, ...)

A batch of events and the Kafka offsets that cover it are written in ONE write transaction, so a
worker killed at any instant resumes from the stored offsets and ends exactly as if it had not
stopped. Dense indices are assigned inside that transaction, which makes several writer processes
safe (LMDB serialises writers).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import lmdb
import numpy as np

from ingest.events import mask_for_score, score_of
from core import lmdbenv
from core.datadir import lmdb_env_writable

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_PAIR = struct.Struct(">II")
_SCORE_TABLE = np.array([score_of(m) for m in range(256)], dtype=np.float32)

COUNTERS = ("seq", "n_users", "n_items", "n_pairs", "events", "bad_events")


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

    def __len__(self) -> int:
        return int(self.score.shape[0])


def open_env(path: Path, map_size: int, max_dbs: int = 16, readonly: bool = False) -> lmdb.Environment:
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
    ) -> dict:
        """OR the action masks of ``pairs`` into the store and record ``offsets``, atomically.

        Parameters
        ----------
        pairs : ``{(user_id, item_id): mask}`` already merged within the batch.
        offsets : ``{(topic, partition): next_offset}``; a stored offset only moves forward.
        events, bad_events : counters to add.

        Returns
        -------
        dict with ``changed`` (pairs whose score or existence changed) and ``seq``.
        """
        if self.readonly:
            raise PermissionError("this TripleStore handle is read-only")
        new_users: dict[str, int] = {}
        new_items: dict[str, int] = {}
        try:
            with self.env.begin(write=True) as txn:
                counters = {name: self._get_counter(txn, name) for name in COUNTERS}
                seq = counters["seq"] + 1
                changed_users: set[int] = set()
                changed_items: set[int] = set()
                changed = 0
                seq_bytes = _U64.pack(seq)
                ucache, icache, pairs_db, pack = self._user_cache, self._item_cache, self._pairs, _PAIR.pack
                for (user_id, item_id), bits in pairs.items():
                    u = ucache.get(user_id)
                    if u is None:
                        u = self._index(txn, user_id, new_users, self._user_ids,
                                        self._users_by_idx, counters, "n_users")
                    i = icache.get(item_id)
                    if i is None:
                        i = self._index(txn, item_id, new_items, self._item_ids,
                                        self._items_by_idx, counters, "n_items")
                    key = pack(u, i)
                    old = txn.get(key, db=pairs_db)
                    old_mask = old[0] if old is not None else 0
                    new_mask = old_mask | bits
                    if old is None or new_mask != old_mask:
                        txn.put(key, bytes((new_mask,)), db=self._pairs)
                        if old is None:
                            counters["n_pairs"] += 1
                        changed += 1
                        if u not in changed_users:
                            changed_users.add(u)
                            txn.put(_U32.pack(u), seq_bytes, db=self._user_seq)
                        txn.put(pack(i, u), bytes((new_mask,)), db=self._item_pairs)
                        if i not in changed_items:
                            changed_items.add(i)
                            self._log_item(txn, i, seq_bytes)
                for (topic, partition), offset in (offsets or {}).items():
                    k = _offset_key(topic, partition)
                    old = txn.get(k, db=self._offsets)
                    # Two workers may briefly both own a partition during a rebalance; merges are
                    # idempotent and each writer covers a contiguous range from a stored offset,
                    # so keeping the maximum never leaves a gap.
                    if old is None or _I64.unpack(old)[0] < offset:
                        txn.put(k, _I64.pack(int(offset)), db=self._offsets)
                if changed:
                    counters["seq"] = seq
                counters["events"] += int(events)
                counters["bad_events"] += int(bad_events)
                for name, value in counters.items():
                    txn.put(name.encode(), _U64.pack(value), db=self._meta)
        except lmdb.MapFullError as e:
            raise StoreFullError(
                f"triple store {self.path} is full (LMDB map size reached; raise [store] map_size_gb): {e}"
            ) from None
        except lmdb.Error as e:
            if "No space left" in str(e) or getattr(e, "errno", None) == 28:
                raise StoreFullError(f"disk full while writing {self.path}: {e}") from None
            raise
        except OSError as e:
            if e.errno == 28:
                raise StoreFullError(f"disk full while writing {self.path}: {e}") from None
            raise
        # committed: the new indices are now real
        self._user_cache.update(new_users)
        self._item_cache.update(new_items)
        return {"changed": changed, "seq": counters["seq"]}

    def put_scores(self, user_ids: Sequence, item_ids: Sequence, scores: Sequence[int]) -> dict:
        """Write triples directly (tools and tests); merged with what is stored like events."""
        pairs: dict[tuple[str, str], int] = {}
        for u, i, s in zip(user_ids, item_ids, scores):
            key = (str(u), str(i))
            pairs[key] = pairs.get(key, 0) | mask_for_score(int(s))
        return self.apply(pairs)

    def _index(self, txn, ext_id, new, by_id_db, by_idx_db, counters, counter) -> int:
        """Dense index of an id missing from the committed cache: this batch's, stored, or new."""
        idx = new.get(ext_id)
        if idx is not None:
            return idx
        key = ext_id.encode("utf-8")
        raw = txn.get(key, db=by_id_db)
        if raw is not None:
            idx = _U32.unpack(raw)[0]
        else:
            idx = counters[counter]
            counters[counter] += 1
            txn.put(key, _U32.pack(idx), db=by_id_db)
            txn.put(_U32.pack(idx), key, db=by_idx_db)
        new[ext_id] = idx
        return idx

    def _log_item(self, txn, i: int, seq_bytes: bytes) -> None:
        """Move item ``i``'s one change-log entry to this batch's seq (same transaction)."""
        ikey = _U32.pack(i)
        old = txn.get(ikey, db=self._item_seq)
        if old is not None:
            txn.delete(bytes(old) + ikey, db=self._item_log)
        txn.put(ikey, seq_bytes, db=self._item_seq)
        txn.put(seq_bytes + ikey, b"", db=self._item_log)

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

    def _get_counter(self, txn, name: str) -> int:
        raw = txn.get(name.encode(), db=self._meta)
        return _U64.unpack(raw)[0] if raw is not None else 0

    # ------------------------------------------------------------------ reading
    @property
    def seq(self) -> int:
        with self.env.begin() as txn:
            return self._get_counter(txn, "seq")

    def counts(self) -> dict:
        """Counters: pairs, users, items, events, bad_events, seq."""
        with self.env.begin() as txn:
            c = {name: self._get_counter(txn, name) for name in COUNTERS}
        return {"pairs": c["n_pairs"], "users": c["n_users"], "items": c["n_items"],
                "events": c["events"], "bad_events": c["bad_events"], "seq": c["seq"]}

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
        idx = np.frombuffer(keys, dtype=">u4").reshape(-1, 2).astype(np.int32)
        score = _SCORE_TABLE[np.frombuffer(masks, dtype=np.uint8)]
        return Snapshot(np.ascontiguousarray(idx[:, 0]), np.ascontiguousarray(idx[:, 1]),
                        score, user_ids, item_ids, seq)

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
                               snap.score[start:start + batch].tolist()):
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

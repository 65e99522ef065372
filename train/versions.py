"""Model versions in ``<data_dir>/users.lmdb`` (DESIGN §4; docs/interfaces.md "Model versions").

Layout (main LMDB database, no named sub-databases, so a reader never holds a handle to a
database that a writer dropped):

=====================================  =====================================================
key                                    value
=====================================  =====================================================
``current``                            ASCII decimal version number (the ONE pointer)
``meta/`` + BE uint32 N                metadata JSON of version N (written last: complete)
``user/`` + BE uint32 N + user id      float32 little-endian vector
``allocated``                          ASCII decimal: the highest version number handed out
``inflight/`` + BE uint32 N            JSON {pid, host, at}: N allocated, not yet published
``refresh/`` + BE uint32 N              JSON of version N's last item refresh (train/refresh.py)
``tokens/`` + BE uint32 N + kind + ``/vocab``   JSON array of the token strings (kind ``item``/``user``)
``tokens/`` + BE uint32 N + kind + ``/emb``     float32 LE (n_tokens, dim) token embeddings, published space
=====================================  =====================================================

This registry is the authority on which versions exist and are complete — not the vector
store's own bookkeeping (Milvus loses collection properties on a server restart). The
metadata of a version carries its vector-store spec (``vector_store``), so readers can search
the version without asking the store whether it is finalized.

Version numbers only grow: :meth:`ModelRegistry.allocate_version` hands out the next one in one
write transaction and records it as in flight; :meth:`ModelRegistry.drop` refuses the current
version and versions in flight (unless the caller, holding the publisher lock, knows their
publisher is dead).

A version is listed by :meth:`ModelRegistry.versions` only once its metadata exists; user rows
of a version without metadata are leftovers of a crashed run and are removed by the next one.
Readers (serve) open with ``readonly=True``; a missing users.lmdb reads as "no version yet".
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Iterable

import lmdb
import numpy as np

from mcrecall.core import lmdbenv
from mcrecall.core.datadir import lmdb_env_writable

CURRENT = b"current"
META = b"meta/"
USER = b"user/"
ALLOCATED = b"allocated"
INFLIGHT = b"inflight/"
REFRESH = b"refresh/"
TOKENS = b"tokens/"
HOLDOUT = b"holdout/"  # sorted <u8 pair keys of the version's held-out pairs (train/gate.py)
DEFAULT_MAP_SIZE = 8 << 30


def _acquire(path: Path, map_size: int, writer: bool = True) -> lmdb.Environment:
    """The process's shared ``users.lmdb`` environment (core/lmdbenv.py: one per path,
    reference-counted; a writer's ``map_size`` is checked against an open one's). It is opened read-write where the
    directory allows it (LMDB readers need the lock file anyway); ``readonly`` is enforced by
    ModelRegistry itself."""

    def opener() -> lmdb.Environment:
        writable = lmdb_env_writable(path) if path.exists() else True
        # not writable (read-only mount or permissions): no lock file either
        return lmdb.open(str(path), map_size=map_size, max_readers=512,
                         readahead=False, readonly=not writable, lock=writable)

    return lmdbenv.acquire(path, opener, map_size if writer else None)


def _release(path: Path) -> None:
    lmdbenv.release(path)


def _ver(version: int) -> bytes:
    if not isinstance(version, (int, np.integer)) or not 0 < int(version) < 2**32:
        raise ValueError(f"version must be an integer in 1..2^32-1, got {version!r}")
    return struct.pack(">I", int(version))


def _inflight_record() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                       "at": time.time()}).encode()


def _highest(txn, prefix: bytes) -> int:
    """The highest version number under ``prefix`` (0 if none): the last key before the end."""
    cur = txn.cursor()
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    ok = cur.prev() if cur.set_range(end) else cur.last()
    if ok and cur.key().startswith(prefix):
        return struct.unpack(">I", cur.key()[len(prefix):len(prefix) + 4])[0]
    return 0


class ModelRegistry:
    """User vectors, metadata and the current-version pointer of every model version.

    Parameters
    ----------
    data_dir : the mcrecall data directory (``users.lmdb`` lives in it).
    readonly : open for reading only (serve); the environment is opened lazily, so a reader
        created before the first version is published sees it once it exists.
    map_size : LMDB address space to reserve (writer).
    """

    def __init__(self, data_dir, readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE):
        self.path = Path(data_dir) / "users.lmdb"
        self.readonly = readonly
        self.map_size = int(map_size)
        self._env: lmdb.Environment | None = None
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
            self._open()

    def _open(self) -> lmdb.Environment | None:
        if self._env is None:
            if self.readonly and not (self.path / "data.mdb").exists():
                return None
            self._env = _acquire(self.path, self.map_size, writer=not self.readonly)
        return self._env

    def close(self) -> None:
        if self._env is not None:
            _release(self.path)
            self._env = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- readers --------------------------------------------------------------------------------
    def _get(self, key: bytes) -> bytes | None:
        env = self._open()
        if env is None:
            return None
        with env.begin() as txn:
            return txn.get(key)

    def current_version(self) -> int | None:
        """The version recalls must use, or None before the first publication."""
        raw = self._get(CURRENT)
        return None if raw is None else int(raw)

    def metadata(self, version: int) -> dict:
        """Metadata of a complete version (KeyError if it has none)."""
        raw = self._get(META + _ver(version))
        if raw is None:
            raise KeyError(f"model version {version} has no metadata (unknown or incomplete)")
        return json.loads(raw)

    def user_vector(self, version: int, user_id: str) -> np.ndarray | None:
        """The user's float32 vector in ``version``, or None if the user has none."""
        raw = self._get(USER + _ver(version) + str(user_id).encode("utf-8"))
        return None if raw is None else np.frombuffer(raw, dtype="<f4").copy()

    def user_vectors(self, version: int, user_ids: Iterable[str]) -> np.ndarray:
        """(n, dim) float32 vectors; NaN rows for users without one (one read transaction)."""
        user_ids = list(user_ids)
        env = self._open()
        dim = int(self.metadata(version)["dim"]) if env is not None else 0
        out = np.full((len(user_ids), dim), np.nan, dtype=np.float32)
        if env is None:
            return out
        prefix = USER + _ver(version)
        with env.begin() as txn:
            for j, uid in enumerate(user_ids):
                raw = txn.get(prefix + str(uid).encode("utf-8"))
                if raw is not None:
                    out[j] = np.frombuffer(raw, dtype="<f4")
        return out

    def refresh_info(self, version: int) -> dict | None:
        """Version N's last item refresh (``seq``, ``generation``, ...), or None if never."""
        raw = self._get(REFRESH + _ver(version))
        return None if raw is None else json.loads(raw)

    def refresh_generation(self, version: int) -> int:
        """How many item refreshes version N has had (0: its item vectors are as trained)."""
        info = self.refresh_info(version)
        return 0 if info is None else int(info.get("generation", 0))

    def write_refresh(self, version: int, info: dict) -> None:
        """Record an item refresh of a complete version (after its vectors are written)."""
        with self._writer().begin(write=True) as txn:
            if txn.get(META + _ver(version)) is None:
                raise ValueError(f"version {version} is not complete (no metadata)")
            txn.put(REFRESH + _ver(version), json.dumps(info, sort_keys=True).encode("utf-8"))

    def user_matrix(self, version: int) -> np.ndarray:
        """All user vectors of a version as one (n, dim) float32 matrix (one read transaction)."""
        env = self._open()
        prefix = USER + _ver(version)
        rows = []
        if env is not None:
            with env.begin() as txn:
                cur = txn.cursor()
                ok = cur.set_range(prefix)
                while ok and cur.key().startswith(prefix):
                    rows.append(cur.value())
                    ok = cur.next()
        if not rows:
            return np.zeros((0, int(self.metadata(version)["dim"])), np.float32)
        return np.frombuffer(b"".join(rows), dtype="<f4").reshape(len(rows), -1).copy()

    def versions(self) -> list[int]:
        """Complete versions (those with metadata), ascending."""
        return [v for v in self._scan_versions(META)]

    def stored_versions(self) -> list[int]:
        """Every version with any data (complete or leftovers of an interrupted run)."""
        return sorted(set(self._scan_versions(META)) | set(self._scan_versions(USER)))

    def _scan_versions(self, prefix: bytes) -> list[int]:
        env = self._open()
        if env is None:
            return []
        found = []
        with env.begin() as txn:
            cur = txn.cursor()
            ok = cur.set_range(prefix)
            while ok:
                key = cur.key()
                if not key.startswith(prefix):
                    break
                v = struct.unpack(">I", key[len(prefix):len(prefix) + 4])[0]
                found.append(v)
                # jump past this version's keys
                ok = cur.set_range(prefix + struct.pack(">I", v + 1)) if v + 1 < 2**32 else False
        return found

    def inflight(self) -> dict[int, dict]:
        """Versions allocated but not yet published: {version: {pid, host, at}}."""
        env = self._open()
        if env is None:
            return {}
        out = {}
        with env.begin() as txn:
            cur = txn.cursor()
            ok = cur.set_range(INFLIGHT)
            while ok and cur.key().startswith(INFLIGHT):
                v = struct.unpack(">I", cur.key()[len(INFLIGHT):])[0]
                out[v] = json.loads(cur.value())
                ok = cur.next()
        return out

    def n_users(self, version: int) -> int:
        env = self._open()
        if env is None:
            return 0
        prefix = USER + _ver(version)
        n = 0
        with env.begin() as txn:
            cur = txn.cursor()
            ok = cur.set_range(prefix)
            while ok and cur.key().startswith(prefix):
                n += 1
                ok = cur.next()
        return n

    # -- writers --------------------------------------------------------------------------------
    def _writer(self) -> lmdb.Environment:
        if self.readonly:
            raise PermissionError("ModelRegistry opened readonly")
        return self._open()

    def write_users(self, version: int, ids: list[str], vectors: np.ndarray,
                    batch: int = 100_000) -> None:
        """Store user vectors of ``version`` (batched transactions; not visible as a version
        until :meth:`write_metadata`)."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError("vectors must be (len(ids), dim)")
        prefix = USER + _ver(version)
        env = self._writer()
        for s in range(0, len(ids), batch):
            with env.begin(write=True) as txn:
                for uid, vec in zip(ids[s:s + batch], vectors[s:s + batch], strict=False):
                    txn.put(prefix + str(uid).encode("utf-8"), vec.tobytes())

    def write_tokens(self, version: int, kind: str, vocab, emb: np.ndarray) -> None:
        """Store a version's token embeddings of ``kind`` (``"item"``/``"user"``; the hybrid
        model, train/attributes.py), before its metadata."""
        emb = np.ascontiguousarray(emb, dtype="<f4")
        if emb.ndim != 2 or len(emb) != len(vocab):
            raise ValueError("token embeddings must be (len(vocab), dim)")
        key = TOKENS + _ver(version) + kind.encode()
        with self._writer().begin(write=True) as txn:
            txn.put(key + b"/vocab", json.dumps(list(vocab), ensure_ascii=False).encode("utf-8"))
            txn.put(key + b"/emb", str(emb.shape[1]).encode("ascii") + b"\0" + emb.tobytes())

    def tokens(self, version: int, kind: str):
        """``(vocab, embeddings)`` of a version's ``kind`` tokens, or None (none stored)."""
        key = TOKENS + _ver(version) + kind.encode()
        vocab, emb = self._get(key + b"/vocab"), self._get(key + b"/emb")
        if vocab is None or emb is None:
            return None
        dim, _, raw = bytes(emb).partition(b"\0")
        return tuple(json.loads(bytes(vocab).decode("utf-8"))), \
            np.frombuffer(raw, dtype="<f4").reshape(-1, int(dim)).astype(np.float32)
    def write_holdout(self, version: int, keys: np.ndarray) -> None:
        """Record the pair keys (``train.split.pair_keys``) of the pairs version N held out."""
        blob = np.unique(np.asarray(keys, dtype=np.uint64)).astype("<u8").tobytes()
        with self._writer().begin(write=True) as txn:
            if txn.get(META + _ver(version)) is None:
                raise ValueError(f"version {version} is not complete (no metadata)")
            txn.put(HOLDOUT + _ver(version), blob)

    def holdout(self, version: int) -> np.ndarray | None:
        """The sorted pair keys version N held out, or None if it recorded none (older versions)."""
        raw = self._get(HOLDOUT + _ver(version))
        return None if raw is None else np.frombuffer(raw, dtype="<u8").astype(np.uint64)

    def write_metadata(self, version: int, meta: dict) -> None:
        """Store the metadata: from now on the version is complete (listed by versions())."""
        with self._writer().begin(write=True) as txn:
            txn.put(META + _ver(version), json.dumps(meta, sort_keys=True).encode("utf-8"))

    def allocate_version(self, at_least: int = 1) -> int:
        """Hand out a new version number atomically and record it as in flight.

        The number is above every number handed out before, every stored version, the current
        one and ``at_least`` (e.g. what the vector store has seen), in one write transaction:
        two publishers never get the same number, and numbers never go back.
        """
        env = self._writer()
        with env.begin(write=True) as txn:
            seen = [int(at_least) - 1, int(txn.get(ALLOCATED) or 0), int(txn.get(CURRENT) or 0)]
            for prefix in (META, USER, INFLIGHT):
                seen.append(_highest(txn, prefix))
            version = max(seen) + 1
            ver = _ver(version)
            txn.put(ALLOCATED, str(version).encode("ascii"))
            txn.put(INFLIGHT + ver, _inflight_record())
        return version

    def mark_inflight(self, version: int) -> None:
        """Record a caller-chosen version number as in flight (and as handed out)."""
        with self._writer().begin(write=True) as txn:
            txn.put(INFLIGHT + _ver(version), _inflight_record())
            if int(txn.get(ALLOCATED) or 0) < int(version):
                txn.put(ALLOCATED, str(int(version)).encode("ascii"))

    def set_current(self, version: int) -> None:
        """THE atomic step: one LMDB write flips the pointer (only to a complete version) and
        ends the version's in-flight record."""
        with self._writer().begin(write=True) as txn:
            if txn.get(META + _ver(version)) is None:
                raise ValueError(f"version {version} is not complete (no metadata)")
            txn.put(CURRENT, str(int(version)).encode("ascii"))
            txn.delete(INFLIGHT + _ver(version))

    def clear_inflight(self, version: int) -> None:
        """Forget an in-flight record (its publisher died; the caller holds the lock)."""
        with self._writer().begin(write=True) as txn:
            txn.delete(INFLIGHT + _ver(version))

    def drop(self, version: int, *, in_flight_ok: bool = False) -> None:
        """Remove a version's metadata (first, so it stops being listed) and user vectors.

        Refuses the current version, and a version in flight (allocated, not yet published)
        unless ``in_flight_ok`` — for a publisher that holds the publisher lock and so knows
        the version's own publisher is gone.
        """
        env = self._writer()
        ver = _ver(version)
        with env.begin() as txn:
            cur = txn.get(CURRENT)
            flying = txn.get(INFLIGHT + ver)
        if cur is not None and int(cur) == int(version):
            raise ValueError(f"refusing to drop the current version {version}")
        if flying is not None and not in_flight_ok:
            raise ValueError(f"refusing to drop version {version}: it is being published "
                             f"({json.loads(flying)})")
        with env.begin(write=True) as txn:
            txn.delete(META + ver)
            txn.delete(INFLIGHT + ver)
            txn.delete(REFRESH + ver)
            for kind in (b"item", b"user"):
                txn.delete(TOKENS + ver + kind + b"/vocab")
                txn.delete(TOKENS + ver + kind + b"/emb")
            txn.delete(HOLDOUT + ver)
        prefix = USER + ver
        while True:  # bounded transactions so a huge version does not need one huge txn
            with env.begin(write=True) as txn:
                cur = txn.cursor()
                n = 0
                ok = cur.set_range(prefix)
                while ok and cur.key().startswith(prefix) and n < 100_000:
                    ok = cur.delete()
                    n += 1
                done = not ok or not cur.key().startswith(prefix)
            if done:
                break

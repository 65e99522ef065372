"""Shared machinery of the backends that keep each version as files.

Layout under ``<data_dir>/vectors/<collection>/``::

    v<N>/meta.json      VersionSpec + count
    v<N>/ids.utf8.npy   external ids: their UTF-8 bytes back to back (uint8; np.save, no pickle)
    v<N>/id_offsets.npy where each id starts and ends in ids.utf8.npy (int64, n + 1)
    v<N>/stored.npy     the reduced vectors the index was built from
    v<N>/norms.npy      model norms (restore cosine vectors for get_vectors)
    v<N>/<index file>   the backend's own index (faiss / hnswlib), if any
    v<N>/delta.npz      items replaced or added after publication (``replace_items``): ids,
                        stored, norms, n_new; searched by brute force beside the index, and
                        their rows in the index are ignored; replaced with os.replace
    current             the current version number, replaced with os.replace

A version is built in memory by its writer, written to a hidden temporary
directory and renamed to ``v<N>`` in one step, so a crash never leaves a half
version visible and any other process can read it once it exists. A writer
killed mid-write leaves a hidden ``.v<N>.tmp-*`` directory: :meth:`purge_leftovers`
(called by the publisher under its lock) removes it.

Ids are kept as UTF-8 bytes plus offsets rather than a fixed-width numpy string
array: numpy's ``U`` dtype strips trailing NULs (``"tail\x00"`` would come back as
``"tail"``), and ids are data that must come back exactly as stored.
"""

from __future__ import annotations

import abc
import json
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mcrecall.core.crashpoints import crash_point
from mcrecall.plugins.base import VectorStore, VersionNotFoundError, VersionSpec
from mcrecall.plugins.metric import exact_top_k

_VERSION_DIR = re.compile(r"v(\d+)")
_LEFTOVER = re.compile(r"\.(v\d+\.tmp|trash-v\d+|current\.tmp)-.*")


class IdTable:
    """The ids of a version: UTF-8 bytes back to back and their offsets (exact round trip).

    Loading is two ``np.load`` calls (no per-id work); an id is decoded only when a
    search returns it, or when :meth:`tolist` builds the id -> row map in the background.
    """

    __slots__ = ("blob", "offsets")

    def __init__(self, blob: bytes, offsets: np.ndarray):
        self.blob = blob
        self.offsets = offsets

    @classmethod
    def from_list(cls, ids: list[str]) -> "IdTable":
        encoded = [i.encode("utf-8") for i in ids]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(b"".join(encoded), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def take(self, rows) -> list[str]:
        b, o = self.blob, self.offsets
        return [b[o[r]:o[r + 1]].decode("utf-8") for r in rows]

    def tolist(self) -> list[str]:
        b, o = self.blob, self.offsets.tolist()
        return [b[o[r]:o[r + 1]].decode("utf-8") for r in range(len(o) - 1)]

    def save(self, d: Path) -> None:
        np.save(d / "ids.utf8.npy", np.frombuffer(self.blob, dtype=np.uint8), allow_pickle=False)
        np.save(d / "id_offsets.npy", self.offsets, allow_pickle=False)

    @classmethod
    def load(cls, d: Path) -> "IdTable":
        if not (d / "id_offsets.npy").exists() and (d / "ids.npy").exists():  # earlier layout
            return cls.from_list(np.load(d / "ids.npy", allow_pickle=False).tolist())
        blob = np.load(d / "ids.utf8.npy", allow_pickle=False).tobytes()
        return cls(blob, np.load(d / "id_offsets.npy", allow_pickle=False))


@dataclass
class _Pending:
    """A version being built by this process: ids and stored vectors so far."""

    spec: VersionSpec
    row_of: dict  # id -> row in the chunks (last write wins)
    ids: list
    stored: list
    norms: list


@dataclass
class LoadedVersion:
    """A finalized version read into memory."""

    spec: VersionSpec
    ids: IdTable
    stored: np.ndarray  # (n, stored_dim) float32
    norms: np.ndarray  # (n,) float32
    index: object
    inode: int
    _row_of: dict | None = None

    def row_of(self) -> dict:
        row_of = self._row_of
        if row_of is None:  # two threads may both build it: same result, no lock needed
            row_of = dict(zip(self.ids.tolist(), range(len(self.ids)), strict=False))
            self._row_of = row_of
        return row_of


@dataclass
class _Delta:
    """Items refreshed into a published version (``v<N>/delta.npz``), read into memory."""

    key: tuple  # (inode, mtime_ns, size) of the file it was read from
    ids: np.ndarray
    stored: np.ndarray
    norms: np.ndarray
    n_new: int  # ids the version's index does not hold
    row_of: dict


def _delta_raw(metric: str, queries: np.ndarray, stored: np.ndarray):
    """Raw values of the delta rows, in the kind the backends report for ``metric``."""
    if metric == "COSINE":
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        return q @ (stored / np.linalg.norm(stored, axis=1, keepdims=True)).T, "cosine"
    if metric == "IP":
        return queries @ stored.T, "ip"
    qq = np.einsum("ij,ij->i", queries, queries)[:, None]
    return qq + np.einsum("ij,ij->i", stored, stored)[None, :] - 2.0 * (queries @ stored.T), "sqeuclidean"


class FileVectorStore(VectorStore):
    """Base of the file backends (``exact``, ``faiss``, ``hnswlib``).

    A subclass provides :meth:`_build_index`, :meth:`_save_index`,
    :meth:`_load_index` and :meth:`_search_index`.
    """

    index_file: str | None = None
    direct_exact_share = 10  # the vectors are in memory: a scan for k >= n/10 beats a wide beam

    def __init__(self, data_dir=None, uri: str = "", collection: str = "mcrecall_items", **params):
        super().__init__(data_dir, uri, collection, **params)
        if data_dir is None:
            raise ValueError(f"the {self.name} backend needs data_dir (versions are files under it)")
        self.root = Path(data_dir) / "vectors" / collection
        self._pending: dict[int, _Pending] = {}
        self._loaded: dict[int, LoadedVersion] = {}
        self._lock = threading.Lock()
        self._deltas: dict[int, _Delta] = {}

    # -- paths -----------------------------------------------------------------------------------
    def version_dir(self, version: int) -> Path:
        return self.root / f"v{version}"

    # -- building --------------------------------------------------------------------------------
    def _create(self, spec: VersionSpec) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.version_dir(spec.version).exists():
            self._drop(spec.version)  # stale, non-current (checked by the caller)
        self._pending[spec.version] = _Pending(spec, {}, [], [], [])

    def _pending_spec(self, version: int) -> VersionSpec | None:
        p = self._pending.get(version)
        return p.spec if p else None

    def _add(self, version, ids, stored, norms) -> None:
        p = self._pending[version]
        base = len(p.ids)
        for r, i in enumerate(ids):
            p.row_of[i] = base + r
        p.ids.extend(ids)
        p.stored.append(stored)
        p.norms.append(norms)

    def _finalize(self, version: int) -> int:
        p = self._pending[version]
        rows = np.fromiter(sorted(p.row_of.values()), dtype=np.int64, count=len(p.row_of))
        if len(rows) == 0:
            raise ValueError(f"version {version} has no items; upsert some before finalize")
        dim = p.spec.reduction.stored_dim
        stored_all = np.concatenate(p.stored) if p.stored else np.zeros((0, dim), np.float32)
        stored = np.ascontiguousarray(stored_all[rows])
        norms = np.concatenate(p.norms)[rows]
        ids = IdTable.from_list([p.ids[r] for r in rows])
        spec = replace(p.spec, params={**p.spec.params})
        if spec.index_type not in self.exact_index_types and len(ids) <= spec.params.get("flat_max_items", 0):
            # A small version is served best by a flat scan: exact, and as fast as a graph.
            spec = replace(spec, index_type="FLAT", params={**spec.params, "requested_index_type": spec.index_type})
        index = self._build_index(spec, stored)

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".v{version}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            ids.save(tmp)
            np.save(tmp / "stored.npy", stored, allow_pickle=False)
            np.save(tmp / "norms.npy", norms, allow_pickle=False)
            if self.index_file is not None:
                self._save_index(index, tmp / self.index_file)
            meta = json.loads(spec.to_json())
            meta["count"] = int(len(ids))
            meta["backend"] = self.name
            (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True, indent=1))
            _fsync_dir_files(tmp)
            crash_point("file-store-rename")
            final = self.version_dir(version)
            try:
                os.rename(tmp, final)  # the publishing step: atomic on POSIX
            except OSError:
                raise RuntimeError(
                    f"version {version} was published meanwhile by another writer ({final})"
                ) from None
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        del self._pending[version]
        with self._lock:
            self._loaded.pop(version, None)
        return int(len(ids))

    # -- reading ---------------------------------------------------------------------------------
    def _read_meta(self, version: int) -> dict | None:
        try:
            return json.loads((self.version_dir(version) / "meta.json").read_text())
        except FileNotFoundError:
            return None

    def _spec(self, version: int) -> VersionSpec | None:
        loaded = self._loaded.get(version)
        if loaded is not None and self._inode(version) == loaded.inode:
            return loaded.spec
        meta = self._read_meta(version)
        if meta is None:
            return None
        meta.pop("count", None)
        meta.pop("backend", None)
        return VersionSpec(**meta)

    def _inode(self, version: int) -> int | None:
        try:
            return os.stat(self.version_dir(version)).st_ino
        except FileNotFoundError:
            return None

    def load(self, version: int) -> LoadedVersion:
        """The in-memory copy of a finalized version (read on first use; reloaded if replaced)."""
        inode = self._inode(version)
        loaded = self._loaded.get(version)
        if loaded is not None and loaded.inode == inode:
            return loaded
        if inode is None:
            with self._lock:
                self._loaded.pop(version, None)
            raise VersionNotFoundError(f"version {version} of collection {self.collection!r} does not exist")
        with self._lock:
            loaded = self._loaded.get(version)
            if loaded is not None and loaded.inode == inode:
                return loaded
            d = self.version_dir(version)
            try:
                meta = json.loads((d / "meta.json").read_text())
                meta.pop("count", None)
                meta.pop("backend", None)
                spec = VersionSpec(**meta)
                ids = IdTable.load(d)
                stored = np.load(d / "stored.npy", allow_pickle=False)
                norms = np.load(d / "norms.npy", allow_pickle=False)
                index = self._load_index(spec, d / self.index_file if self.index_file else None, stored)
            except FileNotFoundError:
                raise VersionNotFoundError(f"version {version} was dropped while loading") from None
            loaded = LoadedVersion(spec, ids, stored, norms, index, inode)
            self._loaded[version] = loaded
        # The id -> row map (0.5 s at 1M items) is needed only by get_vectors (fold-in, score):
        # build it in the background so the first fold-in of a version does not pay for it.
        threading.Thread(target=loaded.row_of, name=f"row-map-v{version}", daemon=True).start()
        return loaded

    def _search(self, spec, queries, k):
        delta = self._delta(spec.version)
        if delta is not None:
            return self._search_with_delta(spec, queries, k, delta)
        return self._search_main(spec, queries, k)

    def _search_with_delta(self, spec, queries, k, delta: _Delta):
        """Index hits minus the refreshed ids, merged with a brute-force scan of the delta."""
        n_main = len(self.load(spec.version).ids)
        n_over = len(delta.ids) - delta.n_new  # index rows that are stale
        fetch = min(n_main, k + min(n_over, 32))
        while True:
            ids, raws, kind = self._search_main(spec, queries, fetch)
            kept = []
            short = False
            for row_ids, row_raw in zip(ids, raws, strict=False):
                keep = [j for j, i in enumerate(row_ids) if i not in delta.row_of]
                kept.append(([row_ids[j] for j in keep], np.asarray(row_raw)[keep]))
                short |= len(keep) < k
            if not short or fetch >= n_main:
                break
            fetch = min(n_main, fetch * 4)
        draw, dkind = _delta_raw(spec.metric, queries, delta.stored)
        if ids and dkind != kind:
            raise RuntimeError(f"delta raw kind {dkind} differs from the index's {kind}")
        smaller = dkind == "sqeuclidean"
        out_ids, out_raw = [], []
        for j, (row_ids, row_raw) in enumerate(kept):
            all_ids = row_ids + delta.ids.tolist()
            all_raw = np.concatenate([np.asarray(row_raw, dtype=np.float64), draw[j].astype(np.float64)])
            order = np.argsort(all_raw if smaller else -all_raw, kind="stable")[:k]
            out_ids.append([all_ids[r] for r in order])
            out_raw.append(all_raw[order])
        return out_ids, out_raw, dkind

    def _search_main(self, spec, queries, k):
        loaded = self.load(spec.version)
        k = min(k, len(loaded.ids))
        labels, raw, kind = self._search_index(loaded, queries, k)
        ids = []
        raws = []
        for lab_row, raw_row in zip(labels, raw, strict=False):
            keep = lab_row >= 0  # an ANN index may return fewer than k
            ids.append(loaded.ids.take(lab_row[keep].tolist()))
            raws.append(np.asarray(raw_row)[keep])
        return ids, raws, kind

    def _get(self, version, ids):
        loaded = self.load(version)
        row_of = loaded.row_of()
        out = {}
        delta = self._delta(version)
        if delta is not None:
            for i in ids:
                r = delta.row_of.get(i)
                if r is not None:
                    out[i] = (delta.stored[r], float(delta.norms[r]))
            ids = [i for i in ids if i not in out]
        for i in ids:
            r = row_of.get(i)
            if r is not None:
                out[i] = (loaded.stored[r], float(loaded.norms[r]))
        return out

    def _exact_search(self, spec, queries, k):
        loaded = self.load(spec.version)
        labels, raw, kind = exact_top_k(spec.metric, queries, loaded.stored, min(k, len(loaded.ids)))
        return [loaded.ids.take(row.tolist()) for row in labels], list(raw), kind

    def _count(self, version: int) -> int:
        meta = self._read_meta(version)
        if meta is None:
            raise VersionNotFoundError(f"version {version} does not exist")
        delta = self._delta(version)
        return int(meta["count"]) + (delta.n_new if delta is not None else 0)

    # -- item refresh (replace_items) -------------------------------------------------------------
    def _delta(self, version: int) -> _Delta | None:
        """The version's refreshed items, re-read when ``delta.npz`` was replaced (one stat)."""
        path = self.version_dir(version) / "delta.npz"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._deltas.pop(version, None)
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        d = self._deltas.get(version)
        if d is not None and d.key == key:
            return d
        try:
            with np.load(path, allow_pickle=False) as z:
                ids, stored, norms, n_new = z["ids"], z["stored"], z["norms"], int(z["n_new"])
        except FileNotFoundError:  # the version was dropped meanwhile
            raise VersionNotFoundError(f"version {version} was dropped while loading") from None
        d = _Delta(key, ids, stored, norms, n_new, dict(zip(ids.tolist(), range(len(ids)), strict=False)))
        self._deltas[version] = d
        return d

    def _replace(self, spec, ids, stored, norms) -> None:
        """Write old delta + these rows as a new ``delta.npz`` and os.replace it in one step.

        Cost O(delta size), not O(version size): the version's index files are never rewritten.
        """
        version = spec.version
        d = self.version_dir(version)
        if not (d / "meta.json").exists():
            raise VersionNotFoundError(f"version {version} of collection {self.collection!r} does not exist")
        old = self._delta(version)
        main_rows = self.load(version).row_of()
        if old is not None:
            new_set = set(ids)
            keep = np.array([i not in new_set for i in old.ids.tolist()], dtype=bool)
            all_ids = old.ids[keep].tolist() + list(ids)
            stored = np.concatenate([old.stored[keep], stored])
            norms = np.concatenate([old.norms[keep], norms])
        else:
            all_ids = list(ids)
        n_new = sum(1 for i in all_ids if i not in main_rows)
        tmp = d / f".delta.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, ids=np.array(all_ids, dtype=str), stored=np.ascontiguousarray(stored, np.float32),
                         norms=np.asarray(norms, np.float32), n_new=np.array(n_new, np.int64))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, d / "delta.npz")  # readers see the old or the new delta, never half
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(d)

    # -- versions --------------------------------------------------------------------------------
    def _versions(self) -> list[int]:
        if not self.root.is_dir():
            return []
        out = []
        for entry in os.listdir(self.root):
            m = _VERSION_DIR.fullmatch(entry)
            if m and (self.root / entry / "meta.json").exists():
                out.append(int(m.group(1)))
        return out

    def _set_current(self, version: int) -> None:
        tmp = self.root / f".current.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(tmp, "w") as f:
            f.write(f"{version}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / "current")  # readers see the old or the new number, never half
        _fsync_dir(self.root)

    def _current(self) -> int | None:
        try:
            text = (self.root / "current").read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def _drop(self, version: int) -> None:
        d = self.version_dir(version)
        trash = self.root / f".trash-v{version}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(d, trash)  # disappears in one step, then is deleted at leisure
        except FileNotFoundError:
            raise VersionNotFoundError(f"version {version} of collection {self.collection!r} does not exist") from None
        shutil.rmtree(trash, ignore_errors=True)
        with self._lock:
            self._loaded.pop(version, None)

    def _purge_leftovers(self) -> list[str]:
        """Remove what killed writers left: temporary version directories, trash, pointer tmp."""
        if not self.root.is_dir():
            return []
        removed = []
        for entry in os.listdir(self.root):
            if _LEFTOVER.fullmatch(entry):
                path = self.root / entry
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(entry)
        return removed

    def close(self) -> None:
        with self._lock:
            self._loaded.clear()

    # -- backend hooks ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _build_index(self, spec: VersionSpec, stored: np.ndarray):
        """Build the in-memory index over the reduced vectors (row r = label r)."""

    def _save_index(self, index, path: Path) -> None:
        """Write the index to ``path`` (inside the temporary version directory)."""

    @abc.abstractmethod
    def _load_index(self, spec: VersionSpec, path: Path | None, stored: np.ndarray):
        """Read the index of a finalized version."""

    @abc.abstractmethod
    def _search_index(self, loaded: LoadedVersion, queries: np.ndarray, k: int):
        """Return (labels (q, k) int with -1 for none, raw values (q, k), raw kind)."""


def _fsync_dir_files(d: Path) -> None:
    for name in os.listdir(d):
        fd = os.open(d / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(d)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

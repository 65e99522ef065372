"""``milvus``: Milvus (server) or Milvus Lite (a ``.db`` directory), one collection per version.

Version N is the collection ``<collection>_v<N>`` (fields ``id`` VARCHAR primary
key, ``vector`` FLOAT_VECTOR, ``norm`` FLOAT); the alias ``<collection>`` points at
the current one and is flipped atomically by ``make_current``. The version's
spec is kept in the collection properties (``mcrecall.spec``) and
``mcrecall.finalized = "1"`` marks a complete version, so any process can read
what another published.

Milvus Lite 3.x locks a ``.db`` directory to one process: the file mode serves
one process; several processes share ``milvus-lite server`` (``mcrecall milvus``)
by URI — the same code path as a real Milvus server.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from pathlib import Path

import numpy as np

from plugins.base import MAX_ID_BYTES, VectorStore, VersionNotFoundError, VersionSpec

log = logging.getLogger(__name__)

SPEC_PROPERTY = "mcrecall.spec"
FINALIZED_PROPERTY = "mcrecall.finalized"
MAX_TOPK = 16384  # Milvus' limit on a search's top-k
_GET_CHUNK = 1000
_FLAT_L2_BYTES = 256 << 20  # see MilvusVectorStore._queries_per_call
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")
_RAW_KIND = {"L2": "sqeuclidean", "IP": "ip", "COSINE": "cosine"}

# File-mode paths this process has open, with a reference count: Milvus Lite
# serves a .db from an in-process server that must be released to free the lock.
_FILE_USERS: dict[str, int] = {}
_FILE_USERS_LOCK = threading.Lock()


class MilvusStoreLockedError(RuntimeError):
    """A Milvus Lite ``.db`` directory is in use by another process."""


def is_server_uri(uri: str) -> bool:
    """True for ``http://host:port``-style URIs, False for a Milvus Lite path."""
    return uri.lower().startswith(_SERVER_SCHEMES)


def _lock_holder_message(path: str) -> str:
    return (
        f"Milvus Lite database {path} is locked by another process (file mode serves one "
        "process). For several processes run `mcrecall milvus` (a local Milvus Lite server) "
        "and set [index] uri = \"http://127.0.0.1:19530\" (or MCRECALL_INDEX_URI)."
    )


def check_not_locked(path: str) -> None:
    """Raise :class:`MilvusStoreLockedError` if another process holds the ``.db`` lock."""
    import fcntl

    abs_path = os.path.abspath(path)
    with _FILE_USERS_LOCK:
        if _FILE_USERS.get(abs_path):
            return  # this process serves it already
    lock = os.path.join(abs_path, "LOCK")
    if not os.path.exists(lock):
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MilvusStoreLockedError(_lock_holder_message(abs_path)) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class MilvusVectorStore(VectorStore):
    """Milvus backend (Milvus Lite file, Milvus Lite server, or Milvus).

    Parameters
    ----------
    data_dir : path-like, optional
        Used for the default ``uri`` (``<data_dir>/milvus.db``).
    uri : str
        ``""``, a ``.db`` path (Milvus Lite in this process) or ``http://host:port``.
    collection, hnsw_m, ef_construction, ef_search, nlist, nprobe, timeout_s
        See :class:`plugins.base.VectorStore`. ``nlist`` is an upper bound: IVF
        indexes use ``min(nlist, 4·sqrt(n))`` cells so small versions stay accurate.

    Index types: ``FLAT`` (exact), ``HNSW``, ``HNSW_SQ``, ``IVF_FLAT``
    (``AUTOINDEX``), ``IVF_SQ8``. (``IVF_PQ`` does not work in Milvus Lite.)
    ``AUTOINDEX`` is IVF_FLAT because it measured fastest-correct on Milvus Lite
    3.x (benchmarks/results/vector_stores.md): recall@10 1.000 for every metric,
    a third of HNSW's build time, the same batched throughput. A Milvus Lite
    search costs ~50 ms at 10^5 rows whatever the index (a pure-Python pass
    over all primary keys per request), so batch queries with ``search_batch``.
    """

    name = "milvus"
    index_types = ("FLAT", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8")
    auto_index_type = "IVF_FLAT"
    exact_index_types = ("FLAT",)

    def __init__(self, data_dir=None, uri: str = "", collection: str = "mcrecall_items", **params):
        super().__init__(data_dir, uri, collection, **params)
        if not self.uri:
            if data_dir is None:
                raise ValueError("the milvus backend needs a uri or a data_dir (for <data_dir>/milvus.db)")
            self.uri = str(Path(data_dir) / "milvus.db")
        self.file_path: str | None = None
        if not is_server_uri(self.uri):
            if not self.uri.endswith(".db"):
                raise ValueError(
                    f"milvus uri must be http://host:port or a Milvus Lite path ending in .db, got {self.uri!r}"
                )
            self.file_path = os.path.abspath(self.uri)
            Path(self.file_path).parent.mkdir(parents=True, exist_ok=True)
        self._client = self._connect()
        self._pending: dict[int, tuple[VersionSpec, set]] = {}
        self._specs: dict[int, VersionSpec] = {}
        self._counts: dict[int, int] = {}
        self._loaded: set[int] = set()

    # ------------------------------------------------------------------ connection
    def _connect(self):
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        if self.file_path is None:
            try:
                return MilvusClient(uri=self.uri, timeout=self.timeout_s)
            except MilvusException as e:
                raise ConnectionError(
                    f"cannot reach Milvus at {self.uri}: {e.message if hasattr(e, 'message') else e}. "
                    "Is the server running? (`mcrecall milvus` starts a local one.)"
                ) from None
        check_not_locked(self.file_path)
        try:
            client = MilvusClient(uri=self.file_path, timeout=self.timeout_s)
        except MilvusException:
            check_not_locked(self.file_path)  # lost a race with another process?
            raise
        with _FILE_USERS_LOCK:
            _FILE_USERS[self.file_path] = _FILE_USERS.get(self.file_path, 0) + 1
        return client

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is None:
            return
        try:
            client.close()
        except Exception:  # closing must not mask the caller's own error
            pass
        if self.file_path is not None:
            with _FILE_USERS_LOCK:
                n = _FILE_USERS.get(self.file_path, 0) - 1
                if n > 0:
                    _FILE_USERS[self.file_path] = n
                    return
                _FILE_USERS.pop(self.file_path, None)
            try:  # last user in this process: stop the in-process server, free the lock
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self.file_path)
            except Exception:
                pass

    @property
    def client(self):
        if self._client is None:
            raise RuntimeError("this MilvusVectorStore is closed")
        return self._client

    # ------------------------------------------------------------------ names
    def collection_name(self, version: int) -> str:
        return f"{self.collection}_v{version}"

    def _parse_version(self, name: str) -> int | None:
        m = re.fullmatch(re.escape(self.collection) + r"_v(\d+)", name)
        return int(m.group(1)) if m else None

    # ------------------------------------------------------------------ building
    def _create(self, spec: VersionSpec) -> None:
        from pymilvus import DataType, MilvusClient

        c, name = self.client, self.collection_name(spec.version)
        if c.has_collection(name):
            log.info("replacing stale non-current collection %s", name)
            c.drop_collection(name)
        self._forget(spec.version)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=spec.reduction.stored_dim)
        schema.add_field("norm", DataType.FLOAT)
        c.create_collection(name, schema=schema, consistency_level="Strong", timeout=self.timeout_s)
        c.alter_collection_properties(name, properties={SPEC_PROPERTY: spec.to_json()})
        self._pending[spec.version] = (spec, set())

    def _pending_spec(self, version: int) -> VersionSpec | None:
        p = self._pending.get(version)
        return p[0] if p else None

    def _add(self, version, ids, stored, norms) -> None:
        spec, seen = self._pending[version]
        # Keep the last vector of a repeated id (Milvus rejects duplicate keys in one batch).
        last = {i: r for r, i in enumerate(ids)}
        vectors = stored.tolist()
        norm_list = norms.tolist()
        rows = [{"id": i, "vector": vectors[r], "norm": norm_list[r]} for i, r in last.items()]
        name = self.collection_name(version)
        # insert is cheaper than upsert (no delete of an old row); upsert only when needed.
        if len(last) == len(ids) and seen.isdisjoint(last):
            self.client.insert(name, rows, timeout=self.timeout_s)
        else:
            self.client.upsert(name, rows, timeout=self.timeout_s)
        seen.update(last)

    def _index_params(self, spec: VersionSpec, n: int) -> dict:
        p = spec.params
        if spec.index_type in ("HNSW", "HNSW_SQ"):
            return {"M": p["hnsw_m"], "efConstruction": p["ef_construction"]}
        if spec.index_type in ("IVF_FLAT", "IVF_SQ8"):
            return {"nlist": max(1, min(p["nlist"], int(4 * math.sqrt(n))))}
        return {}

    def _search_params(self, spec: VersionSpec, k: int) -> dict:
        if spec.index_type in ("HNSW", "HNSW_SQ"):
            return {"ef": max(spec.params["ef_search"], k)}
        if spec.index_type in ("IVF_FLAT", "IVF_SQ8"):
            return {"nprobe": min(spec.params["nprobe"], spec.params.get("nlist_used", spec.params["nprobe"]))}
        return {}

    def _finalize(self, version: int) -> int:
        spec, seen = self._pending[version]
        if not seen:
            raise ValueError(f"version {version} has no items; upsert some before finalize")
        c, name = self.client, self.collection_name(version)
        c.flush(name, timeout=self.timeout_s)
        build = self._index_params(spec, len(seen))
        params = dict(spec.params)
        if "nlist" in build:
            params["nlist_used"] = build["nlist"]
        spec = VersionSpec(**{**spec.__dict__, "params": params})
        index_params = c.prepare_index_params()
        index_params.add_index("vector", index_type=spec.index_type, metric_type=spec.metric, params=build)
        # Index building can take minutes at 10^6 rows: its own, longer deadline.
        build_timeout = max(self.timeout_s, 3600.0)
        c.create_index(name, index_params, timeout=build_timeout)
        self._wait_index(name, build_timeout)
        c.load_collection(name, timeout=build_timeout)
        count = self._query_count(name)
        if count != len(seen):
            raise RuntimeError(f"collection {name} holds {count} rows after flush, expected {len(seen)}")
        c.alter_collection_properties(
            name, properties={SPEC_PROPERTY: spec.to_json(), FINALIZED_PROPERTY: "1"}
        )
        del self._pending[version]
        self._specs[version] = spec
        self._loaded.add(version)
        return count

    def _wait_index(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            info = self.client.describe_index(name, "vector")
            if info.get("state", "Finished") == "Finished" and not info.get("pending_index_rows", 0):
                return
            if info.get("state") == "Failed":
                raise RuntimeError(f"index build failed for {name}: {info.get('index_state_fail_reason', info)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"index of {name} not built within {timeout:.0f}s: {info}")
            time.sleep(0.2)

    def _query_count(self, name: str) -> int:
        res = self.client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(res[0]["count(*)"])

    # ------------------------------------------------------------------ reading
    def _forget(self, version: int) -> None:
        self._specs.pop(version, None)
        self._counts.pop(version, None)
        self._loaded.discard(version)

    def _spec(self, version: int) -> VersionSpec | None:
        spec = self._specs.get(version)
        if spec is not None:
            return spec
        name = self.collection_name(version)
        if not self.client.has_collection(name):
            return None
        props = self.client.describe_collection(name).get("properties") or {}
        if props.get(FINALIZED_PROPERTY) != "1" or SPEC_PROPERTY not in props:
            return None
        spec = VersionSpec.from_json(props[SPEC_PROPERTY])
        self._specs[version] = spec  # finalized versions are immutable: cache
        return spec

    def _ensure_loaded(self, version: int) -> None:
        if version in self._loaded:
            return
        from pymilvus.client.types import LoadState

        name = self.collection_name(version)
        state = self.client.get_load_state(name).get("state")
        if state != LoadState.Loaded:
            # A reopened Milvus Lite collection (or a restarted server) starts released.
            self.client.load_collection(name, timeout=max(self.timeout_s, 600.0))
        self._loaded.add(version)

    def _call(self, version: int, fn):
        """Run a read; load once and retry if the server says 'not loaded'."""
        from pymilvus.exceptions import MilvusException

        self._ensure_loaded(version)
        try:
            return fn()
        except MilvusException as e:
            text = str(e).lower()
            if "not loaded" in text or "not load" in text:
                self._loaded.discard(version)
                self._ensure_loaded(version)
                return fn()
            if "not found" in text or "not exist" in text:
                self._forget(version)
                raise VersionNotFoundError(f"version {version} of collection {self.collection!r} was dropped") from None
            raise

    def _queries_per_call(self, spec: VersionSpec, n_queries: int) -> int:
        """How many queries one search call may carry.

        Milvus Lite's brute-force L2 materialises a (queries × rows × dim) float32
        difference array: a batch of 1000 queries over 100,000 rows would need 24 GiB.
        Keep that array under _FLAT_L2_BYTES; every other index takes the batch whole.
        """
        if spec.index_type != "FLAT" or spec.metric != "L2":
            return max(1, n_queries)
        rows = self._counts.get(spec.version)
        if rows is None:
            rows = self._counts[spec.version] = self._count(spec.version)
        return max(1, _FLAT_L2_BYTES // max(1, rows * spec.reduction.stored_dim * 4))

    def _search(self, spec, queries, k):
        k = min(k, MAX_TOPK)
        name = self.collection_name(spec.version)
        search_params = {"metric_type": spec.metric, "params": self._search_params(spec, k)}
        step = self._queries_per_call(spec, len(queries))
        ids, raw = [], []
        for start in range(0, len(queries), step):
            data = queries[start : start + step].tolist()
            res = self._call(
                spec.version,
                lambda: self.client.search(
                    name,
                    data=data,
                    limit=k,
                    anns_field="vector",
                    search_params=search_params,
                    output_fields=[],
                    consistency_level="Strong",
                    timeout=self.timeout_s,
                ),
            )
            ids.extend([hit["id"] for hit in hits] for hits in res)
            raw.extend([hit["distance"] for hit in hits] for hits in res)
        return ids, raw, _RAW_KIND[spec.metric]

    def _get(self, version, ids):
        name = self.collection_name(version)
        out = {}
        for start in range(0, len(ids), _GET_CHUNK):
            chunk = ids[start : start + _GET_CHUNK]
            rows = self._call(
                version,
                lambda: self.client.get(name, ids=chunk, output_fields=["vector", "norm"], timeout=self.timeout_s),
            )
            for row in rows:
                out[row["id"]] = (np.asarray(row["vector"], dtype=np.float32), float(row["norm"]))
        return out

    def _replace(self, spec, ids, stored, norms) -> None:
        """Item refresh: one Milvus upsert into the published, loaded collection (ids unique)."""
        name = self.collection_name(spec.version)
        vectors, norm_list = stored.tolist(), norms.tolist()
        rows = [{"id": i, "vector": vectors[r], "norm": norm_list[r]} for r, i in enumerate(ids)]
        for start in range(0, len(rows), 10_000):
            batch = rows[start : start + 10_000]
            self._call(spec.version, lambda: self.client.upsert(name, batch, timeout=self.timeout_s))

    def _count(self, version: int) -> int:
        name = self.collection_name(version)
        return self._call(version, lambda: self._query_count(name))

    # ------------------------------------------------------------------ versions
    def _versions(self) -> list[int]:
        out = []
        for name in self.client.list_collections():
            v = self._parse_version(name)
            if v is not None and self._spec(v) is not None:
                out.append(v)
        return out

    def _current(self) -> int | None:
        aliases = self.client.list_aliases().get("aliases", [])
        if self.collection not in aliases:
            return None
        target = self.client.describe_alias(self.collection).get("collection_name", "")
        return self._parse_version(target)

    def _set_current(self, version: int) -> None:
        from pymilvus.exceptions import MilvusException

        name = self.collection_name(version)
        if self.collection in self.client.list_aliases().get("aliases", []):
            self.client.alter_alias(name, self.collection)
            return
        try:
            self.client.create_alias(name, self.collection)
        except MilvusException:
            # Another writer created the alias between our check and create.
            self.client.alter_alias(name, self.collection)

    def _drop(self, version: int) -> None:
        name = self.collection_name(version)
        self._pending.pop(version, None)
        self._forget(version)
        if not self.client.has_collection(name):
            raise VersionNotFoundError(f"version {version} of collection {self.collection!r} does not exist")
        self.client.drop_collection(name)

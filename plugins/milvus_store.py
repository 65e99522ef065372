"""``milvus``: Milvus (a server) or Milvus Lite (a ``.db`` file), one collection per version.

Layout
------
* Version N is the collection ``<collection>_v<N>`` with fields ``pk`` INT64
  (primary key: a 64-bit hash of the item id, see :func:`id_key`), ``id``
  VARCHAR (the item id, returned byte-exact), ``vector`` FLOAT_VECTOR and
  ``norm`` FLOAT. Ids are data: every lookup and exclusion goes by integer key,
  no id is ever written into a filter expression.
* ``<collection>_versions`` holds one row per finalized version (its
  :class:`~plugins.base.VersionSpec` as JSON) and a row with a negative key
  naming the current version. Rows survive server restarts; collection properties do not
  (Milvus 2.3 keeps only the last property change, milvus-io/milvus#30144) and
  Milvus Lite has no aliases, so neither carries state here. The project's
  registry (users.lmdb) remains the authority on what is served.

Consistency: a version is written with Strong reads and finalized only once a
``Bounded`` query counts every row (flushed, indexed, loaded); searches of
finalized, immutable versions then use ``Bounded`` (Strong waits ~200 ms for
a server's next time tick).

Milvus Lite 2.5 (C++ engine) serves a ``.db`` file from a process of its own
that one client process owns; several processes share ``mcrecall milvus`` (a
Milvus Lite server on 127.0.0.1) by URI — the same code path as a real server.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shlex
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from mcrecall.plugins.base import MAX_ID_BYTES, VectorStore, VersionNotFoundError, VersionSpec

log = logging.getLogger(__name__)
# milvus-lite 2.5 imports pkg_resources (hence setuptools<81) and warns about it on every start
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

MAX_TOPK = 16384  # Milvus' limit on a search's top-k (and on offset + limit)
# Rows of <collection>_versions with a negative key name the current version; the newest
# (most negative, -time_ns) wins, so a flip inserts before it deletes: never a moment without one.
READ_CONSISTENCY = "Bounded"  # finalized versions are immutable
FLAT_MAX_ROWS = 20_000  # AUTOINDEX: an exact FLAT scan up to here, IVF_FLAT above
ADMIN_TIMEOUT_S = 3600.0  # flush / index build / load: minutes at 10^6 rows, never the search timeout
REGISTRY_TIMEOUT_S = 30.0  # reads of <collection>_versions: publication and cache misses, not searches
_GET_CHUNK = 1000
_SCAN_BATCH = 8192
_LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT")
_SERVER_INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8")  # Milvus 2.3 rejects HNSW_SQ
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")
# One channel per store, pinging rarely: Milvus Lite answers pymilvus' 10 s keepalive pings
# with GOAWAY "too_many_pings" and the channel is lost.
_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 300_000, "grpc.keepalive_permit_without_calls": False}
_RAW_KIND = {"L2": "sqeuclidean", "IP": "ip", "COSINE": "cosine"}
_DB_NAME = re.compile(r"[A-Za-z0-9.\-_]+")  # what Milvus Lite accepts as a .db file name (< 36 chars)

# File-mode paths this process has open, with a reference count: Milvus Lite
# serves a .db from a child server that must be released to free the lock.
_FILE_USERS: dict[str, int] = {}
_FILE_USERS_LOCK = threading.Lock()


class MilvusStoreLockedError(RuntimeError):
    """A Milvus Lite ``.db`` file is in use by another process."""


class _OneLine(logging.Filter):
    """pymilvus logs a full traceback for every failed call: keep its first line."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        first = msg.split("\n", 1)[0]
        if first != msg or record.args:
            record.msg, record.args = first, None
        record.exc_info = record.exc_text = None
        return True


def quiet_pymilvus() -> None:
    """One line per failed pymilvus call (it logs tracebacks at ERROR), once per process; none
    at all under the command line (below -vv), whose own error line says what failed."""
    import pymilvus  # noqa: F401  (its import configures its loggers: quieten them after)

    from mcrecall.core.logs import quiet_library

    quiet_library("pymilvus")
    quiet_library("milvus_lite")
    for name in ("pymilvus.decorators", "pymilvus", "pymilvus.client.connection_manager",
                 "pymilvus.client.grpc_handler", "pymilvus.milvus_client.milvus_client"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _OneLine) for f in lg.filters):
            lg.addFilter(_OneLine())


def is_server_uri(uri: str) -> bool:
    """True for ``http://host:port``-style URIs, False for a Milvus Lite path."""
    return uri.lower().startswith(_SERVER_SCHEMES)


def id_key(item_id: str) -> int:
    """The int64 primary key of an item id: the first 8 bytes of BLAKE2b(UTF-8), signed.

    Collisions (probability ~n²/2⁶⁵) are detected when a version is written and
    on every read (the stored ``id`` must equal the id asked for).
    """
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


def _lock_path(db_file: str) -> str:
    return os.path.join(os.path.dirname(db_file), f".{os.path.basename(db_file)}.lock")


def _lock_holder_message(path: str) -> str:
    # the exact command that serves THIS file (a server on another file would not have the
    # versions published here); it has to wait for the holder to stop
    return (
        f"Milvus Lite database {path} is locked by another process (file mode serves one "
        "process). For several processes, stop the holder, run `mcrecall milvus --db "
        f"{shlex.quote(path)}` (a local Milvus Lite server on this same file) and set [index] "
        "uri = \"http://127.0.0.1:19530\" (or MCRECALL_INDEX_URI=http://127.0.0.1:19530) everywhere."
    )


def check_db_name(path: str) -> str:
    """Return the absolute path of a Milvus Lite ``.db`` file, or raise ``ValueError``."""
    name = os.path.basename(path)
    if not path.endswith(".db"):
        raise ValueError(f"milvus uri must be http://host:port or a Milvus Lite path ending in .db, got {path!r}")
    if not _DB_NAME.fullmatch(name) or len(name) >= 36:
        raise ValueError(
            f"Milvus Lite needs a .db file name of letters, digits, '.', '-', '_' and under 36 "
            f"characters, got {name!r}"
        )
    return os.path.abspath(path)


def check_not_locked(path: str) -> None:
    """Raise :class:`MilvusStoreLockedError` if another process holds the ``.db`` lock."""
    import fcntl

    abs_path = os.path.abspath(path)
    with _FILE_USERS_LOCK:
        if _FILE_USERS.get(abs_path):
            return  # this process serves it already (closing a probe fd would drop its lock)
    lock = _lock_path(abs_path)
    if not os.path.exists(lock):
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MilvusStoreLockedError(_lock_holder_message(abs_path)) from None
        fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _error_text(e: BaseException) -> str:
    """The server's own words, on one line."""
    details = getattr(e, "details", None)
    if callable(details):  # a raw grpc.RpcError
        try:
            return f"{e.code().name}: {details()}"
        except Exception:
            pass
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())


def _connection_lost(e: BaseException) -> bool:
    text = _error_text(e).lower()
    return any(s in text for s in ("unavailable", "connect", "closed channel", "deadline", "socket", "not ready",
                                   "cannot invoke rpc", "server is not"))


def _not_loaded(e: BaseException) -> bool:
    text = _error_text(e).lower()
    return "not loaded" in text or "not load" in text or "released" in text


def _gone(e: BaseException) -> bool:
    text = _error_text(e).lower()
    return "collection not found" in text or "can't find collection" in text or "not exist" in text


class MilvusVectorStore(VectorStore):
    """Milvus backend (Milvus Lite file, Milvus Lite server, or a Milvus server).

    Parameters
    ----------
    data_dir : path-like, optional
        Used for the default ``uri`` (``<data_dir>/milvus.db``).
    uri : str
        ``""``, a ``.db`` path (Milvus Lite, served to this process) or ``http://host:port``.
    collection, hnsw_m, ef_construction, ef_search, nlist, nprobe, timeout_s
        See :class:`mcrecall.plugins.base.VectorStore`. ``timeout_s`` bounds searches and
        reads; flush, index build and load have their own deadline
        (:data:`ADMIN_TIMEOUT_S`).
    token, user, password : str, optional
        Credentials (``token`` is ``user:password`` or an API key). Never logged.
    secure : bool
        TLS to the server.
    server_pem_path : str, optional
        CA / server certificate for TLS.

    Index types are what the connected engine builds: Milvus Lite ``FLAT``,
    ``IVF_FLAT``; a server also ``HNSW`` and ``IVF_SQ8``. ``AUTOINDEX`` is sized
    to the version at finalize: ``FLAT`` (exact) up to :data:`FLAT_MAX_ROWS`
    items, else ``IVF_FLAT`` with ``nlist = 4·sqrt(n)`` cells (capped by
    ``nlist``) and ``nprobe = max(nprobe, nlist/16)`` probes (recall@10 ≥ 0.99 on
    clustered item vectors, benchmarks/results/vector_stores.md).

    Exactly k: every search returns ``min(k, items)`` hits. IVF probes more cells
    as k grows, HNSW searches with ``ef ≥ k``; a result still short (or k beyond
    Milvus' 16,384) is answered by an exact scan of the version.
    """

    name = "milvus"
    index_types = ("AUTOINDEX", "FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8")
    auto_index_type = "AUTOINDEX"
    exact_index_types = ("FLAT",)

    def __init__(self, data_dir=None, uri: str = "", collection: str = "mcrecall_items", *,
                 token: str = "", user: str = "", password: str = "", secure: bool = False,
                 server_pem_path: str = "", **params):
        super().__init__(data_dir, uri, collection, **params)
        if not self.uri:
            if data_dir is None:
                raise ValueError("the milvus backend needs a uri or a data_dir (for <data_dir>/milvus.db)")
            self.uri = str(Path(data_dir) / "milvus.db")
        self._auth = {k: v for k, v in (("token", token), ("user", user), ("password", password),
                                        ("server_pem_path", server_pem_path)) if v}
        if secure:
            self._auth["secure"] = True
        self.file_path: str | None = None
        if not is_server_uri(self.uri):
            self.file_path = check_db_name(self.uri)
            Path(self.file_path).parent.mkdir(parents=True, exist_ok=True)
        quiet_pymilvus()
        self._lock = threading.RLock()
        self._client = self._connect()
        self.index_types = self._supported_index_types()
        self._pending: dict[int, tuple[VersionSpec, dict]] = {}
        self._specs: dict[int, VersionSpec] = {}
        self._counts: dict[int, int] = {}
        self._loaded: set[str] = set()

    # ------------------------------------------------------------------ connection
    def _connect(self):
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        if self.file_path is None:
            try:
                return MilvusClient(uri=self.uri, timeout=self.timeout_s, dedicated=True,
                                    grpc_options=_GRPC_OPTIONS, **self._auth)
            except MilvusException as e:
                raise ConnectionError(
                    f"cannot reach Milvus at {self.uri}: {_error_text(e)}. "
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

    def _supported_index_types(self) -> tuple[str, ...]:
        """Milvus Lite builds FLAT and IVF_FLAT only (and has no get_server_version)."""
        if self.file_path is not None:
            return ("AUTOINDEX",) + _LITE_INDEX_TYPES
        quiet = logging.getLogger("pymilvus.decorators")
        drop_all = logging.Filter("no such logger")  # Lite answers UNIMPLEMENTED: expected, not an error
        quiet.addFilter(drop_all)
        try:
            self._client.get_server_version(timeout=self.timeout_s)
        except Exception:
            return ("AUTOINDEX",) + _LITE_INDEX_TYPES
        finally:
            quiet.removeFilter(drop_all)
        return ("AUTOINDEX",) + _SERVER_INDEX_TYPES

    def _reconnect(self) -> None:
        """A new client after the server went away (its collections come back released)."""
        with self._lock:
            self._loaded.clear()
            if self.file_path is not None or self._client is None:
                return  # file mode: the child server is ours; nothing to redial
            fresh = self._connect()  # raises while the server is down: the old client stays
            old, self._client = self._client, fresh
            try:
                old.close()
            except Exception:
                pass

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
            try:  # last user in this process: stop the child server, free the lock
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self.file_path)
            except Exception:
                pass

    @property
    def client(self):
        if self._client is None:
            raise RuntimeError("this MilvusVectorStore is closed")
        return self._client

    def __repr__(self):  # never the credentials
        return f"{type(self).__name__}(collection={self.collection!r}, uri={self.uri!r})"

    # ------------------------------------------------------------------ names
    def collection_name(self, version: int) -> str:
        return f"{self.collection}_v{version}"

    @property
    def registry_name(self) -> str:
        return f"{self.collection}_versions"

    def _parse_version(self, name: str) -> int | None:
        m = re.fullmatch(re.escape(self.collection) + r"_v(\d+)", name)
        return int(m.group(1)) if m else None

    # ------------------------------------------------------------------ resilient calls
    def _retrying(self, fn, what: str, collection: str | None = None):
        """Run ``fn``; after a lost connection or a released collection, reconnect,
        reload and try again within ``timeout_s``; else raise the server's own words
        (the next call tries again: a restarted server is found within seconds)."""
        import grpc
        from pymilvus.exceptions import MilvusException

        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                if collection is not None:
                    self._ensure_loaded(collection)
                return fn()
            except (MilvusException, grpc.RpcError, ConnectionError, OSError) as e:
                if collection is not None and _gone(e):
                    raise
                retry_load = collection is not None and _not_loaded(e)
                if not (retry_load or _connection_lost(e)) or time.monotonic() > deadline:
                    raise ConnectionError(f"Milvus at {self.uri}: {what} failed: {_error_text(e)}") from None
                log.info("Milvus %s: %s; retrying", what, _error_text(e))
                if retry_load:
                    self._loaded.discard(collection)
                else:
                    try:
                        self._reconnect()
                    except Exception as again:
                        log.info("Milvus reconnect: %s", _error_text(again))
                time.sleep(0.5)

    def _ensure_loaded(self, name: str) -> None:
        if name in self._loaded:
            return
        from pymilvus.client.types import LoadState

        state = self.client.get_load_state(name).get("state")
        if state != LoadState.Loaded:
            # A reopened Milvus Lite collection (or a restarted server) starts released.
            self.client.load_collection(name, timeout=ADMIN_TIMEOUT_S)
        self._loaded.add(name)

    # ------------------------------------------------------------------ the version registry
    def _registry(self, create: bool = False) -> bool:
        """Make sure ``<collection>_versions`` exists and is loaded; False if absent."""
        from pymilvus import DataType, MilvusClient

        name, c = self.registry_name, self.client
        if name in self._loaded:
            return True
        if not c.has_collection(name):
            if not create:
                return False
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("pk", DataType.INT64, is_primary=True)
            schema.add_field("spec", DataType.VARCHAR, max_length=65535)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs one
            index = c.prepare_index_params()
            index.add_index("vector", index_type="FLAT", metric_type="L2", params={})
            try:
                c.create_collection(name, schema=schema, index_params=index, consistency_level="Strong",
                                    timeout=ADMIN_TIMEOUT_S)
            except Exception:
                if not c.has_collection(name):  # another writer created it first: fine
                    raise
        self._ensure_loaded(name)
        return True

    def _registry_rows(self, keys: list[int] | None = None) -> dict[int, str]:
        def read():
            if not self._registry():
                return {}
            if keys is None:
                rows = self.client.query(self.registry_name, filter="pk >= 0", output_fields=["pk", "spec"],
                                         consistency_level="Strong", timeout=max(self.timeout_s, REGISTRY_TIMEOUT_S))
            else:
                rows = self.client.get(self.registry_name, ids=keys, output_fields=["pk", "spec"],
                                       consistency_level="Strong", timeout=max(self.timeout_s, REGISTRY_TIMEOUT_S))
            return {int(r["pk"]): r["spec"] for r in rows}

        return self._retrying(read, "reading the version registry")

    def _current_rows(self) -> dict[int, str]:
        def read():
            if not self._registry():
                return {}
            rows = self.client.query(self.registry_name, filter="pk < 0", output_fields=["pk", "spec"],
                                     consistency_level="Strong", timeout=max(self.timeout_s, REGISTRY_TIMEOUT_S))
            return {int(r["pk"]): r["spec"] for r in rows}

        return self._retrying(read, "reading the current version")

    def _registry_write(self, key: int, text: str) -> None:
        def write():
            self._registry(create=True)
            self.client.upsert(self.registry_name, [{"pk": key, "spec": text, "vector": [0.0, 0.0]}],
                               timeout=ADMIN_TIMEOUT_S)
            self.client.flush(self.registry_name, timeout=ADMIN_TIMEOUT_S)

        self._retrying(write, "writing the version registry")

    def _registry_delete(self, key: int) -> None:
        def delete():
            if self._registry():
                self.client.delete(self.registry_name, ids=[key], timeout=ADMIN_TIMEOUT_S)
                self.client.flush(self.registry_name, timeout=ADMIN_TIMEOUT_S)

        self._retrying(delete, "writing the version registry")

    # ------------------------------------------------------------------ building
    def _create(self, spec: VersionSpec) -> None:
        from pymilvus import DataType, MilvusClient

        c, name = self.client, self.collection_name(spec.version)
        self._registry_delete(spec.version)  # a stale version of that number is unpublished first
        if c.has_collection(name):
            log.info("replacing stale non-current collection %s", name)
            c.drop_collection(name)
        self._forget(spec.version)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("id", DataType.VARCHAR, max_length=max(MAX_ID_BYTES, 1024))
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=spec.reduction.stored_dim)
        schema.add_field("norm", DataType.FLOAT)
        c.create_collection(name, schema=schema, consistency_level="Strong", timeout=ADMIN_TIMEOUT_S)
        self._pending[spec.version] = (spec, {})

    def _pending_spec(self, version: int) -> VersionSpec | None:
        p = self._pending.get(version)
        return p[0] if p else None

    def _add(self, version, ids, stored, norms) -> None:
        spec, seen = self._pending[version]
        # Keep the last vector of a repeated id (Milvus rejects duplicate keys in one batch).
        last = {i: r for r, i in enumerate(ids)}
        keys = {}
        for i in last:
            key = id_key(i)
            other = seen.get(key, i)
            if other != i or keys.get(key, i) != i:
                raise ValueError(f"item ids {i!r} and {other!r} hash to the same key; rename one")
            keys[key] = i
        vectors = stored.tolist()
        norm_list = norms.tolist()
        rows = [{"pk": k, "id": i, "vector": vectors[last[i]], "norm": norm_list[last[i]]} for k, i in keys.items()]
        name = self.collection_name(version)
        # insert is cheaper than upsert (no delete of an old row); upsert only when needed.
        if len(last) == len(ids) and seen.keys().isdisjoint(keys):
            self.client.insert(name, rows, timeout=ADMIN_TIMEOUT_S)
        else:
            self.client.upsert(name, rows, timeout=ADMIN_TIMEOUT_S)
        seen.update(keys)

    def _sized(self, spec: VersionSpec, n: int) -> VersionSpec:
        """The concrete index type and parameters of a version of ``n`` items."""
        p = dict(spec.params)
        index_type = spec.index_type
        if index_type == "AUTOINDEX":
            index_type = "FLAT" if n <= FLAT_MAX_ROWS else "IVF_FLAT"
            p["auto"] = True
        if index_type in ("IVF_FLAT", "IVF_SQ8"):
            nlist = max(1, min(p["nlist"], int(4 * math.sqrt(n)), 65536))
            p["nlist_used"] = nlist
            p["nprobe_used"] = min(nlist, max(p["nprobe"], nlist // 16 if p.get("auto") else 1))
        p["rows"] = n
        return VersionSpec(**{**spec.__dict__, "index_type": index_type, "params": p})

    def _index_params(self, spec: VersionSpec) -> dict:
        p = spec.params
        if spec.index_type == "HNSW":
            return {"M": p["hnsw_m"], "efConstruction": p["ef_construction"]}
        if spec.index_type in ("IVF_FLAT", "IVF_SQ8"):
            return {"nlist": p["nlist_used"]}
        return {}

    def _search_params(self, spec: VersionSpec, k: int, widen: bool = False) -> dict:
        p = spec.params
        if spec.index_type == "HNSW":
            return {"ef": min(32768, max(p["ef_search"], k * (4 if widen else 1)))}
        if spec.index_type in ("IVF_FLAT", "IVF_SQ8"):
            nlist, n = p["nlist_used"], max(1, p.get("rows", 1))
            if widen:
                return {"nprobe": nlist}
            # Probe enough cells to hold ~4k rows: a large k must not run out of candidates.
            need = math.ceil(4 * k * nlist / n)
            return {"nprobe": min(nlist, max(p.get("nprobe_used", p["nprobe"]), need))}
        return {}

    def _finalize(self, version: int) -> int:
        spec, seen = self._pending[version]
        if not seen:
            raise ValueError(f"version {version} has no items; upsert some before finalize")
        c, name = self.client, self.collection_name(version)
        c.flush(name, timeout=ADMIN_TIMEOUT_S)
        spec = self._sized(spec, len(seen))
        index_params = c.prepare_index_params()
        index_params.add_index("vector", index_type=spec.index_type, metric_type=spec.metric,
                               params=self._index_params(spec))
        c.create_index(name, index_params, timeout=ADMIN_TIMEOUT_S)
        self._wait_index(name, ADMIN_TIMEOUT_S)
        c.load_collection(name, timeout=ADMIN_TIMEOUT_S)
        self._loaded.add(name)
        self._wait_visible(name, len(seen), ADMIN_TIMEOUT_S)
        self._registry_write(version, spec.to_json())  # published: durable, survives restarts
        del self._pending[version]
        self._specs[version] = spec
        return len(seen)

    def _wait_index(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            info = self.client.describe_index(name, "vector", timeout=ADMIN_TIMEOUT_S)
            if info.get("state", "Finished") == "Finished" and not info.get("pending_index_rows", 0):
                return
            if info.get("state") == "Failed":
                raise RuntimeError(f"index build failed for {name}: {info.get('index_state_fail_reason', info)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"index of {name} not built within {timeout:.0f}s: {info}")
            time.sleep(0.2)

    def _wait_visible(self, name: str, expected: int, timeout: float) -> None:
        """Wait until a read at the searches' consistency level counts every row."""
        deadline = time.monotonic() + timeout
        while True:
            count = self._query_count(name, READ_CONSISTENCY)
            if count == expected:
                return
            if count > expected or time.monotonic() > deadline:
                raise RuntimeError(f"collection {name} shows {count} rows after load, expected {expected}")
            time.sleep(0.2)

    def _query_count(self, name: str, consistency: str = "Strong") -> int:
        res = self.client.query(name, filter="", output_fields=["count(*)"], consistency_level=consistency,
                                timeout=ADMIN_TIMEOUT_S)
        return int(res[0]["count(*)"])

    # ------------------------------------------------------------------ reading
    def _forget(self, version: int) -> None:
        self._specs.pop(version, None)
        self._counts.pop(version, None)
        self._loaded.discard(self.collection_name(version))

    def _spec(self, version: int) -> VersionSpec | None:
        spec = self._specs.get(version)
        if spec is not None:
            return spec
        text = self._registry_rows([version]).get(version)
        if text is None:
            return None
        spec = VersionSpec.from_json(text)
        self._specs[version] = spec  # finalized versions are immutable: cache
        return spec

    def _call(self, version: int, fn, what: str):
        """Run a read of a version: reload/reconnect through restarts; a dropped version
        raises VersionNotFoundError."""
        try:
            return self._retrying(fn, what, self.collection_name(version))
        except Exception as e:
            if _gone(e):
                self._forget(version)
                raise VersionNotFoundError(
                    f"version {version} of collection {self.collection!r} was dropped") from None
            raise

    def _search(self, spec, queries, k):
        n = spec.params.get("rows") or self._count(spec.version)
        want = min(k, n)
        if want > MAX_TOPK:
            return self._exact_search(spec, queries, want)
        name = self.collection_name(spec.version)
        ids, raw = self._search_rows(spec, name, queries, want, widen=False)
        short = [j for j, row in enumerate(ids) if len(row) < want]
        if short and spec.index_type not in self.exact_index_types:
            more_ids, more_raw = self._search_rows(spec, name, queries[short], want, widen=True)
            for j, a, b in zip(short, more_ids, more_raw, strict=False):
                ids[j], raw[j] = a, b
            short = [j for j, row in enumerate(ids) if len(row) < want]
        if short:  # the index still could not reach k items: scan the version
            log.info("%s: %d of %d searches short of k=%d; exact scan", name, len(short), len(ids), want)
            ex_ids, ex_raw, _ = self._exact_search(spec, queries[short], want)
            for j, a, b in zip(short, ex_ids, ex_raw, strict=False):
                ids[j], raw[j] = a, b
        return ids, raw, _RAW_KIND[spec.metric]

    def _search_rows(self, spec, name, queries, k, widen):
        search_params = {"metric_type": spec.metric, "params": self._search_params(spec, k, widen)}
        res = self._call(
            spec.version,
            lambda: self.client.search(name, data=queries.tolist(), limit=k, anns_field="vector",
                                       search_params=search_params, output_fields=["id"],
                                       consistency_level=READ_CONSISTENCY, timeout=self.timeout_s),
            "search",
        )
        ids = [[hit["entity"]["id"] for hit in hits] for hits in res]
        raw = [[hit["distance"] for hit in hits] for hits in res]
        return ids, raw

    def _scan(self, version: int):
        """Every (id, stored vector) of a version, by primary-key order pages."""
        name = self.collection_name(version)

        def read():
            it = self.client.query_iterator(name, batch_size=_SCAN_BATCH, filter="",
                                            output_fields=["id", "vector"], consistency_level=READ_CONSISTENCY,
                                            timeout=ADMIN_TIMEOUT_S)
            ids, vecs = [], []
            try:
                while True:
                    page = it.next()
                    if not page:
                        break
                    ids.extend(r["id"] for r in page)
                    vecs.extend(r["vector"] for r in page)
            finally:
                it.close()
            return ids, np.asarray(vecs, dtype=np.float32)

        return self._call(version, read, "scan")

    def _exact_search(self, spec, queries, k):
        """Exact top-k by numpy over every stored vector (raw values in Milvus' own units)."""
        ids, x = self._scan(spec.version)
        q = np.asarray(queries, dtype=np.float32)
        if spec.metric == "L2":
            raw = (q * q).sum(1)[:, None] - 2.0 * q @ x.T + (x * x).sum(1)[None, :]
            order = np.argsort(raw, axis=1, kind="stable")[:, :k]
        else:
            if spec.metric == "COSINE":
                q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
                x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
            raw = q @ x.T
            order = np.argsort(-raw, axis=1, kind="stable")[:, :k]
        out_ids = [[ids[c] for c in row] for row in order]
        out_raw = [np.take(raw[j], row).tolist() for j, row in enumerate(order)]
        return out_ids, out_raw, _RAW_KIND[spec.metric]

    def _get(self, version, ids):
        name = self.collection_name(version)
        out = {}
        for start in range(0, len(ids), _GET_CHUNK):
            chunk = ids[start : start + _GET_CHUNK]
            by_key = {id_key(i): i for i in chunk}
            rows = self._call(
                version,
                lambda by_key=by_key: self.client.get(name, ids=list(by_key), output_fields=["id", "vector", "norm"],
                                        consistency_level=READ_CONSISTENCY, timeout=self.timeout_s),
                "get",
            )
            for row in rows:
                if by_key.get(int(row["pk"])) == row["id"]:  # a hash collision is a miss
                    out[row["id"]] = (np.asarray(row["vector"], dtype=np.float32), float(row["norm"]))
        return out

    def _replace(self, spec, ids, stored, norms) -> None:
        """Item refresh: Milvus upserts into the published, loaded collection (ids unique), keyed
        like :meth:`_add` (int64 hash of the id; the id itself is a field, never an expression)."""
        name = self.collection_name(spec.version)
        keys = {id_key(i): i for i in ids}
        if len(keys) != len(ids):
            raise ValueError("two refreshed item ids hash to the same key; rename one")
        stored_ids = self._get(spec.version, ids)  # present with the same id: a plain replace
        clash = [i for i in ids if i not in stored_ids and self._key_taken(spec.version, id_key(i))]
        if clash:
            raise ValueError(f"item id {clash[0]!r} hashes to the key of another item; rename it")
        expected = self._query_count(name, READ_CONSISTENCY) + sum(i not in stored_ids for i in ids)
        vectors, norm_list = stored.tolist(), norms.tolist()
        rows = [{"pk": id_key(i), "id": i, "vector": vectors[r], "norm": norm_list[r]}
                for r, i in enumerate(ids)]
        for start in range(0, len(rows), 10_000):
            batch = rows[start : start + 10_000]
            self._call(spec.version, lambda batch=batch: self.client.upsert(name, batch, timeout=self.timeout_s),
                       "upsert")
        self._counts.pop(spec.version, None)
        # searches read at Bounded consistency: return once such a read sees every new row and
        # every replaced vector (a server applies the upsert a time tick later)
        wait_s = max(60.0, self.timeout_s)
        deadline = time.monotonic() + wait_s
        while True:
            seen = self._get(spec.version, ids)
            fresh = all(i in seen and np.allclose(seen[i][0], stored[r], rtol=1e-5, atol=1e-6)
                        for r, i in enumerate(ids))
            if fresh and self._query_count(name, READ_CONSISTENCY) == expected:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"upsert into {name} not visible to Bounded reads within "
                                   f"{wait_s:.0f}s")
            time.sleep(0.05)

    def _key_taken(self, version: int, key: int) -> bool:
        name = self.collection_name(version)
        rows = self._call(version, lambda: self.client.get(name, ids=[key], output_fields=["pk"],
                                                           consistency_level=READ_CONSISTENCY,
                                                           timeout=self.timeout_s), "get")
        return bool(rows)

    def _count(self, version: int) -> int:
        n = self._counts.get(version)
        if n is None:
            name = self.collection_name(version)
            n = self._counts[version] = self._call(version, lambda: self._query_count(name, READ_CONSISTENCY),
                                                   "count")
        return n

    # ------------------------------------------------------------------ versions
    def _versions(self) -> list[int]:
        rows = self._registry_rows()
        names = set(self._retrying(lambda: self.client.list_collections(), "list_collections"))
        return [v for v in rows if v >= 0 and self.collection_name(v) in names]

    def _current(self) -> int | None:
        rows = self._current_rows()
        return int(rows[min(rows)]) if rows else None

    def _set_current(self, version: int) -> None:
        key = -time.time_ns()
        self._registry_write(key, str(version))

        def tidy():  # older pointers, after the new one is visible
            self.client.delete(self.registry_name, filter=f"pk > {key} and pk < 0", timeout=ADMIN_TIMEOUT_S)
            self.client.flush(self.registry_name, timeout=ADMIN_TIMEOUT_S)

        self._retrying(tidy, "writing the version registry")

    def _stored_versions(self) -> list[int]:
        # Every collection of this base name, finalized or not: a killed writer's unfinalized
        # collection must be found to be removed (the registry, not a property, is the authority).
        return [v for v in map(self._parse_version, self.client.list_collections()) if v is not None]

    def _drop(self, version: int) -> None:
        name = self.collection_name(version)
        self._pending.pop(version, None)
        self._forget(version)
        self._registry_delete(version)  # unpublished before its data goes
        if not self.client.has_collection(name):
            raise VersionNotFoundError(f"version {version} of collection {self.collection!r} does not exist")
        self.client.drop_collection(name)

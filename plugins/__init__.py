"""Vector-store plugins: one small interface, backends resolved by name.

>>> from mcrecall.plugins import open_vector_store
>>> vs = open_vector_store("faiss", data_dir="mcrecall-data")        # doctest: +SKIP
>>> vs.create_version(1, dim=32, metric="IP", index_type="HNSW")      # doctest: +SKIP

Backends come from the entry-point group ``mcrecall.vector_stores`` (so a third
party can add one without editing this project) with a built-in map as a
fallback when mcrecall is not installed.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from mcrecall.plugins.base import MAX_ID_BYTES, VectorStore, VersionNotFoundError, VersionSpec
from mcrecall.plugins.metric import MetricReduction

ENTRY_POINT_GROUP = "mcrecall.vector_stores"
BUILTIN_BACKENDS = {
    "milvus": "mcrecall.plugins.milvus_store:MilvusVectorStore",
    "faiss": "mcrecall.plugins.faiss_store:FaissVectorStore",
    "hnswlib": "mcrecall.plugins.hnswlib_store:HnswlibVectorStore",
    "exact": "mcrecall.plugins.exact_store:ExactVectorStore",
}

__all__ = [
    "MAX_ID_BYTES",
    "MetricReduction",
    "VectorStore",
    "VersionNotFoundError",
    "VersionSpec",
    "available_backends",
    "backend_class",
    "open_vector_store",
    "vector_store_from_config",
]


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_backends() -> list[str]:
    """Names of the backends that can be opened (entry points ∪ built-ins)."""
    return sorted(set(BUILTIN_BACKENDS) | set(_entry_points()))


def backend_class(backend: str) -> type[VectorStore]:
    """The :class:`VectorStore` subclass registered under ``backend``.

    Raises
    ------
    ValueError
        Unknown backend name, or the entry point is not a VectorStore.
    """
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"backend must be a non-empty string, got {backend!r}")
    name = backend.lower()
    ep = _entry_points().get(name)
    if ep is not None:
        cls = ep.load()
    elif name in BUILTIN_BACKENDS:
        module, _, attr = BUILTIN_BACKENDS[name].partition(":")
        cls = getattr(importlib.import_module(module), attr)
    else:
        raise ValueError(
            f"unknown vector-store backend {backend!r}; available: {', '.join(available_backends())} "
            f"(third-party backends register in the {ENTRY_POINT_GROUP!r} entry-point group)"
        )
    if not (isinstance(cls, type) and issubclass(cls, VectorStore)):
        raise ValueError(f"backend {backend!r} resolves to {cls!r}, which is not a plugins.VectorStore")
    return cls


def open_vector_store(backend: str, data_dir=None, uri: str = "", collection: str = "mcrecall_items",
                      **options) -> VectorStore:
    """Open a vector store.

    Parameters
    ----------
    backend : str
        ``milvus``, ``faiss``, ``hnswlib``, ``exact`` or a registered entry point.
    data_dir : path-like, optional
        The mcrecall data directory.
    uri : str
        Backend address (Milvus: ``.db`` path or ``http://host:port``; "" = default).
    collection : str
        Base collection name.
    **options
        Index parameters: ``hnsw_m``, ``ef_construction``, ``ef_search``,
        ``nlist``, ``nprobe``, ``flat_max_items``, ``timeout_s``.

    Returns
    -------
    VectorStore
    """
    cls = backend_class(backend)
    try:
        return cls(data_dir=data_dir, uri=uri, collection=collection, **options)
    except TypeError as e:
        raise ValueError(f"bad options for backend {backend!r}: {e}") from None


def vector_store_from_config(cfg) -> VectorStore:
    """Open the vector store described by ``cfg.index`` (and ``cfg.data_dir``)."""
    i = cfg.index
    auth = {}
    if i.backend == "milvus":  # credentials and TLS: only the Milvus client takes them
        auth = {"token": i.token, "user": i.user, "password": i.password, "secure": i.secure,
                "server_pem_path": i.server_pem_path}
    return open_vector_store(
        i.backend,
        data_dir=cfg.data_dir,
        uri=i.uri,
        collection=i.collection,
        hnsw_m=i.hnsw_m,
        ef_construction=i.ef_construction,
        ef_search=i.ef_search,
        nlist=i.nlist,
        nprobe=i.nprobe,
        flat_max_items=i.flat_max_items,
        timeout_s=i.timeout_s,
        **auth,
    )

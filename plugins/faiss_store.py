"""``faiss``: Faiss flat or HNSW indexes, one index file per version under the data dir."""

from __future__ import annotations

import numpy as np

from mcrecall.plugins.file_store import FileVectorStore, LoadedVersion


def _faiss():
    import faiss  # imported lazily: a heavy import not every process needs

    return faiss


class FaissVectorStore(FileVectorStore):
    """Faiss backend.

    Index types: ``FLAT`` (``IndexFlatIP`` / ``IndexFlatL2``, exact) and ``HNSW``
    (``IndexHNSWFlat`` with ``hnsw_m``, ``ef_construction``, ``ef_search``).
    Faiss has no cosine metric: ``COSINE`` is inner product over unit-normalised
    stored vectors and queries.
    """

    name = "faiss"
    index_types = ("FLAT", "HNSW")
    auto_index_type = "HNSW"
    exact_index_types = ("FLAT",)
    index_file = "index.faiss"

    def _build_index(self, spec, stored):
        faiss = _faiss()
        d = stored.shape[1]
        metric = faiss.METRIC_L2 if spec.metric == "L2" else faiss.METRIC_INNER_PRODUCT
        x = stored
        if spec.metric == "COSINE":
            x = np.ascontiguousarray(stored / np.linalg.norm(stored, axis=1, keepdims=True), dtype=np.float32)
        if spec.index_type == "FLAT":
            index = faiss.IndexFlat(d, metric)
        else:
            index = faiss.IndexHNSWFlat(d, spec.params["hnsw_m"], metric)
            index.hnsw.efConstruction = spec.params["ef_construction"]
        index.add(x)
        return index

    def _save_index(self, index, path):
        _faiss().write_index(index, str(path))

    def _load_index(self, spec, path, stored):
        return _faiss().read_index(str(path))

    def _search_index(self, loaded: LoadedVersion, queries: np.ndarray, k: int):
        faiss = _faiss()
        spec = loaded.spec
        q = queries
        if spec.metric == "COSINE":
            q = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)
        if spec.index_type == "HNSW":
            # efSearch below k would cap the results; per-call params keep this thread-safe.
            params = faiss.SearchParametersHNSW(efSearch=max(self.params["ef_search"], k))
            dist, labels = loaded.index.search(q, k, params=params)
        else:
            dist, labels = loaded.index.search(q, k)
        kind = {"L2": "sqeuclidean", "IP": "ip", "COSINE": "cosine"}[spec.metric]
        return labels, dist, kind

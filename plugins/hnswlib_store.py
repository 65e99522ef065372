"""``hnswlib``: hnswlib HNSW (or its brute-force ``BFIndex``) per version under the data dir."""

from __future__ import annotations

import threading

import numpy as np

from mcrecall.plugins.file_store import FileVectorStore, LoadedVersion

_SPACE = {"L2": "l2", "IP": "ip", "COSINE": "cosine"}


class HnswlibVectorStore(FileVectorStore):
    """hnswlib backend.

    Index types: ``HNSW`` (``hnswlib.Index`` with ``hnsw_m``, ``ef_construction``,
    ``ef_search``) and ``FLAT`` (``hnswlib.BFIndex``, exact). hnswlib returns
    squared L2, ``1 - ip`` and ``1 - cos`` for its three spaces; they are turned
    back into ``sqeuclidean`` / ``ip`` / ``cosine`` raw values here.
    """

    name = "hnswlib"
    index_types = ("FLAT", "HNSW")
    auto_index_type = "HNSW"
    exact_index_types = ("FLAT",)
    index_file = "index.hnsw"
    random_seed = 100

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ef_lock = threading.Lock()

    def _new(self, spec, n: int, dim: int):
        import hnswlib

        if spec.index_type == "FLAT":
            index = hnswlib.BFIndex(space=_SPACE[spec.metric], dim=dim)
            index.init_index(max_elements=n)
        else:
            index = hnswlib.Index(space=_SPACE[spec.metric], dim=dim)
            index.init_index(
                max_elements=n,
                ef_construction=spec.params["ef_construction"],
                M=spec.params["hnsw_m"],
                random_seed=self.random_seed,
            )
        return index

    def _build_index(self, spec, stored):
        index = self._new(spec, stored.shape[0], stored.shape[1])
        if spec.metric == "COSINE":  # normalise explicitly; do not rely on the index type
            stored = np.ascontiguousarray(stored / np.linalg.norm(stored, axis=1, keepdims=True), dtype=np.float32)
        index.add_items(stored, np.arange(stored.shape[0]))
        return index

    def _save_index(self, index, path):
        index.save_index(str(path))

    def _load_index(self, spec, path, stored):
        import hnswlib

        if spec.index_type == "FLAT":
            index = hnswlib.BFIndex(space=_SPACE[spec.metric], dim=stored.shape[1])
            index.load_index(str(path), max_elements=stored.shape[0])
        else:
            index = hnswlib.Index(space=_SPACE[spec.metric], dim=stored.shape[1])
            index.load_index(str(path), max_elements=stored.shape[0])
            index.set_ef(self.params["ef_search"])
        return index

    def _search_index(self, loaded: LoadedVersion, queries: np.ndarray, k: int):
        index = loaded.index
        metric = loaded.spec.metric
        if metric == "COSINE":  # hnswlib.BFIndex does not normalise queries itself
            queries = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True), dtype=np.float32)
        try:
            if loaded.spec.index_type == "HNSW" and k > self.params["ef_search"]:
                # hnswlib cannot return more than ef results; ef is index state, so
                # raise it under a lock (concurrent small-k searches only get a bigger ef).
                with self._ef_lock:
                    index.set_ef(k)
                    try:
                        labels, dist = index.knn_query(queries, k=k)
                    finally:
                        index.set_ef(self.params["ef_search"])
            else:
                labels, dist = index.knn_query(queries, k=k)
        except RuntimeError as e:
            if "contiguous 2D array" not in str(e):
                raise
            # The graph search reached fewer than k items for some query: report "none" and
            # let VectorStore.search_batch answer with its exact scan (exactly k, never short).
            empty = np.full((len(queries), 0), -1, dtype=np.int64)
            return empty, np.zeros((len(queries), 0)), "sqeuclidean" if metric == "L2" else (
                "ip" if metric == "IP" else "cosine")
        labels = labels.astype(np.int64)
        if metric == "L2":
            return labels, dist, "sqeuclidean"
        return labels, 1.0 - dist.astype(np.float64), "ip" if metric == "IP" else "cosine"

"""``exact``: numpy brute force over each version's vectors (files under the data dir).

The reference backend: no index, so its top-k is exactly the model's (within
float32 rounding) for every similarity and metric. Fine up to ~10^5–10^6 items.
"""

from __future__ import annotations

import numpy as np

from mcrecall.plugins.file_store import FileVectorStore, LoadedVersion
from mcrecall.plugins.metric import top_k


class ExactVectorStore(FileVectorStore):
    """Exact search with numpy; versions stored as ``.npy`` files."""

    name = "exact"
    index_types = ("FLAT",)
    auto_index_type = "FLAT"
    exact_index_types = ("FLAT",)
    index_file = None

    def _build_index(self, spec, stored):
        return None

    def _load_index(self, spec, path, stored):
        # Precompute what each metric's scan needs once per loaded version.
        if spec.metric == "COSINE":
            return stored / np.linalg.norm(stored, axis=1, keepdims=True)
        if spec.metric == "L2":
            return np.einsum("ij,ij->i", stored, stored)
        return None

    def _search_index(self, loaded: LoadedVersion, queries: np.ndarray, k: int):
        metric = loaded.spec.metric
        if metric == "COSINE":
            q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
            raw = q @ loaded.index.T
            labels = top_k(raw, k, largest=True)
            kind = "cosine"
        elif metric == "IP":
            raw = queries @ loaded.stored.T
            labels = top_k(raw, k, largest=True)
            kind = "ip"
        else:
            qq = np.einsum("ij,ij->i", queries, queries)[:, None]
            raw = qq + loaded.index[None, :] - 2.0 * (queries @ loaded.stored.T)
            labels = top_k(raw, k, largest=False)
            kind = "sqeuclidean"
        return labels, np.take_along_axis(raw, labels, axis=1), kind

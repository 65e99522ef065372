"""Helpers for tests and benchmarks of the trainer (not used at run time)."""

from __future__ import annotations

import numpy as np

from .synthetic import Synthetic


def fill_store(data_dir, data: Synthetic, mask: np.ndarray | None = None, batch: int = 200_000):
    """Write (a subset of) synthetic triples into ``<data_dir>/triples.lmdb``; returns store seq."""
    from mcrecall.ingest.store import TripleStore

    idx = np.arange(len(data)) if mask is None else np.nonzero(mask)[0]
    store = TripleStore(data_dir)
    try:
        for s in range(0, len(idx), batch):
            j = idx[s:s + batch]
            store.put_scores([data.user_ids[u] for u in data.user_idx[j]],
                             [data.item_ids[i] for i in data.item_idx[j]],
                             data.score[j].astype(int).tolist())
        return store.seq
    finally:
        store.close()


def small_config(data_dir, backend: str = "exact", metric: str = "IP", index_type: str = "FLAT",
                 **train):
    """A config on ``data_dir`` with the given [train] overrides (environment ignored)."""
    from mcrecall.core.config import load_config

    return load_config(environ={}).with_overrides(
        store={"data_dir": str(data_dir)},
        index={"backend": backend, "metric": metric, "index_type": index_type},
        train=train,
    )

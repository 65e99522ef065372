"""Publish a model version from given vectors, without training (tests and benchmarks).

The version goes through the same :func:`mcrecall.train.publish.publish` as a trained one (users.lmdb
rows, vector-store collection, metadata, the atomic pointer flip, old versions dropped), with
metadata in the trainer's format, including the ``foldin`` section :func:`mcrecall.train.foldin.fold_in`
reads. Nothing here is used at run time.
"""

from __future__ import annotations

import time

import numpy as np


def foldin_meta(item_vectors: np.ndarray, *, objective: str = "implicit", similarity: str = "dot",
                reg: float = 0.1, alpha: float = 3.0, mu: float = 0.0,
                score_scale: float = 1.0) -> dict:
    """The ``foldin`` metadata section for a plain-layout (``implicit``) or biased-layout
    (``squared`` + ``dot``: items ``[b, β, 1]``) version with these published item vectors
    (:func:`mcrecall.train.foldin.foldin_section`, the trainer's writer)."""
    from mcrecall.train.foldin import foldin_section

    return foldin_section(np.asarray(item_vectors, dtype=np.float64), objective=objective,
                          similarity=similarity, reg=reg, alpha=alpha, mu=mu,
                          score_scale=score_scale)


def publish_vectors(registry, vs, *, user_ids: list[str], user_vectors: np.ndarray,
                    item_ids: list[str], item_vectors: np.ndarray, metric: str = "IP",
                    index_type: str = "FLAT", objective: str = "implicit",
                    similarity: str = "dot", reg: float = 0.1, alpha: float = 3.0,
                    mu: float = 0.0, score_scale: float = 1.0, store_seq: int = 0,
                    popular_items: list | None = None, version: int | None = None,
                    log=lambda *_: None, model_log=None, extra_meta: dict | None = None) -> int:
    """Publish one complete version and make it current; returns its number.

    Parameters
    ----------
    registry : train.versions.ModelRegistry (writable)
    vs : plugins.VectorStore
    user_ids, user_vectors, item_ids, item_vectors : the published (model-space) vectors.
    metric, index_type : the collection's.
    objective, similarity, reg, alpha, mu, score_scale : what fold-in must reproduce.
    store_seq : triple-store seq the version "was trained on" (users changed later fold in).
    popular_items : ``[[item_id, score], ...]``, best first (default: the first 20 items).
    version : number to publish (default: one more than any seen).
    model_log : a :class:`mcrecall.train.model_log.ModelLog` to replicate through (optional).
    extra_meta : more metadata keys (e.g. ``store_offsets``).
    """
    from mcrecall.train.publish import next_version, publish

    item_vectors = np.asarray(item_vectors, dtype=np.float32)
    user_vectors = np.asarray(user_vectors, dtype=np.float32)
    if version is None:
        version = next_version(registry, vs)
    if popular_items is None:
        popular_items = [[i, float(20 - j)] for j, i in enumerate(item_ids[:20])]
    meta = {
        "dim": int(item_vectors.shape[1]),
        "similarity": similarity,
        "metric": metric,
        "backend": getattr(vs, "name", "?"),
        "collection": getattr(vs, "collection", "?"),
        "created_at": time.time(),
        "n_triples": 0,
        "store_seq": int(store_seq),
        "reg": float(reg),
        "evaluation": {},
        "popular_items": [[str(i), float(s)] for i, s in popular_items],
        "score_scale": float(score_scale),
        "foldin": foldin_meta(item_vectors, objective=objective, similarity=similarity, reg=reg,
                              alpha=alpha, mu=mu, score_scale=score_scale),
    }
    meta.update(extra_meta or {})
    return publish(registry, vs, version=int(version), user_ids=list(user_ids),
                   user_vectors=user_vectors, item_ids=list(item_ids), item_vectors=item_vectors,
                   meta=meta, metric=metric, index_type=index_type, log=log, model_log=model_log)

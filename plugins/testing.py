"""Data and reference answers for testing and benchmarking vector-store backends.

Used by ``tests/test_plugins_*.py`` and ``benchmarks/bench_vector_stores.py``;
a third-party backend can run the same checks. Nothing here is used at run time.
"""

from __future__ import annotations

import numpy as np

from plugins.metric import MetricReduction


def clustered_vectors(n: int, dim: int, n_clusters: int = 100, spread: float = 0.35, seed: int = 0,
                      norm_range: tuple[float, float] = (0.5, 2.0)) -> np.ndarray:
    """Item-like vectors: Gaussian clusters around random centres, with varied norms.

    Trained item embeddings are far from uniform: they cluster (genres, topics)
    and their norms vary with popularity. ANN defaults are judged on such data;
    uniform random vectors are the hard case (see :func:`uniform_vectors`).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    label = rng.integers(0, n_clusters, size=n)
    x = centres[label] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x *= rng.uniform(*norm_range, size=(n, 1))
    return x.astype(np.float32)


def uniform_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """I.i.d. Gaussian vectors: no structure, the worst case for graph/IVF indexes."""
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def queries_like(items: np.ndarray, n: int, seed: int = 1, noise: float = 0.3) -> np.ndarray:
    """Queries drawn near the item distribution (user vectors live in the same space)."""
    rng = np.random.default_rng(seed)
    base = items[rng.integers(0, len(items), size=n)]
    scale = float(np.linalg.norm(items, axis=1).mean())
    q = base + noise * scale * rng.normal(size=base.shape) / np.sqrt(items.shape[1])
    return q.astype(np.float32)


def brute_force_topk(queries, items, k: int, similarity: str = "dot") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of the model score by numpy, in float64: (indices, scores), best first."""
    red = MetricReduction(similarity, "IP", np.asarray(items).shape[1])
    scores = red.model_scores(queries, items)
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    return idx, np.take_along_axis(scores, idx, axis=1)


def recall_at_k(found: list[list[str]], truth: list[list[str]]) -> float:
    """Mean fraction of the true top-k ids that were found."""
    hits = [len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 0.0


def checkerboard(n_blocks: int = 4, items_per_block: int = 6, seed: int = 0):
    """A planted block structure whose withheld item must be recalled first.

    In the spirit of implicit's checkerboard test: users of block ``b`` like the
    items of block ``b``. The query of block ``b`` is its direction; all items
    of block ``b`` but one are excluded (the user has seen them), so the right
    answer is the withheld item of the same block. Distractors make wrong
    reductions fail: small-norm items near the origin win an L2 search that
    skips the inner-product reduction (``dot``) or the unit normalisation
    (``cosine``); large-norm "hub" items weakly aligned with every block are
    runners-up for every query.

    Returns
    -------
    ids : list of str
    vectors : numpy.ndarray, shape (n, dim)
    cases : list of (query vector, excluded ids, expected first id)
    """
    rng = np.random.default_rng(seed)
    dim = n_blocks + 2
    eye = np.eye(dim, dtype=np.float64)
    hub_dir = eye[:n_blocks].sum(axis=0) / np.sqrt(n_blocks)
    ids, vecs, cases = [], [], []
    for b in range(n_blocks):
        block_ids = []
        for j in range(items_per_block):
            # the withheld item (j == 0) has the largest norm: dot ranks it first
            scale = 3.0 if j == 0 else rng.uniform(0.8, 2.0)
            v = eye[b] * scale + 0.02 * rng.normal(size=dim) * np.r_[np.zeros(n_blocks), np.ones(2)]
            ids.append(f"b{b}i{j}")
            block_ids.append(f"b{b}i{j}")
            vecs.append(v)
        cases.append((eye[b].astype(np.float32), set(block_ids[1:]), block_ids[0]))
    for j in range(n_blocks * 2):  # tiny items near the origin (naive-L2 trap under dot)
        v = 0.05 * rng.normal(size=dim)
        v[n_blocks] = 0.05
        ids.append(f"tiny{j}")
        vecs.append(v)
    for j in range(3):  # big hubs weakly aligned with every block (naive-IP trap under cosine)
        v = 2.5 * hub_dir + 0.4 * eye[n_blocks + 1] * (j + 1)
        ids.append(f"hub{j}")
        vecs.append(v)
    return ids, np.asarray(vecs, dtype=np.float32), cases

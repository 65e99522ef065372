"""Data and reference answers for testing and benchmarking vector-store backends.

Used by the behavioural suite (``plugins/testsuite.py``, which a backend's tests subclass),
``tests/`` and ``benchmarks/``. Nothing here is used at run time.
"""

from __future__ import annotations

import numpy as np

from mcrecall.plugins.metric import MetricReduction


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
    hits = [len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth, strict=False)]
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


# --------------------------------------------------------------------------- shared checks
# Each ``check_*`` takes an open store of any backend and raises AssertionError on a failure; the
# behavioural suite (plugins/testsuite.py) runs them for every backend that subclasses it.

#: Ids that break naive code: quotes, backslash, control characters, NUL in the middle and at
#: either end (numpy's fixed-width strings strip trailing NULs), non-ASCII, brackets, commas,
#: and filter-expression injections. Every store must return each exactly as given.
HOSTILE_IDS = [
    "it's", "rock'n'roll", 'say "hi"', "back\\slash", "trailing\\", "new\nline", "cr\rlf\n",
    "tab\tbed", "nul\x00mid", "tail\x00", "\x00head", "\x00", "naïve ünï 日本語 🎵", "[bracket]",
    "{brace}", "a,b,c", "x'] or not id in ['", 'x"] or id != ["', '" or 1==1 or "', "id in [1]",
    "id like '%'", "%", "*", "%_*", " ",
    "trailing space ", "42", "0", "-1", "1e3", "null", "é" * 64,  # 128 UTF-8 bytes
]


def _one_hot_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """n item vectors where item j is the unique best match of query j (for j < dim)."""
    rng = np.random.default_rng(seed)
    x = 0.05 * rng.normal(size=(n, dim))
    for j in range(min(n, dim)):
        x[j, j] = 3.0 + 0.01 * j
    return x.astype(np.float32)


def check_hostile_ids_round_trip(store, version: int, index_type: str = "FLAT") -> None:
    """Hostile ids survive upsert -> search / get_vectors / exclude exactly as given."""
    ids = list(HOSTILE_IDS) + [f"plain{j}" for j in range(8)]
    dim = len(ids)
    x = _one_hot_vectors(len(ids), dim)
    store.create_version(version, dim, "IP", index_type)
    store.upsert(version, ids, x, batch_size=7)
    assert store.finalize(version) == len(ids)
    eye = np.eye(dim, dtype=np.float32)
    results = store.search_batch(version, eye, 1)
    got = [r[0][0] for r in results]
    assert got == ids, [(a, b) for a, b in zip(got, ids, strict=False) if a != b]
    everything = store.search(version, eye[0], len(ids) + 5)
    assert sorted(i for i, _ in everything) == sorted(ids), "search over all items lost or changed ids"
    assert len({i for i, _ in everything}) == len(ids), "an id came back twice"
    np.testing.assert_allclose(store.get_vectors(version, ids), x, rtol=1e-6, atol=1e-6)
    for j, hostile in enumerate(ids):
        rest = [i for i, _ in store.search(version, eye[j], 3, exclude=[hostile])]
        assert hostile not in rest and len(rest) == 3, (hostile, rest)
        assert rest == [i for i, _ in store.search(version, eye[j], 4)][1:], (hostile, rest)  # only it
    # an expression-shaped id excludes itself only
    assert len(store.search(version, eye[0], len(ids), exclude=["x'] or not id in ['"])) == len(ids) - 1
    # an excluded id that only looks like another one excludes nothing else
    near = store.search(version, eye[ids.index("tail\x00")], 1, exclude=["tail", "tail\x00\x00"])
    assert near[0][0] == "tail\x00", near
    # unknown ids that resemble stored ones are unknown, not matched
    got = store.get_vectors(version, ["tail", "nul", "x'] or id in ['"], missing="nan")
    assert np.isnan(got).all()
    try:  # prefixes of NUL-carrying ids are other ids
        store.get_vectors(version, ["tail", "nul"])
    except KeyError:
        pass
    else:
        raise AssertionError("get_vectors found ids that were never stored")


def check_exactly_k(store, version: int, index_type: str, n: int = 300, dim: int = 16,
                    seed: int = 0) -> None:
    """``search`` returns min(k, items not excluded) distinct items, best first, for k around
    and beyond the version's size, with and without exclusions."""
    x = clustered_vectors(n, dim, n_clusters=max(2, n // 40), seed=seed)
    ids = [f"i{j}" for j in range(n)]
    store.create_version(version, dim, "IP", index_type)
    store.upsert(version, ids, x)
    store.finalize(version)
    q = queries_like(x, 4, seed=seed + 1)
    excluded = [ids[3], ids[n // 2], ids[-1], "not-an-item", "another-unknown"]
    in_version = 3
    for k in (1, 10, n - 1, n, n + 7, 3 * n):
        for exclude in ((), excluded):
            want = min(k, n - (in_version if exclude else 0))
            results = store.search_batch(version, q, k, exclude=[exclude] * len(q) if exclude else None)
            for res in results:
                got = [i for i, _ in res]
                assert len(got) == want, (index_type, k, len(exclude), len(got), want)
                assert len(set(got)) == len(got), "repeated ids"
                assert not set(got) & set(exclude)
                scores = [s for _, s in res]
                assert all(a >= b - 1e-6 for a, b in zip(scores, scores[1:], strict=False)), "not best first"

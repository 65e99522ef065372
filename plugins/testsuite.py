"""The behavioural suite every vector-store backend passes, as pytest classes to subclass.

A backend's test module subclasses :class:`VectorStoreBehaviour`, names its registered
backend (built-in, or a ``mcrecall.vector_stores`` entry point) and pytest collects the
whole suite for it, in the manner of implicit's ``TestRecommenderBaseMixin``::

    from mcrecall.plugins.testsuite import VectorStoreBehaviour

    class TestMyStore(VectorStoreBehaviour):
        backend = "mystore"            # the entry-point name
        ann_index_types = ("HNSW",)    # approximate index types it builds, if any

The suite needs pytest and nothing of this project's ``tests/``: it uses pytest's own
``tmp_path`` and the two fixtures below. A backend that is not opened by a data directory
(a server address, a shared collection name) overrides the ``store_args`` fixture, which
may take any fixture of its own. Nothing here is used at run time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mcrecall.plugins import VersionNotFoundError, open_vector_store
from mcrecall.plugins.metric import MetricReduction
from mcrecall.plugins.testing import (
    HOSTILE_IDS,
    brute_force_topk,
    check_exactly_k,
    check_hostile_ids_round_trip,
    checkerboard,
    clustered_vectors,
    queries_like,
    recall_at_k,
)

SIMILARITIES = ["dot", "cosine"]
METRICS = ["L2", "IP", "COSINE"]


class StoreOpener:
    """The ``open_vector_store`` arguments of one test, and the stores opened with them.

    Parameters
    ----------
    args : dict
        ``backend``, ``data_dir``, ``uri``, ``collection`` (JSON-serialisable: another
        process opens the same store with them).
    """

    def __init__(self, args: dict):
        self.args = dict(args)
        self.opened = []

    def open(self, **options):
        store = open_vector_store(**self.args, **options)
        self.opened.append(store)
        return store

    def release(self):
        """Close every store this test opened (frees a one-process lock such as Milvus Lite's)."""
        while self.opened:
            self.opened.pop().close()


def publish(store, version, ids, vectors, metric="IP", index_type="FLAT", similarity="dot", batch_size=10_000):
    """create_version -> upsert -> finalize; returns the item count."""
    max_norm = float(np.linalg.norm(vectors, axis=1).max())
    store.create_version(version, vectors.shape[1], metric, index_type, similarity=similarity, max_norm=max_norm)
    store.upsert(version, ids, vectors, batch_size=batch_size)
    return store.finalize(version)


def assert_exact_topk(result, scores, ids, k, tol=1e-4):
    """``result`` equals numpy's top-k of ``scores`` (ids in order, model scores), tie-tolerant."""
    order = np.argsort(-scores, kind="stable")[:k]
    got_ids = [i for i, _ in result]
    got_scores = np.array([s for _, s in result])
    index_of = {i: n for n, i in enumerate(ids)}
    assert len(result) == k
    # the scores returned are the model's scores of the returned ids...
    np.testing.assert_allclose(got_scores, scores[[index_of[i] for i in got_ids]], rtol=1e-4, atol=tol)
    # ...and they are exactly numpy's top-k scores, best first
    np.testing.assert_allclose(got_scores, scores[order], rtol=1e-4, atol=tol)
    # ids equal wherever the true scores are not within float32 noise of a neighbour
    padded = np.r_[np.inf, scores[order], -np.inf]
    for pos in range(k):
        if padded[pos] - padded[pos + 1] > tol and padded[pos + 1] - padded[pos + 2] > tol:
            assert got_ids[pos] == ids[order[pos]], (pos, got_ids, [ids[o] for o in order])


_READER = r"""
import json, sys
import numpy as np
from mcrecall.plugins import open_vector_store
args = json.loads(sys.argv[1])
store = open_vector_store(**args["store"])
q = np.asarray(args["queries"], dtype=np.float32)
out = {"current": store.current_version(), "versions": store.list_versions(),
       "results": store.search_batch(None, q, 5),
       "vector": store.get_vectors(args["version"], [args["id"]]).tolist()}
store.close()
print(json.dumps(out))
"""


def run_reader(stores: StoreOpener, queries, version, item_id) -> dict:
    """Open the store in a fresh Python process and read the current version back."""
    payload = json.dumps({"store": stores.args, "queries": np.asarray(queries).tolist(),
                          "version": version, "id": item_id})
    # the child sees what this process sees: the project and any backend's distribution
    path = os.pathsep.join(os.path.abspath(p) for p in sys.path if p)
    proc = subprocess.run([sys.executable, "-c", _READER, payload], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": path})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _index_types(store) -> list[str]:
    # what the connected engine builds (Milvus Lite: FLAT, IVF_FLAT; a server: also HNSW, IVF_SQ8)
    return [t for t in dict.fromkeys(store.index_types) if t != "AUTOINDEX"]


def _needs_exact_fallback(store):
    if not store.has_exact_fallback:
        pytest.skip(f"{store.name} has no exact-search hook yet (_exact_search / _iter_stored)")


class VectorStoreBehaviour:
    """What every vector store does, whatever its engine (DESIGN §5–6); subclass to run it.

    Attributes
    ----------
    backend : str
        The registered name, as ``open_vector_store`` takes it (required).
    ann_index_types : tuple of str
        Approximate index types whose recall@10 is checked (empty: an exact-only backend).
    reopens_in_process : bool
        A second client of the same store can be opened in this process (Milvus Lite's file
        mode: one client per process).
    honours_flat_max_items : bool
        Versions of at most ``flat_max_items`` items get a FLAT index (a backend that sizes its
        own index, like Milvus' AUTOINDEX, says False).
    default_config_items : int
        Items in the default-configuration agreement test.
    tightest_search_options : dict
        Options that make the approximate index answer as short as it can; the store must
        still return exactly k.
    """

    backend: str = ""
    ann_index_types: tuple[str, ...] = ()
    reopens_in_process: bool = True
    honours_flat_max_items: bool = True
    default_config_items: int = 12_000
    tightest_search_options: dict = {"ef_search": 8, "nprobe": 1}

    @pytest.fixture
    def store_args(self, tmp_path) -> dict:
        """``open_vector_store`` arguments of one test; override for a server or a shared name."""
        if not self.backend:
            pytest.fail(f"{type(self).__name__} must set `backend` to a registered backend name")
        return {"backend": self.backend, "data_dir": str(tmp_path / "data"), "uri": "", "collection": "items"}

    @pytest.fixture
    def stores(self, store_args):
        """Opens stores with ``store_args`` and closes them all after the test."""
        opener = StoreOpener(store_args)
        yield opener
        opener.release()

    # ----------------------------------------------------------------------- basic operations
    def test_roundtrip_upsert_get_search(self, stores):
        store = stores.open()
        rng = np.random.default_rng(0)
        x = rng.normal(size=(60, 8)).astype(np.float32)
        ids = [f"item-{i}" for i in range(60)]
        store.create_version(1, 8, "IP", "FLAT")
        assert store.list_versions() == []  # not finalized yet
        store.upsert(1, ids[:25], x[:25], batch_size=7)
        store.upsert(1, ids[25:], x[25:] * 0 + 9)  # overwritten below: last write wins
        store.upsert(1, ids[25:], x[25:])
        store.upsert(1, ["item-0", "item-0"], np.stack([x[1], x[0]]))  # repeated in one batch
        assert store.finalize(1) == 60
        assert store.count(1) == 60
        assert store.list_versions() == [1]

        np.testing.assert_allclose(store.get_vectors(1, ["item-3", "item-0", "item-59"]), x[[3, 0, 59]], rtol=1e-6)
        with pytest.raises(KeyError, match="nope"):
            store.get_vectors(1, ["item-1", "nope"])
        got = store.get_vectors(1, ["nope", "item-1"], missing="nan")
        assert np.isnan(got[0]).all() and np.allclose(got[1], x[1])

        q = rng.normal(size=(4, 8)).astype(np.float32)
        scores = q.astype(np.float64) @ x.T.astype(np.float64)
        for j in range(4):
            assert_exact_topk(store.search(1, q[j], 5), scores[j], ids, 5)
        batch = store.search_batch(1, q, 5)
        assert [[i for i, _ in r] for r in batch] == [[i for i, _ in store.search(1, q[j], 5)] for j in range(4)]

        # exclude: the k best among the rest
        best = [i for i, _ in store.search(1, q[0], 3)]
        rest = store.search(1, q[0], 3, exclude=best + ["not-an-item"])
        assert not set(best) & {i for i, _ in rest}
        assert [i for i, _ in rest] == [i for i, _ in store.search(1, q[0], 6)][3:]
        per_query = store.search_batch(1, q[:2], 2, exclude=[best[:1], []])
        assert best[0] not in [i for i, _ in per_query[0]] and len(per_query[1]) == 2

        assert len(store.search(1, q[0], 1000)) == 60  # k above the size: all of them
        assert store.search_batch(1, np.zeros((0, 8), np.float32), 3) == []

    def test_versions_current_and_drop(self, stores):
        store = stores.open()
        x = clustered_vectors(40, 8, n_clusters=4)
        ids = [f"i{i}" for i in range(40)]
        assert store.current_version() is None
        with pytest.raises(VersionNotFoundError):
            store.search(None, x[0], 3)
        publish(store, 1, ids, x)
        store.create_version(2, 8, "IP", "FLAT")
        with pytest.raises(VersionNotFoundError):
            store.make_current(2)  # not finalized
        with pytest.raises(VersionNotFoundError):
            store.make_current(7)
        store.upsert(2, ids, x * 2)
        store.finalize(2)
        store.make_current(1)
        assert store.current_version() == 1
        assert store.search(None, x[0], 1)[0][1] == pytest.approx(store.search(1, x[0], 1)[0][1])
        store.make_current(2)
        assert store.current_version() == 2
        with pytest.raises(ValueError, match="current"):
            store.drop_version(2)
        with pytest.raises(ValueError, match="current"):
            store.create_version(2, 8, "IP", "FLAT")
        with pytest.raises(ValueError, match="immutable"):
            store.upsert(2, ["new"], x[:1])
        store.drop_version(1)
        assert store.list_versions() == [2]
        with pytest.raises(VersionNotFoundError):
            store.search(1, x[0], 3)
        with pytest.raises(VersionNotFoundError):
            store.drop_version(1)
        # a stale, non-current version (a crashed run) is replaced by create_version
        store.create_version(3, 8, "IP", "FLAT")
        store.upsert(3, ids[:5], x[:5])
        store.create_version(3, 8, "L2", "FLAT", max_norm=10.0)
        store.upsert(3, ids[:2], x[:2])
        assert store.finalize(3) == 2
        assert store.version_info(3).metric == "L2"
        assert store.list_versions() == [2, 3]

        reopened = stores.open() if self.reopens_in_process else store
        assert reopened.current_version() == 2
        assert reopened.search(None, x[0], 2) == store.search(2, x[0], 2)

    def test_bad_input_is_a_clear_error(self, stores):
        store = stores.open()
        x = clustered_vectors(20, 8, n_clusters=2)
        ids = [f"i{i}" for i in range(20)]
        with pytest.raises(ValueError, match="unknown metric"):
            store.create_version(1, 8, "MANHATTAN", "FLAT")
        with pytest.raises(ValueError, match="unknown index type"):
            store.create_version(1, 8, "IP", "IVF_PQ_SPECIAL")
        with pytest.raises(ValueError, match="unknown similarity"):
            store.create_version(1, 8, "IP", "FLAT", similarity="euclid")
        with pytest.raises(ValueError, match="max_norm is required"):
            store.create_version(1, 8, "L2", "FLAT", similarity="dot")
        with pytest.raises(ValueError, match="dim"):
            store.create_version(1, 0, "IP", "FLAT")
        with pytest.raises(VersionNotFoundError, match="create_version"):
            store.upsert(1, ids, x)

        store.create_version(1, 8, "L2", "FLAT", max_norm=1.0)
        with pytest.raises(ValueError, match="exceeds max_norm"):
            store.upsert(1, ["big"], np.full((1, 8), 3.0, np.float32))
        store.create_version(1, 8, "IP", "FLAT")
        with pytest.raises(ValueError, match="dimension 8"):
            store.upsert(1, ids, x[:, :7])
        bad = x.copy()
        bad[3, 2] = np.nan
        with pytest.raises(ValueError, match="NaN or infinite"):
            store.upsert(1, ids, bad)
        bad[3, 2] = np.inf
        with pytest.raises(ValueError, match="NaN or infinite"):
            store.upsert(1, ids, bad)
        with pytest.raises(ValueError, match="bytes long"):
            store.upsert(1, ["x" * 300], x[:1])
        with pytest.raises(ValueError, match="non-empty"):
            store.upsert(1, [""], x[:1])
        with pytest.raises(ValueError, match="ids but"):
            store.upsert(1, ids[:3], x[:4])
        with pytest.raises(ValueError, match="no items"):
            store.finalize(1)
        store.upsert(1, ids, x)
        store.finalize(1)
        for k in (0, -1, 1.5, True, "3"):
            with pytest.raises(ValueError, match="k must be a positive integer"):
                store.search(1, x[0], k)
        with pytest.raises(ValueError, match="dimension 8"):
            store.search(1, x[0, :5], 3)
        with pytest.raises(ValueError, match="NaN"):
            store.search(1, np.full(8, np.nan), 3)
        with pytest.raises(ValueError, match="one collection of ids per query"):
            store.search_batch(1, x[:2], 3, exclude=[["i1"]])
        with pytest.raises(ValueError, match="version"):
            store.search(-1, x[0], 3)
        # nothing of that was stored
        assert store.count(1) == 20

    # ----------------------------------------------------------------------- the metric contract
    @pytest.mark.parametrize("similarity", SIMILARITIES)
    def test_checkerboard_withheld_item_comes_first(self, stores, similarity):
        """implicit's checkerboard idea: a planted block structure, the withheld item first, every metric."""
        store = stores.open()
        ids, x, cases = checkerboard()
        for v, metric in enumerate(METRICS, start=1):
            publish(store, v, ids, x, metric=metric, similarity=similarity)
            for query, seen, expected in cases:
                top = store.search(v, query, 3, exclude=seen)
                assert top[0][0] == expected, (metric, similarity, top)
                want = float(MetricReduction(similarity, "IP", x.shape[1]).model_scores(
                    query, x[ids.index(expected)])[0, 0])
                assert top[0][1] == pytest.approx(want, rel=1e-4, abs=1e-5)

    @pytest.mark.parametrize("similarity", SIMILARITIES)
    def test_flat_index_equals_numpy_brute_force(self, stores, similarity):
        """Every (similarity, metric): the exact index returns numpy's top-k and the model's scores."""
        store = stores.open()
        rng = np.random.default_rng(7)
        x = (rng.normal(size=(300, 16)) * rng.uniform(0.2, 3.0, size=(300, 1))).astype(np.float32)
        q = rng.normal(size=(12, 16)).astype(np.float32) * 2
        ids = [f"i{i}" for i in range(300)]
        truth = MetricReduction(similarity, "IP", 16).model_scores(q, x)
        for v, metric in enumerate(METRICS, start=1):
            publish(store, v, ids, x, metric=metric, similarity=similarity, batch_size=128)
            results = store.search_batch(v, q, 10)
            for j in range(len(q)):
                assert_exact_topk(results[j], truth[j], ids, 10)

    @pytest.mark.parametrize("metric", METRICS)
    def test_ann_recall_on_clustered_vectors(self, stores, metric):
        """recall@10 >= 0.95 against brute force for each ANN index type at its default parameters."""
        if not self.ann_index_types:
            pytest.skip(f"{self.backend} has no approximate index")
        store = stores.open(flat_max_items=0)  # the approximate index itself, not the small-version FLAT
        x = clustered_vectors(4000, 32, n_clusters=40, seed=3)
        q = queries_like(x, 40, seed=4)
        ids = [f"i{i}" for i in range(len(x))]
        for similarity in SIMILARITIES:
            if similarity == "cosine" and metric != "COSINE":
                continue  # cosine through any metric is one unit-sphere problem; test it once
            truth_idx, _ = brute_force_topk(q, x, 10, similarity)
            truth = [[ids[t] for t in row] for row in truth_idx]
            for v, index_type in enumerate(self.ann_index_types, start=1):
                publish(store, v, ids, x, metric=metric, index_type=index_type, similarity=similarity)
                found = [[i for i, _ in r] for r in store.search_batch(v, q, 10)]
                r = recall_at_k(found, truth)
                assert r >= 0.95, (index_type, metric, similarity, r)
                store.drop_version(v)

    # ----------------------------------------------------------------------- processes and swaps
    def test_published_version_is_readable_from_another_process(self, stores):
        store = stores.open()
        x = clustered_vectors(200, 8, n_clusters=5, seed=9)
        ids = [f"i{i}" for i in range(200)]
        publish(store, 4, ids, x, metric="L2", similarity="dot")
        store.make_current(4)
        q = queries_like(x, 3, seed=2)
        expected = store.search_batch(4, q, 5)
        stores.release()  # Milvus Lite file mode: one process at a time
        out = run_reader(stores, q, 4, "i7")
        assert out["current"] == 4 and out["versions"] == [4]
        assert [[i for i, _ in r] for r in out["results"]] == [[i for i, _ in r] for r in expected]
        np.testing.assert_allclose([[s for _, s in r] for r in out["results"]],
                                   [[s for _, s in r] for r in expected], rtol=1e-5)
        np.testing.assert_allclose(out["vector"][0], x[7], rtol=1e-6)

    def test_version_swap_under_load_is_never_empty_or_mixed(self, stores):
        """A thread searching the current version while new versions are published sees whole versions only."""
        store = stores.open()
        n, dim = 300, 8
        base = clustered_vectors(n, dim, n_clusters=6, seed=5)
        q = queries_like(base, 1, seed=6)[0]

        def version_data(v):  # each version's ids carry its signature
            return [f"v{v}-{i}" for i in range(n)], base * (1 + 0.1 * v)

        publish(store, 1, *version_data(1))
        store.make_current(1)
        seen, problems, stop = set(), [], threading.Event()

        def reader():
            while not stop.is_set():
                try:
                    res = store.search(None, q, 10)
                except Exception as e:  # any error is a failure of the swap
                    problems.append(repr(e))
                    continue
                sigs = {i.split("-")[0] for i, _ in res}
                if len(res) != 10 or len(sigs) != 1:
                    problems.append(res)
                seen.update(sigs)

        t = threading.Thread(target=reader)
        t.start()
        try:
            for v in (2, 3, 4):
                publish(store, v, *version_data(v), batch_size=64)
                store.make_current(v)
                time.sleep(0.05)
                store.drop_version(v - 2) if v >= 3 else None  # keep the previous one for in-flight reads
        finally:
            deadline = time.monotonic() + 30  # a search on a server takes longer than a flip
            while "v4" not in seen and not problems and t.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.1)
            stop.set()
            t.join(timeout=60)
        assert not problems, problems[:3]
        assert {"v4"} <= seen and len(seen) >= 2
        assert store.current_version() == 4 and store.list_versions() == [3, 4]

    # ----------------------------------------------------------------------- ids are data, exactly k
    def test_hostile_ids_come_back_exactly_as_stored(self, stores):
        """Quotes, backslash, newline, tab, NUL (middle and end), non-ASCII, brackets, commas and an
        expression-shaped id round-trip through upsert, search, get_vectors and exclude..."""
        store = stores.open()
        types = _index_types(store)
        for v, index_type in enumerate(types, start=1):
            check_hostile_ids_round_trip(store, v, index_type)
        store.make_current(len(types))
        stores.release()
        # ... and read back exactly by another process
        dim = len(HOSTILE_IDS) + 8
        j = HOSTILE_IDS.index("tail\x00")
        out = run_reader(stores, np.eye(dim)[[j, 0, HOSTILE_IDS.index("x'] or not id in ['")]], len(types), "tail\x00")
        assert [r[0][0] for r in out["results"]] == ["tail\x00", HOSTILE_IDS[0], "x'] or not id in ['"]
        assert out["vector"][0][j] > 2.9

    @pytest.mark.parametrize("n", [44, 700])
    def test_search_returns_exactly_k_on_every_index_type(self, stores, n):
        """min(k, items not excluded) distinct items for k = 1, 10, n-1, n, > n, with exclusions,
        with the index type really used (no switch to FLAT for small versions)."""
        store = stores.open(flat_max_items=0)
        _needs_exact_fallback(store)
        for v, index_type in enumerate(_index_types(store), start=1):
            check_exactly_k(store, v, index_type, n=n, seed=v)
            store.drop_version(v)

    def test_search_returns_exactly_k_with_the_tightest_search_parameters(self, stores):
        """Exactly k even when the index is told to look as little as it can (one probe, a beam
        of one): the store completes the short answer."""
        store = stores.open(flat_max_items=0, **self.tightest_search_options)
        _needs_exact_fallback(store)
        for v, index_type in enumerate(_index_types(store), start=1):
            check_exactly_k(store, v, index_type, n=700, seed=v + 10)
            store.drop_version(v)

    def test_small_versions_are_served_flat_and_exact(self, stores):
        if not self.honours_flat_max_items:
            pytest.skip(f"{self.backend} sizes its own index parameters")
        store = stores.open(flat_max_items=500)
        x = clustered_vectors(400, 16, n_clusters=8, seed=1)
        index_type = self.ann_index_types[0] if self.ann_index_types else "FLAT"
        publish(store, 1, [f"i{j}" for j in range(400)], x, index_type=index_type)
        assert store.version_info(1).index_type == "FLAT"

    def test_default_config_top10_matches_exact_on_clustered_data(self, stores):
        """The default configuration (AUTOINDEX, default parameters) agrees with brute force."""
        store = stores.open()
        n = self.default_config_items
        x = clustered_vectors(n, 32, n_clusters=60, seed=11)
        q = queries_like(x, 100, seed=12)
        ids = [f"i{j}" for j in range(n)]
        publish(store, 1, ids, x, index_type="AUTOINDEX")
        truth_idx, _ = brute_force_topk(q, x, 10, "dot")
        truth = [[ids[t] for t in row] for row in truth_idx]
        found = [[i for i, _ in r] for r in store.search_batch(1, q, 10)]
        assert all(len(f) == 10 for f in found)
        overlap = recall_at_k(found, truth)
        assert overlap >= 0.99, (store.version_info(1).index_type, overlap)

    # ----------------------------------------------------------------------- item refresh
    @pytest.mark.parametrize("similarity,metric", [("dot", "IP"), ("dot", "L2"), ("dot", "COSINE"), ("cosine", "IP")])
    def test_replace_items_updates_a_published_version_exactly(self, stores, similarity, metric):
        """replace_items replaces and adds items of a current version: FLAT search stays the exact
        model top-k of the updated set, get_vectors/count follow, another process sees it."""
        store = stores.open()
        n, dim = 200, 8
        x = clustered_vectors(n, dim, n_clusters=5, seed=11)
        ids = [f"i{i}" for i in range(n)]
        publish(store, 3, ids, x, metric=metric, similarity=similarity)
        store.make_current(3)
        rng = np.random.default_rng(0)
        max_norm = float(np.linalg.norm(x, axis=1).max())
        # two rounds: the second replaces an item the first added and one it replaced
        rounds = [(["i3", "i50", "new'\\\"\n\t1", "new2"], 0), (["new2", "i3", "new3"], 1)]
        table = dict(zip(ids, x, strict=False))
        for round_ids, _ in rounds:
            v = rng.normal(size=(len(round_ids), dim)).astype(np.float32)
            v *= (0.9 * max_norm / np.linalg.norm(v, axis=1))[:, None]  # within M
            assert store.replace_items(3, round_ids, v) == len(round_ids)
            table.update(zip(round_ids, v, strict=False))
        all_ids = list(table)
        all_x = np.stack([table[i] for i in all_ids])
        assert store.count(3) == n + 3
        np.testing.assert_allclose(store.get_vectors(3, ["new3", "i3", "i4"]),
                                   np.stack([table["new3"], table["i3"], table["i4"]]), rtol=1e-5, atol=1e-6)
        red = MetricReduction(similarity, "IP", dim)
        for q in queries_like(all_x, 4, seed=3):
            res = store.search(3, q, 10)
            assert_exact_topk(res, red.model_scores(q, all_x)[0], all_ids, 10)
            excl = {res[0][0]}
            assert res[0][0] not in [i for i, _ in store.search(3, q, 10, exclude=excl)]
        # the new item is searchable by its own direction, also with k beyond the index
        top = store.search(3, table["new3"], n + 50)
        assert len(top) == n + 3 and "new3" in [i for i, _ in top[:5]]
        if similarity == "dot" and metric != "IP":
            with pytest.raises(ValueError, match="max_norm"):
                store.replace_items(3, ["i1"], [x[0] * 0 + 2 * max_norm / np.sqrt(dim)])
        with pytest.raises(VersionNotFoundError):
            store.replace_items(99, ["i1"], x[:1])
        assert store.replace_items(3, [], np.zeros((0, dim))) == 0
        q = queries_like(all_x, 2, seed=8)
        expected = store.search_batch(3, q, 5)
        stores.release()
        out = run_reader(stores, q, 3, "new3")
        assert [[i for i, _ in r] for r in out["results"]] == [[i for i, _ in r] for r in expected]
        np.testing.assert_allclose(out["vector"][0], table["new3"], rtol=1e-5, atol=1e-6)

    def test_replace_items_keeps_other_versions_apart(self, stores):
        """Refreshing version 3 changes nothing in version 4, and publishing 4 starts clean."""
        store = stores.open()
        x = clustered_vectors(100, 6, n_clusters=4, seed=2)
        ids = [f"i{i}" for i in range(100)]
        publish(store, 3, ids, x)
        store.make_current(3)
        store.replace_items(3, ["fresh"], x[:1] * 0.5)
        publish(store, 4, ids, x)
        assert store.count(3) == 101 and store.count(4) == 100
        assert np.isnan(store.get_vectors(4, ["fresh"], missing="nan")).all()

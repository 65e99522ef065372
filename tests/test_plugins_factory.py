"""The factory, the entry-point group and the metric reduction in isolation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mcrecall import plugins
from mcrecall.core.config import load_config
from mcrecall.plugins import available_backends, backend_class, open_vector_store, vector_store_from_config
from mcrecall.plugins.exact_store import ExactVectorStore
from mcrecall.plugins.faiss_store import FaissVectorStore
from mcrecall.plugins.hnswlib_store import HnswlibVectorStore
from mcrecall.plugins.metric import MetricReduction
from mcrecall.plugins.milvus_store import MilvusVectorStore


def test_builtin_backends_resolve_to_their_classes():
    assert {"milvus", "faiss", "hnswlib", "exact"} <= set(available_backends())
    assert backend_class("milvus") is MilvusVectorStore
    assert backend_class("FAISS") is FaissVectorStore
    assert backend_class("hnswlib") is HnswlibVectorStore
    assert backend_class("exact") is ExactVectorStore


def test_entry_points_are_declared_for_every_builtin():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group=plugins.ENTRY_POINT_GROUP)}
    if not eps:
        pytest.skip("mcrecall is not installed; the built-in map is used")
    assert eps == {k: v for k, v in plugins.BUILTIN_BACKENDS.items() if k in eps}


def test_unknown_backend_and_bad_options(tmp_path):
    with pytest.raises(ValueError, match="unknown vector-store backend 'qdrantx'.*exact"):
        open_vector_store("qdrantx", data_dir=tmp_path)
    with pytest.raises(ValueError, match="bad options"):
        open_vector_store("exact", data_dir=tmp_path, colour="blue")
    with pytest.raises(ValueError, match="ef_search"):
        open_vector_store("faiss", data_dir=tmp_path, ef_search=0)
    with pytest.raises(ValueError, match="collection"):
        open_vector_store("exact", data_dir=tmp_path, collection="bad-name")
    with pytest.raises(ValueError, match="data_dir"):
        open_vector_store("hnswlib")


def test_vector_store_from_config(tmp_path):
    cfg = load_config(environ={}).with_overrides(
        store={"data_dir": str(tmp_path)}, index={"backend": "hnswlib", "ef_search": 77, "collection": "c1"}
    )
    vs = vector_store_from_config(cfg)
    assert isinstance(vs, HnswlibVectorStore)
    assert vs.params["ef_search"] == 77 and vs.collection == "c1"
    assert vs.root == tmp_path / "vectors" / "c1"


def test_autoindex_maps_to_the_backend_default(tmp_path):
    assert open_vector_store("faiss", data_dir=tmp_path)._resolve_index_type("autoindex") == "HNSW"
    assert open_vector_store("exact", data_dir=tmp_path)._resolve_index_type("AUTOINDEX") == "FLAT"
    # milvus sizes AUTOINDEX to the version at finalize (FLAT when small, else IVF_FLAT)
    assert MilvusVectorStore.auto_index_type == "AUTOINDEX" and HnswlibVectorStore.auto_index_type == "HNSW"
    assert load_config(environ={}).index.index_type == "AUTOINDEX"
    with pytest.raises(ValueError, match="exact"):
        open_vector_store("exact", data_dir=tmp_path)._resolve_index_type("HNSW")


@pytest.mark.parametrize("similarity,metric", list(itertools.product(["dot", "cosine"], ["L2", "IP", "COSINE"])))
def test_reduction_recovers_model_scores_from_every_raw_kind(similarity, metric):
    """scores(raw distance of stored vectors) == model score, for every pair (DESIGN §5)."""
    rng = np.random.default_rng(1)
    b = rng.normal(size=(50, 6)).astype(np.float32) * rng.uniform(0.1, 4, size=(50, 1)).astype(np.float32)
    a = rng.normal(size=(7, 6)).astype(np.float32) * 3
    red = MetricReduction(similarity, metric, 6, max_norm=float(np.linalg.norm(b, axis=1).max()))
    sb, nb = red.items(b)
    sa, na = red.queries(a)
    assert sb.shape[1] == red.stored_dim == (7 if red.augmented else 6)
    want = red.model_scores(a, b)
    sa64, sb64 = sa.astype(np.float64), sb.astype(np.float64)
    raw = {
        "L2": ("sqeuclidean", ((sa64[:, None, :] - sb64[None, :, :]) ** 2).sum(-1)),
        "IP": ("ip", sa64 @ sb64.T),
        "COSINE": ("cosine", (sa64 @ sb64.T) / np.outer(np.linalg.norm(sa64, axis=1), np.linalg.norm(sb64, axis=1))),
    }[metric]
    np.testing.assert_allclose(red.scores(raw[1], raw[0], na), want, rtol=1e-4, atol=1e-4)
    # the index's own order is the model's order
    order_index = np.argsort(raw[1] if metric == "L2" else -raw[1], axis=1)[:, :5]
    assert (np.take_along_axis(want, order_index, 1) >= np.sort(want, axis=1)[:, ::-1][:, 4:5] - 1e-4).all()
    np.testing.assert_allclose(red.restore_items(sb, nb), b, rtol=1e-5, atol=1e-6)


def test_reduction_rejects_what_it_cannot_represent():
    with pytest.raises(ValueError, match="max_norm is required"):
        MetricReduction("dot", "COSINE", 4)
    with pytest.raises(ValueError, match="max_norm"):
        MetricReduction("dot", "L2", 4, max_norm=float("nan"))
    with pytest.raises(ValueError, match="non-zero"):
        MetricReduction("cosine", "IP", 2).items([[0, 0]])
    with pytest.raises(ValueError, match="zero query"):
        MetricReduction("dot", "COSINE", 2, max_norm=1).queries([[0, 0]])
    assert MetricReduction("dot", "IP", 2).scores([[5.0]], "ip", [1.0])[0, 0] == 5.0
    assert MetricReduction("dot", "l2", 2, max_norm=1).metric == "L2"


def test_default_exact_fallback_scans_what_iter_stored_yields(tmp_path):
    """A backend with only ``_iter_stored`` gets exactly k from the base class's exact scan, for
    every metric, even when its index answers short; without either hook answers stay short."""
    import numpy as np

    from mcrecall.plugins.base import VectorStore
    from mcrecall.plugins.exact_store import ExactVectorStore
    from mcrecall.plugins.testing import clustered_vectors

    class ShortIndex(ExactVectorStore):
        """An 'approximate' index that loses everything past the 7th hit."""

        _exact_search = VectorStore._exact_search

        def _search(self, spec, queries, k):
            ids, raw, kind = super()._search(spec, queries, k)
            return [r[:7] for r in ids], [r[:7] for r in raw], kind

        def _iter_stored(self, version):
            loaded = self.load(version)
            for s in range(0, len(loaded.ids), 13):  # small chunks: the merge across them counts
                yield loaded.ids.take(range(s, min(s + 13, len(loaded.ids)))), loaded.stored[s:s + 13]

    class NoHook(ShortIndex):
        _iter_stored = VectorStore._iter_stored

    x = clustered_vectors(100, 8, n_clusters=5, seed=2)
    ids = [f"i{j}" for j in range(100)]
    q = x[:3] + 0.1
    for metric in ("IP", "L2", "COSINE"):
        ref = ExactVectorStore(data_dir=tmp_path / f"ref{metric}")
        short = ShortIndex(data_dir=tmp_path / f"short{metric}")
        for vs in (ref, short):
            vs.create_version(1, 8, metric, "FLAT", max_norm=float(np.linalg.norm(x, axis=1).max()))
            vs.upsert(1, ids, x)
            vs.finalize(1)
        assert short.has_exact_fallback
        for k in (5, 30, 100, 150):
            want = ref.search_batch(1, q, k, exclude=[["i0", "i9"]] * 3)
            got = short.search_batch(1, q, k, exclude=[["i0", "i9"]] * 3)
            assert [[i for i, _ in r] for r in got] == [[i for i, _ in r] for r in want], (metric, k)
            np.testing.assert_allclose([[s for _, s in r] for r in got], [[s for _, s in r] for r in want],
                                       rtol=1e-5, atol=1e-6)
    nohook = NoHook(data_dir=tmp_path / "nohook")
    nohook.create_version(1, 8, "IP", "FLAT")
    nohook.upsert(1, ids, x)
    nohook.finalize(1)
    assert not nohook.has_exact_fallback
    assert len(nohook.search(1, q[0], 30)) == 7

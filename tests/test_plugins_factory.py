"""The factory, the entry-point group and the metric reduction in isolation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import plugins
from mcrecall.config import load_config
from plugins import available_backends, backend_class, open_vector_store, vector_store_from_config
from plugins.exact_store import ExactVectorStore
from plugins.faiss_store import FaissVectorStore
from plugins.hnswlib_store import HnswlibVectorStore
from plugins.metric import MetricReduction
from plugins.milvus_store import MilvusVectorStore


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

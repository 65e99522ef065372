"""Every (similarity, metric) publishes vectors whose exact search is the model's own ranking."""

import numpy as np
import pytest

from mcrecall.plugins import open_vector_store
from mcrecall.train.synthetic import make_synthetic
from mcrecall.train.testing import fill_store, small_config
from mcrecall.train.trainer import train_run
from mcrecall.train.versions import ModelRegistry

BACKENDS = ["exact"]
try:  # faiss flat as a second exact index, where it is installed
    import faiss  # noqa: F401

    BACKENDS.append("faiss")
except ImportError:
    pass


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=200, n_items=120, n_triples=5000, seed=4)


CASES = [(b, m, s, o) for m in ("IP", "L2", "COSINE")
         for s, o in (("dot", "squared"), ("cosine", "squared"), ("dot", "implicit"),
                      ("dot", "bce"), ("cosine", "bce"))
         for b in BACKENDS if b == "exact" or o == "squared"]  # faiss flat: one per similarity


@pytest.mark.parametrize("backend,metric,similarity,objective", CASES)
def test_exact_search_equals_model_ranking(tmp_path, data, backend, metric, similarity,
                                           objective):
    fill_store(tmp_path, data)
    cfg = small_config(tmp_path, backend=backend, metric=metric, index_type="FLAT", dim=6,
                       epochs=3, similarity=similarity, objective=objective)
    res = train_run(cfg, log=lambda s: None)
    assert res.status == "published"
    reg = ModelRegistry(tmp_path, readonly=True)
    meta = reg.metadata(res.version)
    vs = open_vector_store(backend, data_dir=tmp_path, collection=cfg.index.collection)
    # the model's own scores, from the published model-space vectors
    item_ids = sorted({data.item_ids[i] for i in np.unique(data.item_idx)})
    items = vs.get_vectors(res.version, item_ids, missing="nan")
    known = ~np.isnan(items).any(1)
    item_ids = [i for i, k in zip(item_ids, known, strict=False) if k]
    items = items[known].astype(np.float64)
    assert len(item_ids) == meta["n_items"]
    checked = 0
    for uid in data.user_ids[:40]:
        u = reg.user_vector(res.version, uid)
        if u is None:
            continue
        if similarity == "cosine":
            model = (items @ u) / (np.linalg.norm(items, axis=1) * np.linalg.norm(u))
        else:
            model = items @ u
        k = 10
        order = np.argsort(-model, kind="stable")
        got = vs.search(res.version, u, k)
        got_ids = [g[0] for g in got]
        want_ids = [item_ids[j] for j in order[:k]]
        # equal up to exact ties at the boundary: compare scores, then ids where scores differ
        got_scores = np.array([g[1] for g in got])
        np.testing.assert_allclose(got_scores, model[order[:k]], rtol=1e-4, atol=1e-4)
        gap = np.diff(model[order[: k + 1]])
        distinct = np.abs(gap) > 1e-4
        for r in range(k):
            if (r == 0 or distinct[r - 1]) and (r == k - 1 or distinct[r]):
                assert got_ids[r] == want_ids[r]
        checked += 1
    assert checked >= 30
    vs.close()
    reg.close()

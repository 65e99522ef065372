"""One place per rule (issue 13 §3): each shared rule gives what its former copies gave.

The former copies are written out here as the reference, so a change to the one rule that
alters its numbers fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn

from mcrecall.plugins.metric import MetricReduction, cross_scores, pair_scores


# -- the score formula -------------------------------------------------------------------------
@pytest.fixture
def vecs():
    rng = np.random.default_rng(3)
    return rng.normal(size=(7, 5)), rng.normal(size=(11, 5))


def test_pair_scores_numpy_match_the_former_serve_formula(vecs):
    a, V = vecs
    for sim in ("dot", "cosine"):
        old = V @ a[0]  # serve/client.py's former _score_at
        if sim == "cosine":
            old = old / (np.linalg.norm(V, axis=1) * np.linalg.norm(a[0]))
        new = pair_scores(a[0][None, :], V, sim, 2.5)
        np.testing.assert_allclose(new, old * 2.5, rtol=1e-13)


def test_cross_scores_match_the_former_reference(vecs):
    a, b = vecs
    for sim in ("dot", "cosine"):
        old = a @ b.T  # plugins/metric.py's former MetricReduction.model_scores
        if sim == "cosine":
            old /= np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None, :]
        np.testing.assert_allclose(cross_scores(a, b, sim), old, rtol=1e-13)
        np.testing.assert_allclose(MetricReduction(sim, "IP", 5).model_scores(a, b), old,
                                   rtol=1e-13)


def test_pair_scores_torch_equal_the_former_training_formulas_bit_for_bit(vecs):
    a = torch.from_numpy(vecs[0].astype(np.float32))
    b = torch.from_numpy(vecs[1][:7].astype(np.float32))
    s = torch.tensor(3.0, requires_grad=True)
    old_cos = s * (Fn.normalize(a, dim=-1) * Fn.normalize(b, dim=-1)).sum(-1)  # sgd.py
    new_cos = pair_scores(a, b, "cosine", s)
    assert torch.equal(old_cos, new_cos)
    new_cos.sum().backward()  # the learnt scale still takes a gradient
    assert s.grad is not None
    assert torch.equal(pair_scores(a, b, "dot", 1.7), 1.7 * (a * b).sum(1))  # als.py / evaluate


def test_models_predict_through_the_one_formula():
    from mcrecall.train.als import ALS
    from mcrecall.train.sgd import BCE

    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 20, 300), rng.integers(0, 30, 300)
    y = rng.integers(0, 5, 300).astype(np.float32)
    m = ALS(u, i, y, 20, 30, objective="implicit", similarity="cosine", dim=4)
    m.init_factors(0)
    m.fit(2, log=lambda s: None)
    tu, ti = torch.arange(20), torch.arange(20)
    assert torch.equal(m.predict(tu, ti), m.scale * (m.U[tu] * m.V[ti]).sum(1))
    b = BCE(u, i, y, 20, 30, similarity="cosine", dim=4)
    b.init_factors(0)
    want = b.scale * (Fn.normalize(b.U[tu], dim=-1) * Fn.normalize(b.V[ti], dim=-1)).sum(-1)
    assert torch.equal(b.predict(tu, ti), want)
    up, ip = b.published()
    np.testing.assert_allclose(b.predict(tu, ti).numpy(),
                               pair_scores(up[:20], ip[:20], "cosine", b.scale), rtol=1e-5)


# -- the bce Newton step -----------------------------------------------------------------------
def _former_bce_newton_offset(F, off, P, poff, n_neg, lam, iters=25):
    k = F.shape[1]
    x = np.zeros(k)
    reg = lam * (len(F) + n_neg)
    for _ in range(iters):
        zp = F @ x + off
        zn = P @ x + poff
        sp = 1.0 / (1.0 + np.exp(zp))
        sn = 1.0 / (1.0 + np.exp(-zn))
        grad = -(F.T @ sp) + n_neg * (P.T @ sn) / len(P) + 2 * reg * x
        hess = ((F.T * (sp * (1 - sp))) @ F + n_neg * (P.T * (sn * (1 - sn))) @ P / len(P)
                + 2 * reg * np.eye(k))
        step = np.linalg.solve(hess, grad)
        x -= step
        if np.abs(step).max() < 1e-7:
            break
    return x


def test_one_bce_newton_gives_the_former_offset_solution():
    from mcrecall.train.foldin import _bce_newton

    rng = np.random.default_rng(1)
    F, P = rng.normal(size=(9, 4)), rng.normal(size=(64, 4))
    off, poff = rng.normal(size=9), rng.normal(size=64)
    np.testing.assert_array_equal(_bce_newton(F, P, 27.0, 0.01, off=off, pool_off=poff),
                                  _former_bce_newton_offset(F, off, P, poff, 27.0, 0.01))
    # no offset = offset 0
    np.testing.assert_array_equal(_bce_newton(F, P, 27.0, 0.01),
                                  _former_bce_newton_offset(F, 0 * off, P, 0 * poff, 27.0, 0.01))


# -- the warm-start overlay --------------------------------------------------------------------
def test_warm_rows_replace_random_rows_and_nan_rows_stay_random():
    from mcrecall.train.als import ALS
    from mcrecall.train.sgd import BCE
    from mcrecall.train.warm import overlay_known_rows

    T = torch.zeros(4, 3)
    init = np.full((4, 3), np.nan, np.float32)
    init[1] = [1, 2, 3]
    init[2, 0] = 5.0  # one NaN in the row: unknown
    assert overlay_known_rows(T, init) == 1
    assert T[1].tolist() == [1, 2, 3] and T[2].tolist() == [0, 0, 0]
    assert overlay_known_rows(T, None) == 0

    rng = np.random.default_rng(0)
    u, i, y = rng.integers(0, 4, 50), rng.integers(0, 5, 50), rng.integers(1, 5, 50).astype(
        np.float32)
    for m in (ALS(u, i, y, 4, 5, objective="implicit", dim=3), BCE(u, i, y, 4, 5, similarity="cosine", dim=3)):
        kind = {"objective": "implicit"} if isinstance(m, ALS) else {"similarity": "cosine"}
        cold = type(m)(u, i, y, 4, 5, **kind, dim=3)
        cold.init_factors(7)
        m.init_factors(7, init, None)
        assert torch.allclose(m.U[1], torch.tensor([1.0, 2, 3]))
        assert torch.equal(m.U[0], cold.U[0]) and torch.equal(m.V, cold.V)


# -- the foldin section ------------------------------------------------------------------------
def _tiny_model(tc, n_items):
    """A model of ``tc``'s objective on three triples (its foldin section is what is tested)."""
    from mcrecall.train.objectives import model_from_config

    u, i = np.zeros(3, np.int32), np.arange(3, dtype=np.int32)
    return model_from_config(tc, (u, i, np.ones(3, np.float32)), 1, n_items)


@pytest.mark.parametrize("objective,similarity", [("implicit", "dot"), ("squared", "dot"),
                                                  ("implicit", "cosine")])
def test_foldin_section_is_written_once(objective, similarity):
    from mcrecall.core.config import TrainConfig
    from mcrecall.serve.testing import foldin_meta as testing_meta

    rng = np.random.default_rng(2)
    dim = 4
    width = dim + 2 if (objective, similarity) == ("squared", "dot") else dim
    V = rng.normal(size=(30, width)).astype(np.float32)
    tc = TrainConfig(objective=objective, similarity=similarity, dim=dim, reg=0.2, alpha=4.0)
    m = _tiny_model(tc, n_items=len(V))
    m.mu, m.scale = 0.75, 1.5
    a = m.foldin_section(V, np.ones(len(V), bool), 0)
    b = testing_meta(V, objective=objective, similarity=similarity, reg=0.2, alpha=4.0,
                     mu=0.75, score_scale=1.5)
    assert a == b


def test_bce_foldin_section_equals_the_former_trainer_formula():
    from mcrecall.core.config import TrainConfig
    rng = np.random.default_rng(4)
    V = rng.normal(size=(40, 5)).astype(np.float32)
    has = rng.random(40) > 0.3
    tc = TrainConfig(objective="bce", similarity="dot", dim=4)
    got = _tiny_model(tc, n_items=len(V)).foldin_section(V, has, 11)
    pool = np.random.default_rng(11).integers(0, 40, 256)
    want = {"objective": "bce", "similarity": "dot", "factors": 4, "layout": "biased",
            "score_scale": 5.0, "mu": 0.0, "reg": tc.reg_bce, "negatives": tc.negatives,
            "neg_pool": np.round(V[pool].astype(np.float64), 7).tolist(),
            "neg_pool_note": f"256 items drawn uniformly from {int(has.sum())} published"}
    assert got == want


# -- the k rule --------------------------------------------------------------------------------
def test_one_k_rule_for_client_and_stores():
    from mcrecall.core.ids import check_k
    from mcrecall.plugins.base import check_k as store_k
    from mcrecall.serve.validate import check_k as client_k

    assert client_k is check_k
    assert check_k(np.int64(5)) == 5 and store_k(3) == 3
    for bad in (1.5, True, "3", None, np.bool_(True)):
        with pytest.raises(TypeError, match="k must be a positive integer"):
            client_k(bad, 10)
        with pytest.raises(ValueError, match="k must be a positive integer"):
            store_k(bad)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            store_k(bad)
    with pytest.raises(ValueError, match=r"k=11 is larger than the allowed maximum 10 \(\[serve\] max_k\)"):
        client_k(11, 10)
    assert store_k(10**6) == 10**6  # a store has no upper limit of its own


# -- the LMDB handle cache ---------------------------------------------------------------------
GiB = 1 << 30


@pytest.mark.parametrize("small_first", [True, False])
def test_triple_store_map_sizes_in_either_order(tmp_path, small_first):
    from mcrecall.core import lmdbenv
    from mcrecall.core.lmdbenv import MapSizeMismatchError
    from mcrecall.ingest.store import TripleStore

    path = tmp_path / "triples.lmdb"
    first = TripleStore(tmp_path, map_size_gb=0.5 if small_first else 1.0)
    if small_first:  # a larger map than the open one would be silently lost: refused
        with pytest.raises(MapSizeMismatchError, match=r"0\.5 GiB map; this handle asks for 1 GiB"):
            TripleStore(tmp_path, map_size_gb=1.0)
        assert lmdbenv.holders(path) == 1
    else:  # a smaller one is within the open map: shared
        second = TripleStore(tmp_path, map_size_gb=0.5)
        assert second.env is first.env and lmdbenv.holders(path) == 2
        second.close()
        second.close()  # idempotent: releases once
    reader = TripleStore(tmp_path, readonly=True, map_size_gb=4.0)  # a reader needs no size
    assert reader.env is first.env
    assert first.env.info()["map_size"] == int((0.5 if small_first else 1.0) * GiB)
    reader.close()
    first.close()
    assert lmdbenv.holders(path) == 0  # the last handle closed the environment
    again = TripleStore(tmp_path, map_size_gb=2.0)  # a fresh open takes the new size
    assert again.env.info()["map_size"] == 2 * GiB
    again.close()


@pytest.mark.parametrize("small_first", [True, False])
def test_registry_map_sizes_in_either_order(tmp_path, small_first):
    from mcrecall.core import lmdbenv
    from mcrecall.core.lmdbenv import MapSizeMismatchError
    from mcrecall.train.versions import ModelRegistry

    path = tmp_path / "users.lmdb"
    first = ModelRegistry(tmp_path, map_size=GiB // 2 if small_first else GiB)
    if small_first:
        with pytest.raises(MapSizeMismatchError, match="users.lmdb is already open"):
            ModelRegistry(tmp_path, map_size=GiB)
    else:
        ModelRegistry(tmp_path, map_size=GiB // 2).close()
    with ModelRegistry(tmp_path, readonly=True, map_size=8 * GiB) as r:  # readers: any size
        assert r.current_version() is None
    assert lmdbenv.holders(path) == 1
    first.close()
    assert lmdbenv.holders(path) == 0


def test_store_and_registry_share_one_cache(tmp_path):
    """Both parts' handles go through core.lmdbenv (one lifetime rule for both files)."""
    from mcrecall.core import lmdbenv
    from mcrecall.ingest.store import TripleStore
    from mcrecall.train.versions import ModelRegistry

    s, r = TripleStore(tmp_path), ModelRegistry(tmp_path)
    assert lmdbenv.holders(tmp_path / "triples.lmdb") == 1
    assert lmdbenv.holders(tmp_path / "users.lmdb") == 1
    s.close()
    r.close()
    assert lmdbenv.holders(tmp_path / "triples.lmdb") == 0
    assert lmdbenv.holders(tmp_path / "users.lmdb") == 0

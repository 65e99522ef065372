"""One trainer interface (train/objectives.py): every registered objective's model behaves the
same way through it, and the trainer's per-objective rules come from its ObjectiveSpec."""

from __future__ import annotations

import numpy as np
import pytest

from mcrecall.core.config import TrainConfig
from mcrecall.train.foldin import fold_in
from mcrecall.train.objectives import (
    FactorModel,
    available_objectives,
    model_class,
    model_from_config,
    objective_spec,
    rows_with_data,
)
from mcrecall.train.synthetic import make_synthetic

CASES = [(o, s) for o in available_objectives() for s in ("dot", "cosine")]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=120, n_items=80, n_triples=1500, rank=4, seed=3)


def _model(data, objective, similarity, **kw) -> FactorModel:
    tc = TrainConfig(objective=objective, similarity=similarity, dim=6, solver="cholesky", **kw)
    return model_from_config(tc, (data.user_idx, data.item_idx, data.score),
                             len(data.user_ids), len(data.item_ids))


def test_registry_resolves_every_objective_and_names_the_known_ones():
    assert available_objectives() == ["bce", "implicit", "squared"]
    for name in available_objectives():
        assert issubclass(model_class(name), FactorModel)
    with pytest.raises(ValueError, match="available: bce, implicit, squared"):
        objective_spec("bpr")


@pytest.mark.parametrize("objective,similarity", CASES)
def test_the_interface_trains_publishes_and_warm_starts(data, objective, similarity):
    m = _model(data, objective, similarity)
    assert m.objective == objective
    m.warm_start(0)
    hist = m.fit(2, log=lambda s: None)
    assert [h["epoch"] for h in hist] == [1, 2] and np.isfinite(m.loss()["loss"])
    assert m.loss()["loss"] == pytest.approx(hist[-1]["loss"])
    U, V = m.published()
    assert U.dtype == V.dtype == np.float32 and len(U) == len(data.user_ids)
    assert len(V) == len(data.item_ids) and U.shape[1] == V.shape[1]
    assert set(m.hyperparameters()) == {"reg", "alpha"}
    # warm start from a model's own published vectors restarts it exactly where it was
    w = _model(data, objective, similarity)
    w.warm_start(1, U, V, scale=m.scale)
    U2, V2 = w.published()
    np.testing.assert_allclose(U2, U, atol=1e-6)
    np.testing.assert_allclose(V2, V, atol=1e-6)
    # NaN rows are unknown: they start at random instead
    Un = U.copy()
    Un[:5] = np.nan
    w.warm_start(1, Un, V, scale=m.scale)
    assert not np.isnan(w.published()[0]).any()
    assert not np.allclose(w.published()[0][:5], U[:5])


@pytest.mark.parametrize("objective,similarity", CASES)
def test_foldin_section_lets_fold_in_reproduce_a_trained_user(data, objective, similarity):
    """The model's fold-in step: for the ALS objectives fold_in gives the stored user exactly
    (the exact solver); for bce, a vector ranking the user's items as the model does."""
    m = _model(data, objective, similarity)
    m.warm_start(0)
    m.fit(3, log=lambda s: None)
    U, V = m.published()
    meta = {"foldin": m.foldin_section(V, None, 0)}
    assert meta["foldin"]["objective"] == objective
    u = int(np.bincount(data.user_idx[data.score > 0]).argmax())
    sel = data.user_idx == u
    x = m.fold_in(V[data.item_idx[sel]], data.score[sel], meta)
    assert np.array_equal(x, fold_in(V[data.item_idx[sel]], data.score[sel], meta))
    if objective == "bce":
        agree = np.corrcoef(V @ x, V @ U[u])[0, 1]
        assert agree > 0.5, agree
    else:
        np.testing.assert_allclose(x, U[u], rtol=2e-3, atol=2e-3)


def test_rows_with_data_follows_the_objective():
    idx = np.array([0, 1, 2], np.int32)
    score = np.array([0.0, 2.0, 0.0], np.float32)
    assert rows_with_data(idx, score, 4, "squared").tolist() == [True, True, True, False]
    for obj in ("implicit", "bce"):
        assert rows_with_data(idx, score, 4, obj).tolist() == [False, True, False, False]


def test_gate_and_item_step_come_from_the_spec():
    from mcrecall.train.refresh import OBJECTIVES
    from mcrecall.train.trainer import GATE_METRIC

    assert GATE_METRIC == {n: objective_spec(n).gate for n in available_objectives()}
    assert GATE_METRIC["squared"][0] == "rmse" and GATE_METRIC["implicit"][0] == "recall@10"
    assert [n for n, s in OBJECTIVES.items() if s.item_step] == ["squared", "implicit"]


def test_bce_model_refuses_another_objective(data):
    from mcrecall.train.sgd import BCE

    with pytest.raises(ValueError, match="bce"):
        BCE.from_config(TrainConfig(), (data.user_idx, data.item_idx, data.score), 3, 3,
                        objective="implicit")

"""The ALS row solvers (issue 11 §4): warm-started conjugate gradient against the exact Cholesky
solve, on a small planted synthetic set; and the faster bce epoch against its autograd form."""

import numpy as np
import pytest
import torch

from mcrecall.core.config import ConfigError, TrainConfig, load_config
from mcrecall.train.als import ALS
from mcrecall.train.evaluate import evaluate
from mcrecall.train.sgd import BCE
from mcrecall.train.split import holdout_mask, id_hashes
from mcrecall.train.synthetic import make_synthetic


@pytest.fixture(scope="module")
def data():
    d = make_synthetic(n_users=800, n_items=400, n_triples=30000, seed=3)
    te = holdout_mask(d.user_idx, d.item_idx, d.user_ids, d.item_ids, 0.1)
    return d, ~te, te


def _als(data, objective, solver, **kw):
    d, tr, _ = data
    m = ALS(d.user_idx[tr], d.item_idx[tr], d.score[tr], len(d.user_ids), len(d.item_ids),
            objective=objective, dim=kw.pop("dim", 8), reg=0.1, alpha=3.0, solver=solver, **kw)
    return m


def _recall(data, m):
    d, tr, te = data
    U, V = m.published()
    return evaluate(U, V, m.scale, (d.user_idx[tr], d.item_idx[tr], d.score[tr]),
                    (d.user_idx[te], d.item_idx[te], d.score[te]),
                    user_hash=id_hashes(d.user_ids))["model"]


def test_default_solver_is_cg():
    assert TrainConfig().solver == "cg" and TrainConfig().cg_steps == 3


@pytest.mark.parametrize("objective", ["implicit", "squared"])
def test_cg_agrees_with_cholesky_after_sweeps(data, objective):
    """Same start, 8 sweeps each: the objective and held-out figures agree closely."""
    res = {}
    for solver in ("cholesky", "cg"):
        m = _als(data, objective, solver)
        m.init_factors(0)
        m.fit(8, log=lambda s: None)
        res[solver] = (m.loss(exact=True)["loss"], _recall(data, m), m)
    (l_ch, ev_ch, _), (l_cg, ev_cg, m_cg) = res["cholesky"], res["cg"]
    assert abs(l_cg - l_ch) <= 0.01 * abs(l_ch)  # within 1 % of the exact solver's objective
    assert abs(ev_cg["recall@10"] - ev_ch["recall@10"]) <= 0.01
    assert abs(ev_cg["ndcg@10"] - ev_ch["ndcg@10"]) <= 0.01
    if objective == "squared":
        assert abs(ev_cg["rmse"] - ev_ch["rmse"]) <= 0.01
    # the loss recorded from CG's residual is the objective at its iterate
    assert m_cg.loss()["loss"] == pytest.approx(m_cg.loss(exact=True)["loss"], rel=1e-3)


@pytest.mark.parametrize("objective", ["implicit", "squared"])
def test_cg_steps_converge_to_the_exact_half_sweep(data, objective):
    """With items fixed, more CG steps from the same start approach the exact user solve: the
    error falls with the steps and k steps (exact arithmetic: the solution) leave ~nothing."""
    ref = _als(data, objective, "cholesky")
    ref.init_factors(0)
    ref.fit(2, log=lambda s: None)
    V = ref.V.clone()
    exact = ref.U.clone()
    errs = []
    for steps in (1, 3, 6, 30):
        m = _als(data, objective, "cg", cg_steps=steps)
        m.init_factors(1)  # another (random) start for the users
        m.V = V.clone()
        m._cg_side("user", m.U, m.V)
        errs.append(float((m.U - exact).norm() / exact.norm()))
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] < 1e-3


def test_cg_warm_start_keeps_improving(data):
    """A CG fit continued from its factors (another fit call, or published vectors given as
    the start) keeps lowering the objective; a warm start beats a fresh one of the same length."""
    m = _als(data, "implicit", "cg")
    m.init_factors(0)
    h1 = m.fit(3, log=lambda s: None)
    h2 = m.fit(3, log=lambda s: None)
    losses = [h["loss"] for h in h1 + h2]
    assert all(b <= a * (1 + 1e-4) for a, b in zip(losses, losses[1:], strict=False))
    U, V = m.published()
    warm = _als(data, "implicit", "cg")
    warm.init_factors(5, U, V)
    cold = _als(data, "implicit", "cg")
    cold.init_factors(5)
    lw = warm.fit(1, log=lambda s: None)[0]["loss"]
    lc = cold.fit(1, log=lambda s: None)[0]["loss"]
    assert lw <= losses[-1] * (1 + 1e-4) < lc


@pytest.mark.parametrize("objective", ["implicit", "squared"])
def test_cg_rows_close_to_fold_in(data, objective):
    """CG's stored user rows are within a few % of the exact solve fold_in performs."""
    m = _als(data, objective, "cg")
    m.init_factors(0)
    m.fit(8, log=lambda s: None)
    U = m.U.clone()
    m._solve_side(m.user_chunks, m.U, m.V, m.i)  # the exact solve with the same items
    has = m.U.norm(dim=1) > 0
    rel = float((U[has] - m.U[has]).norm() / m.U[has].norm())
    assert rel < 0.05


def test_rows_without_triples_are_zero_and_cosine_stays_exact(data):
    d, tr, _ = data
    keep = tr & (d.user_idx != 0)  # user 0 has no training triple
    m = ALS(d.user_idx[keep], d.item_idx[keep], d.score[keep], len(d.user_ids),
            len(d.item_ids), objective="implicit", dim=8, solver="cg")
    m.init_factors(0)
    m.fit(2, log=lambda s: None)
    assert float(m.U[0].abs().sum()) == 0.0
    c = ALS(d.user_idx[tr], d.item_idx[tr], d.score[tr], len(d.user_ids), len(d.item_ids),
            objective="squared", similarity="cosine", dim=8, solver="cg")
    assert not c.use_cg  # the sphere solve has no CG form: exact either way


def test_solver_config_keys():
    cfg = load_config(environ={"MCRECALL_TRAIN_SOLVER": "Cholesky",
                               "MCRECALL_TRAIN_CG_STEPS": "5"})
    assert cfg.train.solver == "cholesky" and cfg.train.cg_steps == 5
    with pytest.raises(ConfigError, match="solver"):
        load_config(environ={"MCRECALL_TRAIN_SOLVER": "lu"})
    with pytest.raises(ConfigError, match="cg_steps"):
        load_config(environ={"MCRECALL_TRAIN_CG_STEPS": "0"})
    with pytest.raises(ValueError, match="solver"):
        ALS(np.zeros(1, np.int32), np.zeros(1, np.int32), np.ones(1, np.float32), 1, 1,
            objective="implicit", solver="qr")


@pytest.mark.slow
def test_bce_written_out_gradients_equal_autograd(data):
    """The dot path's hand-written gradients are autograd's on the same batch."""
    d, tr, _ = data
    m = BCE(d.user_idx[tr], d.item_idx[tr], d.score[tr], len(d.user_ids), len(d.item_ids),
            dim=8, reg=0.01)
    m.init_factors(0)
    g = torch.Generator().manual_seed(0)
    u = torch.randint(0, len(d.user_ids), (64,), generator=g)
    i = torch.randint(0, len(d.item_ids), (64,), generator=g)
    j = torch.randint(0, len(d.item_ids), (64, m.negatives), generator=g)
    a, bp, bn = m.U[u], m.V[i], m.V[j]
    data_w, *grads_w = m._dot_grads(a.clone(), bp.clone(), bn.clone())
    data_a, *grads_a = m._autograd_grads(a.clone(), bp.clone(), bn.clone())
    assert float(data_w) == pytest.approx(float(data_a), rel=1e-5)
    for gw, ga in zip(grads_w, grads_a, strict=False):
        torch.testing.assert_close(gw, ga, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n_items", [50, 400, 20000])  # whole, marked, sorted
def test_bce_step_paths_agree(n_items):
    """The whole-table, marked-rows and sorted-rows Adagrad steps give the same tables."""
    rng = np.random.default_rng(0)
    u = rng.integers(0, 30, 200).astype(np.int32)
    i = rng.integers(0, n_items, 200).astype(np.int32)
    out = []
    for path in ("auto", "sort"):
        m = BCE(u, i, np.ones(200, np.float32), 30, n_items, dim=4, batch_size=50)
        m.init_factors(0)
        if path == "sort":
            m._step = _sorted_step.__get__(m)
        m.fit(2, log=lambda s: None)
        out.append((m.U.clone(), m.V.clone()))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-4, atol=1e-5)


def _sorted_step(self, table, acc, parts):
    """The reference step: torch.unique, then Adagrad on the distinct rows."""
    rows = torch.cat([r for r, _ in parts])
    uniq, inv = torch.unique(rows, return_inverse=True)
    g = torch.zeros(len(uniq), table.shape[1]).index_add_(0, inv, torch.cat([x for _, x in parts]))
    if self.biased and table is self.U:
        g[:, -1] = 0.0
    acc[uniq] += g * g
    table[uniq] -= self.lr * g / torch.sqrt(acc[uniq] + 1e-10)

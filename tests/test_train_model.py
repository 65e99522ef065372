"""Model quality on planted low-rank data, warm start, determinism, fold-in (issue 4)."""

import time

import numpy as np
import pytest

from mcrecall.train.als import ALS
from mcrecall.train.evaluate import evaluate
from mcrecall.train.foldin import fold_in
from mcrecall.train.sgd import BCE
from mcrecall.train.split import holdout_mask, id_hashes
from mcrecall.train.synthetic import make_synthetic
from mcrecall.train.testing import fill_store, small_config
from mcrecall.train.trainer import train_run
from mcrecall.train.versions import ModelRegistry


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=1500, n_items=600, n_triples=60000, seed=1)


@pytest.fixture(scope="module")
def split(data):
    te = holdout_mask(data.user_idx, data.item_idx, data.user_ids, data.item_ids, 0.1)
    return ~te, te


def _fit(data, split, objective, similarity="dot", dim=8, epochs=10, seed=0, **als):
    tr, _ = split
    args = (data.user_idx[tr], data.item_idx[tr], data.score[tr], len(data.user_ids),
            len(data.item_ids))
    if objective == "bce":
        m = BCE(*args, similarity=similarity, dim=dim, reg=0.01, lr=0.2, batch_size=4096)
    else:
        m = ALS(*args, objective=objective, similarity=similarity, dim=dim, reg=0.1, alpha=3.0,
                **als)
    m.init_factors(seed)
    m.fit(epochs, log=lambda s: None)
    return m


def _eval(data, split, m):
    tr, te = split
    U, V = m.published()
    return evaluate(U, V, m.scale, (data.user_idx[tr], data.item_idx[tr], data.score[tr]),
                    (data.user_idx[te], data.item_idx[te], data.score[te]),
                    user_hash=id_hashes(data.user_ids))


def test_split_rule_is_fixed_and_by_ids(data):
    a = holdout_mask(data.user_idx, data.item_idx, data.user_ids, data.item_ids, 0.1)
    assert 0.08 < a.mean() < 0.12
    # same pairs, another dense numbering (another store): the same pairs are held out
    perm_u = np.random.default_rng(0).permutation(len(data.user_ids))
    ids = [None] * len(perm_u)
    for old, new in enumerate(perm_u):
        ids[new] = data.user_ids[old]
    b = holdout_mask(perm_u[data.user_idx], data.item_idx, ids, data.item_ids, 0.1)
    assert np.array_equal(a, b)


def test_squared_beats_baselines_widely(data, split):
    ev = _eval(data, split, _fit(data, split, "squared"))
    m, gm, pop = ev["model"], ev["global_mean"], ev["popular"]
    assert m["rmse"] < 0.8 * gm["rmse"] and m["rmse"] < 0.8 * pop["rmse"]
    assert m["mae"] < 0.8 * pop["mae"]
    assert m["recall@10"] > 1.3 * pop["recall@10"]
    assert m["ndcg@10"] > 1.3 * pop["ndcg@10"]


def test_implicit_ranks_far_above_popularity(data, split):
    ev = _eval(data, split, _fit(data, split, "implicit", dim=16))
    assert ev["model"]["recall@10"] > 2.5 * ev["popular"]["recall@10"]
    assert ev["model"]["ndcg@10"] > 2.5 * ev["popular"]["ndcg@10"]


def test_bce_beats_popularity(data, split):
    ev = _eval(data, split, _fit(data, split, "bce", dim=16, epochs=8))
    assert ev["model"]["recall@10"] > 2 * ev["popular"]["recall@10"]


def test_cosine_beats_global_mean(data, split):
    ev = _eval(data, split, _fit(data, split, "squared", "cosine", epochs=4))
    assert ev["model"]["rmse"] < 0.9 * ev["global_mean"]["rmse"]


def test_deterministic_given_seed(data, split):
    a = _fit(data, split, "squared", epochs=3).published()
    b = _fit(data, split, "squared", epochs=3).published()
    c = _fit(data, split, "squared", epochs=3, seed=1).published()
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("objective,similarity", [
    ("squared", "dot"), ("implicit", "dot"), ("squared", "cosine"), ("implicit", "cosine")])
def test_fold_in_equals_training_step(data, split, objective, similarity):
    """fold_in(user's items, scores) == the vector the last (exact) user half-sweep stored."""

    # the exact solver: CG's stored rows differ by its residual (tests/test_train_solver.py)
    m = _fit(data, split, objective, similarity, dim=8, epochs=4, solver="cholesky")
    U, V = m.published()
    tr, _ = split
    has = np.bincount(data.item_idx[tr], minlength=len(V)) > 0
    meta = {"foldin": m.foldin_section(V, has, 0)}
    tu, ti, ty = data.user_idx[tr], data.item_idx[tr], data.score[tr]
    for u in [0, 1, 7, 42, 99]:
        sel = tu == u
        x = fold_in(V[ti[sel]], ty[sel], meta)
        if x is None:
            continue
        np.testing.assert_allclose(x, U[u], rtol=2e-3, atol=2e-3)


def test_fold_in_fast_for_100_triples(data, split):

    for objective in ("squared", "implicit"):
        m = _fit(data, split, objective, dim=32, epochs=1)
        U, V = m.published()
        meta = {"foldin": m.foldin_section(V, np.ones(len(V), bool), 0)}
        rng = np.random.default_rng(0)
        items = rng.choice(len(V), 100, replace=False)
        scores = rng.integers(0, 5, 100).astype(np.float32)
        fold_in(V[items], scores, meta)
        t = []
        for _ in range(30):
            t0 = time.perf_counter()
            fold_in(V[items], scores, meta)
            t.append(time.perf_counter() - t0)
        assert np.median(t) < 0.005, (objective, np.median(t))


def test_bce_fold_in_ranks_like_the_model(data, split):

    m = _fit(data, split, "bce", dim=16, epochs=8)
    U, V = m.published()
    meta = {"foldin": m.foldin_section(V, np.ones(len(V), bool), 0)}
    tr, _ = split
    tu, ti, ty = data.user_idx[tr], data.item_idx[tr], data.score[tr]
    corr = []
    for u in range(20):
        sel = tu == u
        x = fold_in(V[ti[sel]], ty[sel], meta)
        if x is not None:
            corr.append(np.corrcoef(V @ x, V @ U[u])[0, 1])
    assert np.median(corr) > 0.8


@pytest.mark.slow
def test_warm_retraining_after_new_events_improves(tmp_path, data):
    """v1 on the early 40% of events; v2 warm-started after the rest arrives is better."""
    early = np.random.default_rng(5).random(len(data)) < 0.4
    fill_store(tmp_path, data, early)
    cfg = small_config(tmp_path, dim=8, epochs=8)
    r1 = train_run(cfg, log=lambda s: None)
    assert r1.status == "published"
    fill_store(tmp_path, data, ~early)
    r2 = train_run(cfg.with_overrides(train={"epochs": 4}), log=lambda s: None)
    assert r2.status == "published" and r2.version > r1.version
    reg = ModelRegistry(tmp_path, readonly=True)
    m1, m2 = reg.metadata(r1.version), reg.metadata(r2.version)
    assert m2["warm_start"]["from_version"] == r1.version
    assert m2["warm_start"]["users"] > 0.5 * len(data.user_ids)
    e1, e2 = m1["evaluation"]["model"], m2["evaluation"]["model"]
    assert e2["rmse"] < e1["rmse"] - 0.02
    assert e2["recall@10"] > e1["recall@10"]
    # the warm start matters: the first sweep starts near the end point, not from scratch
    h2 = m2["training"]["history"]
    h1 = m1["training"]["history"]
    assert h2[0]["test_rmse"] < h1[0]["test_rmse"]
    reg.close()


@pytest.mark.parametrize("objective,similarity", [
    ("squared", "dot"), ("implicit", "dot"), ("squared", "cosine"), ("implicit", "cosine")])
def test_progress_loss_is_the_objective(data, split, objective, similarity):
    """The per-sweep loss (from the normal equations) equals the objective recomputed."""
    m = _fit(data, split, objective, similarity, epochs=2)
    fast, exact = m.loss(), m.loss(exact=True)
    assert fast["loss"] == pytest.approx(exact["loss"], rel=1e-4)


def _holdout_only_ids(prefix, partners, side, n):
    """``n`` ids ``prefix<k>`` whose pairs with every id in ``partners`` are all held out."""
    out, k = [], 0
    ph = id_hashes(partners)
    while len(out) < n:
        cand = f"{prefix}{k}"
        ch = id_hashes([cand])
        from mcrecall.train.split import pair_hash_unit
        u, i = (np.repeat(ch, len(ph)), ph) if side == "user" else (ph, np.repeat(ch, len(ph)))
        if (pair_hash_unit(u, i) < 0.1).all():
            out.append(cand)
        k += 1
    return out


def _served_everything(tmp_path, backend, objective):
    """After `train`, every user and item with a positive triple gets a finite model score and
    every such item can be recalled -- also those whose triples all fall in the hold-out."""
    from mcrecall.ingest.store import TripleStore
    from mcrecall.serve.client import RecallClient

    data = make_synthetic(n_users=200, n_items=80, n_triples=4000, seed=3)
    fill_store(tmp_path, data)
    some_items = data.item_ids[:2]
    hold_users = _holdout_only_ids("held-user-", some_items, "user", 2)
    hold_items = _holdout_only_ids("held-item-", data.user_ids[:3], "item", 2)
    st = TripleStore(tmp_path)
    st.put_scores([u for u in hold_users for _ in some_items], some_items * len(hold_users),
                  [4] * (len(hold_users) * len(some_items)))
    st.put_scores([u for _ in hold_items for u in data.user_ids[:3]],
                  [i for i in hold_items for _ in range(3)], [4] * (3 * len(hold_items)))
    snap = st.snapshot()
    st.close()
    pos_users = sorted({snap.user_ids[u] for u in snap.user_idx[snap.score > 0]})
    pos_items = sorted({snap.item_ids[i] for i in snap.item_idx[snap.score > 0]})
    assert set(hold_users) <= set(pos_users) and set(hold_items) <= set(pos_items)
    # FLAT: an exact search, so that k = every item must return every item
    cfg = small_config(tmp_path, backend=backend, index_type="FLAT", dim=8, epochs=4,
                       objective=objective)
    cfg = cfg.with_overrides(serve={"fold_in": False})
    res = train_run(cfg, log=lambda s: None)
    assert res.status == "published"
    reg = ModelRegistry(tmp_path, readonly=True)
    meta = reg.metadata(res.version)
    client = RecallClient(cfg, registry=reg)
    try:
        for u in pos_users[:20] + hold_users:
            assert client.user_vector(u).source == "model", u
        scores = client.score(hold_users[0], pos_items)
        assert np.isfinite(scores).all()
        scores = client.score(data.user_ids[0], hold_items)
        assert np.isfinite(scores).all()
        rec = client.recall(hold_users[0], k=len(pos_items))
        got = {r.item_id for r in rec}
        assert len(rec) == len(pos_items)
        assert set(pos_items) <= got
        assert meta["served_model"]["kind"] == "refit_all"
        assert meta["served_model"]["sweeps"] >= 1
        assert meta["n_users"] == len(pos_users) and meta["n_items"] == len(pos_items)
    finally:
        client.close()
        reg.close()


@pytest.mark.parametrize("objective", ["implicit", "squared", "bce"])
def test_every_user_and_item_with_triples_is_served(tmp_path, objective):
    _served_everything(tmp_path, "exact", objective)


@pytest.mark.slow
def test_every_user_and_item_with_triples_is_served_milvus(tmp_path):
    _served_everything(tmp_path, "milvus", "implicit")


def test_gate_uses_the_objectives_own_metric():
    """RMSE gates squared; Recall@10 gates the ranking objectives, whose RMSE is not gated."""
    from mcrecall.core.config import TrainConfig
    from mcrecall.train.trainer import gate_refusal

    def meta(objective, rmse, recall):
        return {"objective": objective, "similarity": "dot",
                "evaluation": {"model": {"rmse": rmse, "recall@10": recall}}}

    quiet = dict(log=lambda s: None)
    worse_rmse = {"model": {"rmse": 2.0, "recall@10": 0.30}}
    worse_recall = {"model": {"rmse": 0.5, "recall@10": 0.28}}
    for objective in ("implicit", "bce"):
        tc = TrainConfig(objective=objective)  # max_recall_regression 0.01
        cur = meta(objective, 0.5, 0.30)
        assert gate_refusal(tc, 1, cur, worse_rmse, **quiet) is None
        assert "recall@10 0.2800" in gate_refusal(tc, 1, cur, worse_recall, **quiet)
        # within the tolerance: 0.30 - 0.295 = 0.005 < 0.01
        assert gate_refusal(tc, 1, cur, {"model": {"rmse": 9.0, "recall@10": 0.295}},
                            **quiet) is None
    tc = TrainConfig(objective="squared")  # max_rmse_regression 0.05
    cur = meta("squared", 0.5, 0.30)
    assert "rmse 2.0000" in gate_refusal(tc, 1, cur, worse_rmse, **quiet)
    assert gate_refusal(tc, 1, cur, worse_recall, **quiet) is None
    # another objective: not compared
    assert gate_refusal(tc, 1, meta("implicit", 0.1, 0.9), worse_rmse, **quiet) is None


@pytest.mark.slow
def test_recall_gate_refuses_a_worse_ranking_model_unless_forced(tmp_path, data, capsys):
    import argparse

    from mcrecall.train.cli import add_train_arguments, run_train

    fill_store(tmp_path, data)
    cfg = small_config(tmp_path, dim=8, epochs=5, objective="implicit",
                       compare_squared_sweeps=0, refit_sweeps=1)
    assert train_run(cfg, log=lambda s: None).status == "published"
    bad = cfg.with_overrides(train={"dim": 1})  # a rank-1 model ranks far worse
    parser = add_train_arguments(argparse.ArgumentParser())
    assert run_train(parser.parse_args([]), bad) == 3
    out = capsys.readouterr().out
    assert "NOT publishing" in out and "recall@10" in out and "max_recall_regression" in out
    reg = ModelRegistry(tmp_path, readonly=True)
    assert reg.current_version() == 1
    reg.close()
    assert run_train(parser.parse_args(["--force"]), bad) == 0
    assert "publishing anyway" in capsys.readouterr().out
    reg = ModelRegistry(tmp_path, readonly=True)
    assert reg.current_version() == 2
    reg.close()


def test_default_objective_ranks_and_the_squared_baseline_is_reported_beside_it(tmp_path, data):
    """The default is the best-ranking objective; the squared-error baseline, fitted on the
    same split, is in the evaluation table (trainer log and `mcrecall status`)."""
    from mcrecall.core.config import TrainConfig
    from mcrecall.train.report import format_table

    assert TrainConfig().objective == "implicit"
    fill_store(tmp_path, data)
    lines = []
    res = train_run(small_config(tmp_path, dim=8, epochs=5), log=lines.append)
    reg = ModelRegistry(tmp_path, readonly=True)
    meta = reg.metadata(res.version)
    reg.close()
    ev = meta["evaluation"]
    assert meta["objective"] == "implicit"
    baseline = ev["squared"]
    assert baseline["sweeps"] == TrainConfig().compare_squared_sweeps
    assert baseline["rmse"] < ev["popular"]["rmse"]  # a real squared fit
    assert ev["model"]["recall@10"] > baseline["recall@10"]  # the reason for the default
    table = format_table(ev)
    assert "squared baseline" in table and "squared baseline" in "\n".join(lines)
    # the squared objective itself carries no comparison row
    assert "squared baseline" not in format_table({"model": ev["model"], "n_test": 1})
def test_constructor_defaults_are_the_configs():
    import inspect

    from mcrecall.core.config import TrainConfig

    tc = TrainConfig()
    a = inspect.signature(ALS.__init__).parameters
    b = inspect.signature(BCE.__init__).parameters
    assert a["objective"].default is inspect.Parameter.empty
    assert (a["alpha"].default, a["reg"].default, a["dim"].default) == (tc.alpha, tc.reg, tc.dim)
    assert (b["lr"].default, b["batch_size"].default, b["reg"].default, b["negatives"].default) \
        == (tc.lr, tc.batch_size, tc.reg_bce, tc.negatives)

"""The publish gate's baseline: the current version measured on the new run's own hold-out.

A version's stored evaluation was measured on the hold-out of ITS snapshot; as the store grows
the hold-out grows with it (more pairs, more held-out items per user), and Recall@10 or RMSE on
188 pairs says little about the same model on 2,119. Comparing the new model's figure with that
old one froze publication. :func:`current_on_holdout` instead evaluates the current version's
vectors on exactly the pairs the new model is judged on, with exactly the same procedure
(:func:`mcrecall.train.evaluate.evaluate`):

* item vectors: the version's own (from the vector store); an item the version lacks (newer than
  it) is never recalled by it — a held-out pair on such an item is a miss — and predicts 0 for
  RMSE;
* user vectors: every evaluated user is FOLDED IN from the new run's training triples against
  the version's item vectors (:func:`mcrecall.train.foldin.fold_in`, what serve does for a user
  whose history changed). Not the stored user vectors: the version was refit on all of its
  triples (``[train] refit_sweeps``), including pairs now held out, so its stored user rows have
  seen the answers. A user fold-in gives nothing to (no positive training triple) is ranked by
  popularity, as in serving.
"""

from __future__ import annotations

import numpy as np

from .evaluate import eval_users, evaluate
from .foldin import fold_in
from .objectives import objective_spec


def comparable(tc, cur_meta: dict | None) -> bool:
    """Whether the gate compares with this version at all (same objective and similarity)."""
    return cur_meta is not None and (cur_meta.get("objective"), cur_meta.get("similarity")) == (
        tc.objective, tc.similarity) and bool(cur_meta.get("foldin"))


def current_on_holdout(run, vs, cur: int, cur_meta: dict, log=print) -> dict | None:
    """The current version's figures on ``run``'s hold-out (``evaluate(...)["model"]`` plus
    ``version``, ``n_test``, ``users_folded_in``, ``items_missing``), or None when its vectors
    cannot be read (the gate then falls back to the stored figure)."""
    s, tc = run.snap, run.tc
    try:
        V = np.asarray(vs.get_vectors(cur, s.item_ids, missing="nan"), dtype=np.float32)
    except Exception as e:  # a broken old version must not block training
        log(f"  gate: could not read version {cur}'s item vectors ({e}); using its stored figure")
        return None
    item_has = ~np.isnan(V).any(axis=1)
    V = np.where(item_has[:, None], V, 0.0).astype(np.float32)
    tr, te = run.train, run.test
    tu, ti, ty = s.user_idx[tr], s.item_idx[tr], s.score[tr]
    eu, ey = s.user_idx[te], s.score[te]
    fig = objective_spec(tc.objective).gate[0]
    # RMSE needs every held-out user; the ranking figures only the ranked ones
    need = np.unique(eu) if fig == "rmse" else eval_users(eu, ey, run.user_hash, tc.eval_users)
    order = np.argsort(tu, kind="stable")
    su, si, sy = tu[order], ti[order], ty[order]
    lo, hi = np.searchsorted(su, need), np.searchsorted(su, need, side="right")
    U = np.zeros((len(s.user_ids), V.shape[1]), np.float32)
    user_has = np.zeros(len(s.user_ids), bool)
    for u, a, b in zip(need.tolist(), lo.tolist(), hi.tolist()):
        items, y = si[a:b], sy[a:b]
        keep = item_has[items]
        x = fold_in(V[items[keep]], y[keep], cur_meta) if keep.any() else None
        if x is not None and np.all(np.isfinite(x)):
            U[u], user_has[u] = x, True
    ev = evaluate(U, V, float(cur_meta.get("score_scale", 1.0)), (tu, ti, ty),
                  (eu, s.item_idx[te], ey), user_hash=run.user_hash, max_users=tc.eval_users,
                  device=run.device, baselines=False, user_has=user_has, item_has=item_has)
    out = dict(ev["model"])
    out.update(version=int(cur), n_test=int(ev["n_test"]), n_eval_users=int(ev["n_eval_users"]),
               users_folded_in=int(user_has.sum()), items_missing=int((~item_has).sum()))
    return out

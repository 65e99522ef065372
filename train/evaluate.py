r"""Held-out evaluation of a model next to two baselines, computed in the same run.

Figures (held-out triples are the pairs that :mod:`mcrecall.train.split` selects):

* ``rmse``, ``mae``: of the predicted score, clipped to the score range [0, 4], over all held-out
  triples. For ranking objectives (``bce``, ``implicit``) the prediction is not an estimate of
  the score, so these figures are reported but are not what those objectives optimise.
* ``recall@10``, ``ndcg@10``: per evaluated user, the top 10 items by predicted interest among
  the items the user has no TRAINING triple for; relevant = held-out triples with score ≥ 2.

  recall@10 = |top10 ∩ relevant| / min(|relevant|, 10)   (so a perfect ranking scores 1)
  ndcg@10   = Σ_{hits at rank r} 1/log2(r + 1) / Σ_{r=1}^{min(|relevant|,10)} 1/log2(r + 1)

  averaged over the users with at least one relevant held-out triple (at most ``max_users``,
  chosen by the user-id hash, so the same users in every run).

Baselines: ``global_mean`` predicts the training mean (no ranking of its own: its ranking
figures are None); ``popular`` predicts each item's damped mean score
(Σ y + 5 μ) / (n + 5) and ranks items by their number of positive training triples.
"""

from __future__ import annotations

import numpy as np
import torch

from mcrecall.plugins.metric import cross_scores, pair_scores

RELEVANT_MIN_SCORE = 2.0
K = 10


def popularity(item_idx: np.ndarray, score: np.ndarray, n_items: int) -> np.ndarray:
    """Number of positive (score > 0) triples per item."""
    return np.bincount(item_idx[score > 0], minlength=n_items).astype(np.float64)


def _rank_metrics(score_fn, train_u, train_i, test_u, test_i, test_y, n_items, users,
                  device, batch=1024) -> dict:
    """recall@K / ndcg@K of ``score_fn(user_batch) -> (b, n_items)`` over ``users``."""
    rel = test_y >= RELEVANT_MIN_SCORE
    ru, ri = test_u[rel], test_i[rel]
    order_r = np.argsort(ru, kind="stable")
    ru, ri = ru[order_r], ri[order_r]
    order_t = np.argsort(train_u, kind="stable")
    tu, ti = train_u[order_t], train_i[order_t]
    disc = 1.0 / np.log2(np.arange(2, K + 2))
    idcg_cum = np.cumsum(disc)
    recalls, ndcgs = [], []
    for s in range(0, len(users), batch):
        ub = users[s:s + batch]
        scores = score_fn(torch.from_numpy(ub.astype(np.int64)).to(device)).float()
        # exclude training items: -inf
        a, b = np.searchsorted(tu, ub[0]), np.searchsorted(tu, ub[-1], side="right")
        seg_u, seg_i = tu[a:b], ti[a:b]
        row = np.searchsorted(ub, seg_u)
        ok = (row < len(ub)) & (ub[np.minimum(row, len(ub) - 1)] == seg_u)
        scores[torch.from_numpy(row[ok]).to(device),
               torch.from_numpy(seg_i[ok].astype(np.int64)).to(device)] = -torch.inf
        top = torch.topk(scores, min(K, n_items), dim=1).indices.cpu().numpy()
        relm = np.zeros((len(ub), n_items), dtype=bool)
        a, b = np.searchsorted(ru, ub[0]), np.searchsorted(ru, ub[-1], side="right")
        seg_u, seg_i = ru[a:b], ri[a:b]
        row = np.searchsorted(ub, seg_u)
        ok = (row < len(ub)) & (ub[np.minimum(row, len(ub) - 1)] == seg_u)
        relm[row[ok], seg_i[ok]] = True
        n_rel = relm.sum(1)
        hits = np.take_along_axis(relm, top, axis=1)
        denom = np.minimum(n_rel, K)
        recalls.append(hits.sum(1) / denom)
        ndcgs.append((hits * disc[: hits.shape[1]]).sum(1) / idcg_cum[denom - 1])
    if not recalls:
        return {"recall@10": None, "ndcg@10": None}
    return {"recall@10": float(np.concatenate(recalls).mean()),
            "ndcg@10": float(np.concatenate(ndcgs).mean())}


def eval_users(test_u, test_y, user_hash: np.ndarray | None, max_users: int) -> np.ndarray:
    """Users with a relevant held-out triple; at most ``max_users``, lowest id hashes first."""
    users = np.unique(test_u[test_y >= RELEVANT_MIN_SCORE])
    if len(users) > max_users:
        if user_hash is None:
            users = users[:max_users]
        else:
            users = np.sort(users[np.argsort(user_hash[users], kind="stable")[:max_users]])
    return users


def evaluate(user_vecs: np.ndarray, item_vecs: np.ndarray, score_scale: float,
             train: tuple, test: tuple, *, user_hash=None, max_users: int = 5000,
             device="cpu", baselines: bool = True, user_has=None, item_has=None) -> dict:
    """Evaluate published vectors (prediction = score_scale · ⟨user, item⟩).

    Parameters
    ----------
    train, test : (user_idx, item_idx, score) arrays.
    user_hash : uint64 hash per user (picks the evaluated users when there are too many).
    user_has, item_has : bool masks of the users / items that get a published vector. As in
        serving, a user without one is ranked by popularity and an item without one is never
        recalled by the model.

    Returns
    -------
    dict ``{"model": {...}, "global_mean": {...}, "popular": {...}, "n_test": ..,
    "n_eval_users": ..}``
    """
    tr_u, tr_i, tr_y = (np.asarray(a) for a in train)
    te_u, te_i, te_y = (np.asarray(a) for a in test)
    n_items = len(item_vecs)
    dev = torch.device(device)
    U = torch.from_numpy(np.ascontiguousarray(user_vecs, dtype=np.float32)).to(dev)
    V = torch.from_numpy(np.ascontiguousarray(item_vecs, dtype=np.float32)).to(dev)
    users = eval_users(te_u, te_y, user_hash, max_users)
    out: dict = {"n_test": int(len(te_y)), "n_eval_users": int(len(users))}

    def point(pred: np.ndarray) -> dict:
        if len(te_y) == 0:
            return {"rmse": None, "mae": None}
        err = np.clip(pred, 0.0, 4.0) - te_y
        return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err)))}

    tu = torch.from_numpy(te_u.astype(np.int64)).to(dev)
    ti = torch.from_numpy(te_i.astype(np.int64)).to(dev)
    # published cosine vectors are unit rows, so "dot" is the model's score for every version
    pred = pair_scores(U[tu], V[ti], "dot", score_scale).cpu().numpy() if len(te_y) else np.zeros(0)
    out["model"] = point(pred)
    pop = torch.from_numpy(popularity(tr_i, tr_y, n_items).astype(np.float32)).to(dev)
    uh = None if user_has is None else torch.from_numpy(np.asarray(user_has, bool)).to(dev)
    ih = None if item_has is None else torch.from_numpy(np.asarray(item_has, bool)).to(dev)

    def model_scores(ub):
        sc = cross_scores(U[ub], V, "dot")
        if ih is not None:
            sc[:, ~ih] = -torch.inf
        if uh is not None:
            cold = ~uh[ub]
            sc[cold] = pop.expand(int(cold.sum()), -1)
        return sc

    out["model"].update(_rank_metrics(model_scores, tr_u, tr_i, te_u, te_i, te_y,
                                      n_items, users, dev))
    if baselines:
        mu = float(tr_y.mean()) if len(tr_y) else 0.0
        out["global_mean"] = point(np.full(len(te_y), mu))
        out["global_mean"].update({"recall@10": None, "ndcg@10": None})
        n_i = np.bincount(tr_i, minlength=n_items)
        s_i = np.bincount(tr_i, weights=tr_y, minlength=n_items)
        item_mean = (s_i + 5.0 * mu) / (n_i + 5.0)
        out["popular"] = point(item_mean[te_i])
        out["popular"].update(_rank_metrics(lambda ub: pop.expand(len(ub), -1).clone(), tr_u,
                                            tr_i, te_u, te_i, te_y, n_items, users, dev))
    return out

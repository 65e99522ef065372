r"""The cold-item evaluation of the hybrid model (train/attributes.py), beside two baselines.

A fixed hash share of the items WITH attributes (:data:`COLD_ITEM_FRACTION`, by the item-id
hash, so the same items in every run) is held out with all its triples: the model is fitted
without them, so each one's vector is its attribute part alone. Cold-item Recall@20 ranks the
cold items among themselves for every user with a relevant (score >= 2) triple on one:

    recall@20 = |top20(cold items) ∩ relevant| / min(|relevant|, 20)

Baselines, measured in the same run on the same split:

* ``attribute popularity``: score(u, i) = Σ_t A_it · profile_u(t) · pop(t), with profile_u the
  sum of the token rows A_j of u's positive training items and pop(t) the positive training
  triples of the items holding t;
* ``two-stage mapping``: the ID-only model (same objective and settings, attributes off) fitted
  on the same training triples; its item vectors of the warm items with attributes regressed on
  their token rows (ridge, :data:`MAPPING_REG`); cold items scored with the mapped vectors.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from .attributes import TokenMatrix, TokenSolver
from .evaluate import RELEVANT_MIN_SCORE
from .split import _splitmix64

COLD_ITEM_FRACTION = 0.1
COLD_K = 20
MAPPING_REG = 1.0
_SALT = np.uint64(0xC01D17E5)


def cold_item_mask(item_hash: np.ndarray, has_tokens: np.ndarray,
                   fraction: float = COLD_ITEM_FRACTION) -> np.ndarray:
    """(n_items,) bool: the held-out cold items (a fixed hash share of those with tokens)."""
    h = _splitmix64(np.asarray(item_hash, np.uint64) ^ _SALT)
    unit = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return (unit < fraction) & np.asarray(has_tokens, bool)


def cold_recall(score_fn, users: np.ndarray, rel_u: np.ndarray, rel_i: np.ndarray,
                cold_items: np.ndarray, k: int = COLD_K) -> float | None:
    """Mean Recall@k over ``users`` of ``score_fn(users) -> (b, len(cold_items))`` (numpy),
    relevant = the pairs (rel_u, rel_i) (rel_i in item indices)."""
    if len(users) == 0 or len(cold_items) == 0:
        return None
    col = np.full(int(max(cold_items.max(), rel_i.max(initial=0))) + 1, -1, np.int64)
    col[cold_items] = np.arange(len(cold_items))
    out = []
    for s in range(0, len(users), 1024):
        ub = users[s:s + 1024]
        sc = score_fn(ub)
        top = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        relm = np.zeros(sc.shape, bool)
        row = np.searchsorted(ub, rel_u)
        ok = (row < len(ub)) & (ub[np.minimum(row, len(ub) - 1)] == rel_u)
        relm[row[ok], col[rel_i[ok]]] = True
        n_rel = relm.sum(1)
        hits = np.take_along_axis(relm, top, axis=1).sum(1)
        out.append(hits / np.minimum(np.maximum(n_rel, 1), k))
    return float(np.concatenate(out).mean())


def token_rows(tm: TokenMatrix, rows: np.ndarray) -> np.ndarray:
    """Dense row-normalised token rows A[rows] (float32)."""
    A = np.zeros((len(rows), tm.n_tokens), np.float32)
    for k, r in enumerate(rows.tolist()):
        t = tm.rows_of(r)
        if len(t):
            A[k, t] = 1.0 / len(t)
    return A


def cold_evaluation(snap, tc, item_tokens: TokenMatrix, cold_item: np.ndarray, train_mask: np.ndarray,
                    user_pub: np.ndarray, item_pub: np.ndarray, *, user_hash, device: str, fit_model,
                    log=print):
    """The cold-item figures (see the module docstring) of the model whose published vectors
    are ``user_pub`` / ``item_pub`` (fitted on ``train_mask``, which excludes the cold items'
    triples). ``fit_model`` is :func:`mcrecall.train.trainer.fit_model` (for the mapping).

    Returns ``(figures, id_only_model)``, or ``(None, None)`` when there is nothing to rank."""
    t0 = time.perf_counter()
    u, i, y = snap.user_idx, snap.item_idx, snap.score
    cold_items = np.flatnonzero(cold_item)
    on_cold = cold_item[i]
    rel = on_cold & (y >= RELEVANT_MIN_SCORE)
    tr = train_mask
    n_users = len(snap.user_ids)
    has_train = np.bincount(u[tr & (y > 0)], minlength=n_users) > 0
    users = np.unique(u[rel])
    users = users[has_train[users]]
    if len(users) > tc.eval_users:
        users = np.sort(users[np.argsort(user_hash[users], kind="stable")[:tc.eval_users]])
    if len(users) == 0 or len(cold_items) == 0:
        return None, None
    rel_u, rel_i = u[rel], i[rel]
    A_cold = token_rows(item_tokens, cold_items)

    model = cold_recall(lambda ub: user_pub[ub] @ item_pub[cold_items].T, users, rel_u, rel_i, cold_items)

    # attribute popularity: user profile x token popularity
    pos = tr & (y > 0)
    n_tok = item_tokens.n_tokens
    c = item_tokens.counts
    tok_rows = np.repeat(np.arange(item_tokens.n_rows), c)
    tok_w = np.repeat(1.0 / np.maximum(c, 1), c)
    item_pos = np.bincount(i[pos], minlength=item_tokens.n_rows).astype(np.float64)
    tok_pop = np.bincount(item_tokens.indices, weights=tok_w * item_pos[tok_rows], minlength=n_tok)

    def attr_pop(ub):
        prof = np.zeros((len(ub), n_tok))
        sel = pos & np.isin(u, ub)
        at = np.searchsorted(ub, u[sel])
        for r, it in zip(at.tolist(), i[sel].tolist(), strict=False):
            t = item_tokens.rows_of(it)
            if len(t):
                prof[r, t] += 1.0 / len(t)
        return (prof * tok_pop) @ A_cold.T

    popularity = cold_recall(attr_pop, users, rel_u, rel_i, cold_items)

    # two-stage mapping: ID-only model, ridge-mapped to the cold items
    itc = replace(tc, attributes=False)
    idm, _, id_s = fit_model(snap, itc, device=device, train_mask=tr, log=lambda s: None)
    up0, ip0 = idm.published()
    item_has = np.bincount(i[tr & (y > 0)], minlength=item_tokens.n_rows) > 0
    warm_rows = np.flatnonzero(item_has & item_tokens.has & ~cold_item)
    A_all = item_tokens.torch_matrix("cpu")
    lam = torch.zeros(item_tokens.n_rows)
    lam[torch.from_numpy(warm_rows)] = 1.0
    W = TokenSolver(A_all, lam, MAPPING_REG, steps=200)(torch.from_numpy(ip0.astype(np.float32)),
                                                        torch.zeros(n_tok, ip0.shape[1])).numpy()
    mapped = A_cold @ W
    mapping = cold_recall(lambda ub: up0[ub] @ mapped.T, users, rel_u, rel_i, cold_items)
    out = {"recall@20": model, "attribute_popularity": {"recall@20": popularity},
           "two_stage_mapping": {"recall@20": mapping, "fit_seconds": id_s},
           "n_cold_items": int(len(cold_items)), "n_eval_users": int(len(users)),
           "fraction": COLD_ITEM_FRACTION, "seconds": time.perf_counter() - t0}
    log(f"  cold items: {len(cold_items)} held out with all their triples, {len(users)} users; "
        f"Recall@20 model {_f(model)}, attribute popularity {_f(popularity)}, two-stage mapping {_f(mapping)}")
    return out, idm


def _f(v) -> str:
    return "—" if v is None else f"{v:.4f}"

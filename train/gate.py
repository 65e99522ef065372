"""The publish gate on the same held-out pairs (issue 20 #3).

A version's stored evaluation was measured on the hold-out of ITS snapshot. As the store grows
the hold-out grows with it (more pairs, more held-out items per user), and a figure on 188 pairs
is not comparable with one on 2,119: comparing them froze publication. The two figures the gate
compares are now measured on the SAME pairs: the current version's held-out pairs.

* Each published version records the keys of the pairs it held out
  (:meth:`ModelRegistry.write_holdout`; ``train.split.pair_keys``, 8 bytes a held-out pair).
* The hold-out rule is a fixed hash of the pair (``train.split``), so the current version's
  held-out pairs are still held out now: the new model never trained on them either.
* :func:`on_version_pairs` evaluates the new model on those pairs (the ones still in the store;
  the new run's other held-out pairs are left out of the ranking, like training items), with the
  same procedure (:func:`mcrecall.train.evaluate.evaluate`, same user selection rule), and the
  gate compares that with the figure stored with the version, which was measured on exactly
  those pairs by the model before its refit.

Why not the current version's stored vectors on the new hold-out: a version is refit on all of
its triples (``[train] refit_sweeps``), held-out pairs included, so its vectors have seen the
answers. Measured on the demo's data (7,198 held-out pairs): a fresh model 0.438 Recall@10; the
same model refit on all triples, then one exact sweep on the training split, 0.473 — the refit
leaks, and such a gate would refuse every honest successor.

A version without a record (published before this rule) falls back to its stored figure, with a
note in the message.
"""

from __future__ import annotations

import numpy as np

from .evaluate import evaluate
from .split import id_hashes, pair_keys


def comparable(tc, cur_meta: dict | None) -> bool:
    """Whether the gate compares with this version at all (same objective and similarity)."""
    return cur_meta is not None and (cur_meta.get("objective"), cur_meta.get("similarity")) == (
        tc.objective, tc.similarity)


def holdout_keys(run) -> np.ndarray:
    """The pair keys of ``run``'s held-out pairs (what its version records)."""
    s = run.snap
    hi = id_hashes(s.item_ids)
    te = run.test
    return pair_keys(run.user_hash[s.user_idx[te]], hi[s.item_idx[te]])


def on_version_pairs(run, model, registry, cur: int, cur_meta: dict, log=print) -> dict | None:
    """The new model's figures on version ``cur``'s held-out pairs: ``{"version", "n_test",
    "n_eval_users", "recorded", "model": {...}, "current": the version's stored figures}``;
    None when the version recorded no hold-out (or none of its pairs is held out now)."""
    try:
        old = registry.holdout(cur)
    except Exception as e:
        log(f"  gate: could not read version {cur}'s held-out pairs ({e})")
        return None
    if old is None or len(old) == 0:
        return None
    s = run.snap
    te_idx = np.nonzero(run.test)[0]
    keys = holdout_keys(run)
    pos = np.minimum(np.searchsorted(old, keys), len(old) - 1)
    on_old = old[pos] == keys
    if not on_old.any():
        return None
    # the run's other held-out pairs are neither relevant nor candidates: excluded like training
    excl = np.concatenate([np.nonzero(run.train)[0], te_idx[~on_old]])
    test = te_idx[on_old]
    user_pub, item_pub = model.published()
    user_has, item_has = run.rows_with_data()
    ev = evaluate(user_pub, item_pub, model.scale,
                  (s.user_idx[excl], s.item_idx[excl], s.score[excl]),
                  (s.user_idx[test], s.item_idx[test], s.score[test]), user_hash=run.user_hash,
                  max_users=run.tc.eval_users, device=run.device, baselines=False,
                  user_has=user_has, item_has=item_has)
    return {"version": int(cur), "n_test": int(ev["n_test"]),
            "n_eval_users": int(ev["n_eval_users"]),
            "recorded": int(len(old)), "model": ev["model"],
            "current": dict((cur_meta.get("evaluation") or {}).get("model") or {})}

"""Fit and evaluate the model in process, as in a notebook: no Kafka, no LMDB, no vector store.

    python examples/fit_evaluate.py

Synthetic triples with planted structure (mcrecall.train.synthetic), a 20 % hold-out of
(user, item) pairs (the trainer's hash split), :class:`mcrecall.models.MatrixFactorization` fitted
on the rest, and Recall@10 of the held-out relevant items (score >= 2) against the most popular
items; the seen items are left out of both lists. Then a save/load round trip.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mcrecall.models import MatrixFactorization
from mcrecall.train.split import holdout_mask
from mcrecall.train.synthetic import make_synthetic

K = 10


def recall_at_k(recommended: dict, relevant: dict) -> float:
    """Share of the relevant held-out items that are among each user's recommendations."""
    hits = sum(len(set(recommended[u]) & items) for u, items in relevant.items())
    return hits / sum(len(items) for items in relevant.values())


def main() -> int:
    d = make_synthetic(n_users=2000, n_items=1000, n_triples=60_000, seed=0)
    users = [d.user_ids[u] for u in d.user_idx]
    items = [d.item_ids[i] for i in d.item_idx]
    test = holdout_mask(d.user_idx, d.item_idx, d.user_ids, d.item_ids, 0.2)
    train = ~test
    print(f"data: {len(d)} triples, {len(d.user_ids)} users, {len(d.item_ids)} items, "
          f"{int(test.sum())} held out")

    t0 = time.perf_counter()
    model = MatrixFactorization(objective="implicit", dim=32, epochs=10, device="cpu")
    model.fit([users[j] for j in np.flatnonzero(train)], [items[j] for j in np.flatnonzero(train)],
              d.score[train])
    print(f"fitted: {model} in {time.perf_counter() - t0:.1f} s")

    relevant: dict = {}
    for j in np.flatnonzero(test & (d.score >= 2)):
        relevant.setdefault(users[j], set()).add(items[j])
    evaluated = sorted(relevant)
    recs = {u: [i for i, _ in r] for u, r in zip(evaluated, model.recommend(evaluated, k=K), strict=True)}

    # most popular: items by positive training triples, the user's seen items left out
    counts = np.bincount(d.item_idx[train & (d.score > 0)], minlength=len(d.item_ids))
    order = [d.item_ids[i] for i in np.argsort(-counts, kind="stable")]
    seen: dict = {}
    for j in np.flatnonzero(train):
        seen.setdefault(users[j], set()).add(items[j])
    popular = {u: [i for i in order if i not in seen.get(u, ())][:K] for u in evaluated}

    r_model, r_pop = recall_at_k(recs, relevant), recall_at_k(popular, relevant)
    print(f"Recall@{K} model: {r_model:.4f}")
    print(f"Recall@{K} most-popular: {r_pop:.4f}")
    print(f"model / most-popular: {r_model / r_pop:.2f}x over {len(evaluated)} users")

    with tempfile.TemporaryDirectory(prefix="mcrecall-example-") as tmp:
        back = MatrixFactorization.load(model.save(Path(tmp) / "model.npz"))
        same = back.recommend(evaluated[:100], k=K) == model.recommend(evaluated[:100], k=K)
    print(f"save/load round trip: {'identical' if same else 'DIFFERENT'} recommendations")
    u = evaluated[0]
    print(f"recommend {u}: " + ", ".join(f"{i} ({s:.3f})" for i, s in model.recommend(u, k=5)))
    similar = model.similar_items(d.item_ids[0], k=3)
    print(f"similar to {d.item_ids[0]}: " + ", ".join(f"{i} ({s:.2f})" for i, s in similar))
    return 0 if same and r_model > r_pop else 1


if __name__ == "__main__":
    sys.exit(main())

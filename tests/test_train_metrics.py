"""Recall@10 and NDCG@10 of train/evaluate.py, checked independently (issue 11 §6):
against small cases computed by hand, and against the ranx library on the same rankings."""

import numpy as np
import pytest

from mcrecall.train.evaluate import evaluate


def _eval(scores: np.ndarray, train, test) -> dict:
    """Evaluate a user × item score matrix: item vectors = identity, user vectors = scores."""
    n_items = scores.shape[1]
    arr = lambda t: tuple(np.asarray(c) for c in zip(*t, strict=False))  # noqa: E731
    return evaluate(scores.astype(np.float32), np.eye(n_items, dtype=np.float32), 1.0,
                    arr(train), arr(test), max_users=10_000, baselines=False)["model"]


def test_recall_and_ndcg_on_cases_computed_by_hand():
    n = 14
    s = np.zeros((3, n))
    # user 0: training item 0 (excluded from its ranking); held out: items 1 (score 4) and 3
    # (score 2) relevant, item 4 (score 1 < 2) not. Ranking: 4, 1, 3, 2, 5, 6, ..., 13.
    s[0] = [100, 50, 13, 40, 90, 12, 11, 10, 9, 8, 7, 6, 5, 4]
    # user 1: no training triple; relevant items 13, 12, 0. Ranking: 13, 11, 10, 9, 8, 7, 6,
    # 12, 5, 4 | 3, 2, 1, 0 — item 0 is 14th, outside the top 10.
    s[1] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 5.5, 20]
    # user 2: twelve relevant items 0..11 (more than 10); item 12 (not relevant) first, then
    # 0, 1, ..., 8 fill ranks 2..10.
    s[2] = [-j for j in range(n)]
    s[2, 12] = 100
    train = [(0, 0, 3)]
    test = [(0, 1, 4), (0, 3, 2), (0, 4, 1), (1, 13, 2), (1, 12, 3), (1, 0, 4)]
    test += [(2, j, 2) for j in range(12)]
    m = _eval(s, train, test)
    # recall@10 = hits in top 10 / min(|relevant|, 10):
    #   user 0: 2/2 = 1;  user 1: 2/3 = 0.666667;  user 2: 9/min(12, 10) = 0.9
    #   mean = (1 + 0.666667 + 0.9) / 3 = 0.855556
    assert m["recall@10"] == pytest.approx(0.855556, abs=1e-5)
    # ndcg@10 = Σ_hits 1/log2(rank + 1) / Σ_{r=1..min(|rel|,10)} 1/log2(r + 1)
    #   1/log2(r+1), r = 1..10: 1, .630930, .5, .430677, .386853, .356207, .333333, .315465,
    #                           .301030, .289065  (sum 4.543560)
    #   user 0: hits at ranks 2, 3: (.630930 + .5) / (1 + .630930) = 1.130930 / 1.630930
    #           = 0.693426
    #   user 1: hits at ranks 1, 8: (1 + .315465) / (1 + .630930 + .5) = 1.315465 / 2.130930
    #           = 0.617318
    #   user 2: hits at ranks 2..10: (4.543560 - 1) / 4.543560 = 0.779910
    #   mean = (0.693426 + 0.617318 + 0.779910) / 3 = 0.696885
    assert m["ndcg@10"] == pytest.approx(0.696885, abs=1e-5)


def test_perfect_and_empty_rankings():
    s = np.array([[0.0, 5, 4, 3, 2, 1]])
    # relevant 1, 2 ranked 1st and 2nd: recall 2/2, ndcg (1 + .630930) / (1 + .630930) = 1
    m = _eval(s, [(0, 0, 4)], [(0, 1, 2), (0, 2, 3)])
    assert m["recall@10"] == pytest.approx(1.0) and m["ndcg@10"] == pytest.approx(1.0)
    # only a training triple is relevant-looking; the held-out one has score 1: no ranked user
    m = _eval(s, [(0, 1, 4)], [(0, 2, 1)])
    assert m["recall@10"] is None and m["ndcg@10"] is None


@pytest.mark.slow
def test_recall_and_ndcg_equal_ranx_on_the_same_rankings():
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(7)
    n_users, n_items, dim = 60, 40, 8
    U = rng.normal(size=(n_users, dim))
    V = rng.normal(size=(n_items, dim))
    scores = U @ V.T  # continuous: no ties, so both sides rank alike
    train, test = [], []
    for u in range(n_users):
        items = rng.permutation(n_items)
        train += [(u, int(i), int(rng.integers(0, 5))) for i in items[:8]]
        # at most 8 relevant per user, so min(|rel|, 10) = |rel| and ranx's recall@10 (hits /
        # |rel|) is ours; the cap at 10 is checked by hand above
        test += [(u, int(i), int(rng.integers(0, 5))) for i in items[8:8 + rng.integers(0, 9)]]
    ours = _eval(scores, train, test)

    seen = {}
    for u, i, _ in train:
        seen.setdefault(u, set()).add(i)
    qrels = {}
    for u, i, y in test:
        if y >= 2:
            qrels.setdefault(f"u{u}", {})[f"i{i}"] = 1
    run = {q: {f"i{i}": float(scores[int(q[1:]), i]) for i in range(n_items)
               if i not in seen.get(int(q[1:]), ())} for q in qrels}
    ref = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), ["recall@10", "ndcg@10"])
    assert len(qrels) > 30
    assert ours["recall@10"] == pytest.approx(ref["recall@10"], abs=1e-6)
    assert ours["ndcg@10"] == pytest.approx(ref["ndcg@10"], abs=1e-6)

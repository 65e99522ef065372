"""Fold-in equals what a full training step would solve for the user with the items fixed.

For each ALS objective × similarity a real version is trained (``train_run``, exact backend,
small synthetic data); then users change after it was trained. The vector the client serves them
(``source="fold_in"``) must equal the user half-sweep of the trainer's own ALS code (the same
objective and regularisation, ``mcrecall.train.als.ALS._solve_side``) run on the user's current triples
against the version's published item vectors.
"""

from __future__ import annotations

import numpy as np
import pytest

from mcrecall.ingest.store import TripleStore
from mcrecall.plugins import vector_store_from_config
from mcrecall.serve import RecallClient
from mcrecall.train.synthetic import make_synthetic
from mcrecall.train.testing import fill_store, small_config

QUIET = dict(log=lambda s: None)


def training_user_step(meta: dict, item_pub: np.ndarray, rows, scores) -> np.ndarray:
    """One user's vector from the trainer's user half-sweep, items fixed (published form)."""
    import torch

    from mcrecall.train.als import ALS

    fm = meta["foldin"]
    obj, sim, k = fm["objective"], fm["similarity"], int(fm["factors"])
    als = ALS(np.zeros(len(rows), np.int32), np.asarray(rows, np.int32),
              np.asarray(scores, np.float32), 1, len(item_pub), objective=obj, similarity=sim,
              dim=k, reg=fm["reg"], alpha=fm.get("alpha") or 0.0)
    als.init_factors(0)
    als.mu, als.scale = float(fm["mu"]), float(fm["score_scale"])  # the version's, not this row's
    _, v_int = ALS.internal_from_published(None, item_pub, obj, sim, k, als.mu)
    als.V = torch.from_numpy(np.ascontiguousarray(v_int, dtype=np.float32))
    with torch.no_grad():
        als._solve_side(als.user_chunks, als.U, als.V, als.i)
    return als.published()[0][0]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=200, n_items=120, n_triples=5000, seed=5)


@pytest.mark.parametrize("objective,similarity", [
    ("implicit", "dot"), ("squared", "dot"), ("implicit", "cosine"), ("squared", "cosine"),
])
def test_fold_in_is_the_training_step_with_items_fixed(tmp_path, data, objective, similarity):
    from mcrecall.train.trainer import train_run

    fill_store(tmp_path, data)
    cfg = small_config(tmp_path, dim=6, epochs=3, objective=objective, similarity=similarity,
                       reg=0.1, alpha=2.0)
    res = train_run(cfg, **QUIET)
    assert res.status == "published"
    client = RecallClient(cfg)
    vs = vector_store_from_config(cfg)
    ts = TripleStore(cfg.data_dir)
    try:
        v = client.version
        meta = client._registry.metadata(v)
        ids = ts.snapshot().item_ids
        pub = vs.get_vectors(v, ids, missing="nan")
        keep = ~np.isnan(pub).any(axis=1)
        item_ids = [i for i, kp in zip(ids, keep, strict=False) if kp]
        item_pub = pub[keep]
        row = {i: j for j, i in enumerate(item_ids)}
        # a brand-new user, and a trained user who clicks on more items
        ts.put_scores(["fresh"] * 6, item_ids[:6], [4, 3, 0, 2, 1, 3])
        before = client.user_vector("u3")
        assert before.source == "model"
        ts.put_scores(["u3", "u3"], item_ids[10:12], [4, 4])
        tol = dict(rtol=2e-3, atol=2e-4) if similarity == "cosine" else dict(rtol=1e-4, atol=1e-5)
        for user in ("fresh", "u3"):
            uv = client.user_vector(user)
            assert uv.version == v and uv.source == "fold_in"
            hist, scores = ts.user_history(user)
            known = [i in row for i in hist]
            want = training_user_step(meta, item_pub, [row[i] for i, k in zip(hist, known, strict=False) if k],
                                      np.asarray(scores)[known])
            np.testing.assert_allclose(uv.vector, want, **tol, err_msg=user)
            # and the recall ranks by exactly that vector
            s = item_pub.astype(np.float64) @ want.astype(np.float64)
            if similarity == "cosine":
                s = s / (np.linalg.norm(item_pub, axis=1) * np.linalg.norm(want))
            s *= float(meta["score_scale"])
            top = np.argsort(-s)[:8]
            got = client.recall(user, 8)
            assert [r.source for r in got] == ["fold_in"] * 8
            assert [r.item_id for r in got] == [item_ids[j] for j in top]
            np.testing.assert_allclose([r.score for r in got], s[top], rtol=1e-3, atol=1e-4)
        assert not np.allclose(before.vector, client.user_vector("u3").vector)
    finally:
        client.close()
        vs.close()

"""Every backend (milvus, faiss, hnswlib, exact) serves the same answers on a flat index.

One set of model vectors and triples is published into each backend (Milvus through the session's
Milvus server); for every user kind — stored vector, fold-in, popular, with and without
exclude_seen — the four clients must agree with each other and with the brute-force truth.
"""

from __future__ import annotations

import numpy as np
import pytest

from mcrecall.core.config import load_config
from mcrecall.ingest.store import TripleStore
from mcrecall.plugins import vector_store_from_config
from mcrecall.serve import RecallClient
from mcrecall.serve.testing import publish_vectors
from mcrecall.train.foldin import fold_in
from mcrecall.train.versions import ModelRegistry

BACKENDS = ("exact", "faiss", "hnswlib", "milvus")
DIM, N_USERS, N_ITEMS, K = 12, 30, 800, 15


def _data(seed=3):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(N_USERS, DIM)).astype(np.float32)
    # varied norms: a dot model through L2/COSINE needs the inner-product reduction to be right
    V = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32) * rng.uniform(0.3, 3, (N_ITEMS, 1))
    triples = [("u0", f"i{j}", 1 + j % 4) for j in range(0, 300, 3)]  # 100 seen: the exclude-in-store path
    triples += [("u1", f"i{j}", 2) for j in range(0, 800, 2)]  # 400 seen: the client-rounds path
    triples += [("newbie", f"i{j}", 3) for j in (5, 6, 7, 500)]
    triples += [("shy", "i9", 0)]
    return U, V.astype(np.float32), triples


@pytest.mark.slow
@pytest.mark.milvus
@pytest.mark.parametrize("metric", ["IP", "L2", "COSINE"])
def test_all_backends_serve_the_same_answers(tmp_path, metric, milvus_uri, milvus_collection):
    U, V, triples = _data()
    user_ids = [f"u{i}" for i in range(N_USERS)]
    item_ids = [f"i{j}" for j in range(N_ITEMS)]
    answers, clients = {}, []
    try:
        for backend in BACKENDS:
            cfg = load_config(environ={}).with_overrides(
                store={"data_dir": str(tmp_path / backend)},
                index={"backend": backend, "metric": metric, "index_type": "FLAT",
                       "uri": milvus_uri if backend == "milvus" else "",
                       "collection": milvus_collection})
            ts = TripleStore(cfg.data_dir)
            ts.put_scores([t[0] for t in triples if t[0] in ("u0", "u1")],
                          [t[1] for t in triples if t[0] in ("u0", "u1")],
                          [t[2] for t in triples if t[0] in ("u0", "u1")])
            reg = ModelRegistry(cfg.data_dir)
            vs = vector_store_from_config(cfg)
            v = publish_vectors(reg, vs, user_ids=user_ids, user_vectors=U, item_ids=item_ids,
                                item_vectors=V, metric=metric, store_seq=ts.seq, reg=0.1,
                                popular_items=[[f"i{j}", 50.0 - j] for j in range(40)])
            rest = [t for t in triples if t[0] not in ("u0", "u1")]  # after training: fold in
            ts.put_scores([t[0] for t in rest], [t[1] for t in rest], [t[2] for t in rest])
            client = RecallClient(cfg, registry=reg, vector_store=vs)
            clients.append((client, vs))
            got = {}
            for user in ("u0", "u1", "u2", "u17", "newbie", "shy", "ghost"):
                for ex in (False, True):
                    got[user, ex] = client.recall_result(user, K, exclude_seen=ex)
            got["score"] = client.score("u2", ["i1", "i2", "i799", "zzz"])
            answers[backend] = (v, got, reg.metadata(v))
    finally:
        for client, vs in clients:
            client.close()
            vs.close()

    # the truth, by brute force in float64
    def top(vec, exclude=()):
        s = V.astype(np.float64) @ np.asarray(vec, np.float64)
        order = [j for j in np.argsort(-s, kind="stable") if f"i{j}" not in exclude]
        return [f"i{j}" for j in order[:K]], s[order[:K]]

    meta = answers["exact"][2]
    x_new = fold_in(V[[5, 6, 7, 500]], np.full(4, 3.0), meta)
    seen = {u: {t[1] for t in triples if t[0] == u} for u in ("u0", "u1", "newbie", "shy")}
    truth = {}
    for user, vec, source in (("u0", U[0], "model"), ("u1", U[1], "model"), ("u2", U[2], "model"),
                              ("u17", U[17], "model"), ("newbie", x_new, "fold_in")):
        for ex in (False, True):
            truth[user, ex] = (source, *top(vec, seen.get(user, ()) if ex else ()))
    for backend, (_v, got, _) in answers.items():
        for (user, ex), (source, ids, scores) in truth.items():
            res = got[user, ex]
            assert res.source == source, (backend, user, ex)
            assert [r.item_id for r in res.items] == ids, (backend, user, ex)
            np.testing.assert_allclose([r.score for r in res.items], scores, rtol=2e-4,
                                       atol=2e-4, err_msg=f"{backend} {user} {ex}")
        assert [r.item_id for r in got["shy", True].items] == [f"i{j}" for j in range(40)
                                                             if j != 9][:K]
        assert got["ghost", False].source == "popular"
        assert [r.item_id for r in got["ghost", False].items] == [f"i{j}" for j in range(K)]
        np.testing.assert_allclose(got["score"][:3], [V[j] @ U[2] for j in (1, 2, 799)],
                                   rtol=1e-5)
        assert got["score"][3] is None  # an item the version does not know


@pytest.mark.slow
@pytest.mark.milvus
def test_milvus_that_stops_answering_is_a_clear_error_within_the_timeout(tmp_path):
    """A Milvus server that hangs (SIGSTOP) or dies mid-life: recall raises
    VectorStoreUnavailableError after about [index] timeout_s instead of hanging."""
    import os
    import signal
    import time

    from mcrecall.plugins.milvus_server import MilvusLiteServer
    from mcrecall.serve import VectorStoreUnavailableError

    server = MilvusLiteServer(tmp_path / "milvus")
    server.start(timeout=90)
    try:
        cfg = load_config(environ={}).with_overrides(
            store={"data_dir": str(tmp_path / "data")},
            index={"backend": "milvus", "uri": server.uri, "index_type": "FLAT",
                   "timeout_s": 1.0})
        U, V, _ = _data()
        reg = ModelRegistry(cfg.data_dir)
        vs = vector_store_from_config(cfg)
        publish_vectors(reg, vs, user_ids=[f"u{i}" for i in range(N_USERS)], user_vectors=U,
                        item_ids=[f"i{j}" for j in range(N_ITEMS)], item_vectors=V)
        vs.close()
        client = RecallClient(cfg, registry=reg)
        assert len(client.recall("u1", 5)) == 5
        os.kill(server.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(VectorStoreUnavailableError, match="did not answer"):
                client.recall("u2", 5)
            assert time.monotonic() - t0 < 5
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert len(client.recall("u2", 5)) == 5  # and it recovers when the server does
        server.stop()
        t0 = time.monotonic()
        with pytest.raises(VectorStoreUnavailableError):
            client.recall("u3", 5)
        assert time.monotonic() - t0 < 5
        client.close()
    finally:
        server.stop()

"""The recall client against real LMDB stores and the ``exact`` backend, on versions published
from known vectors (so every expected answer is a brute-force computation in the test)."""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest

from mcrecall import serve
from mcrecall.core.config import ConfigError, load_config
from mcrecall.ingest.store import TripleStore
from mcrecall.plugins import vector_store_from_config
from mcrecall.serve import NoModelError, RecallClient, Recalled, VectorStoreUnavailableError
from mcrecall.serve.testing import publish_vectors
from mcrecall.train.foldin import fold_in
from mcrecall.train.versions import ModelRegistry

DIM = 8
N_USERS, N_ITEMS = 40, 600


class Env:
    """A data dir with a writable registry, a vector store, a triple store and a client."""

    def __init__(self, tmp_path, backend="exact", metric="IP", serve_cfg=None, index=None):
        self.cfg = load_config(environ={}).with_overrides(
            store={"data_dir": str(tmp_path / "data")},
            index={"backend": backend, "metric": metric, "index_type": "FLAT", **(index or {})},
            serve=serve_cfg or {},
        )
        self.registry = ModelRegistry(self.cfg.data_dir)
        self.vs = vector_store_from_config(self.cfg)
        self.triples = TripleStore(self.cfg.data_dir)
        self.rng = np.random.default_rng(7)
        self.user_ids = [f"u{i}" for i in range(N_USERS)]
        self.item_ids = [f"i{j}" for j in range(N_ITEMS)]
        self.versions: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # LMDB allows one handle per path and process: the client shares the writer's registry
        self.client = RecallClient(self.cfg, registry=self.registry)

    def publish(self, **kw) -> int:
        U = kw.pop("U", None)
        V = kw.pop("V", None)
        U = self.rng.normal(size=(N_USERS, DIM)).astype(np.float32) if U is None else U
        V = self.rng.normal(size=(N_ITEMS, DIM)).astype(np.float32) if V is None else V
        kw.setdefault("store_seq", self.triples.seq)
        kw.setdefault("metric", self.cfg.index.metric)
        v = publish_vectors(self.registry, self.vs, user_ids=self.user_ids, user_vectors=U,
                            item_ids=self.item_ids, item_vectors=V, **kw)
        self.versions[v] = (U, V)
        return v

    def top(self, version, vec, k, exclude=(), scale=1.0, cosine=False):
        """Brute-force top-k (ids, scores) of a model-space vector in a version."""
        _, V = self.versions[version]
        s = V.astype(np.float64) @ np.asarray(vec, np.float64)
        if cosine:
            s = s / (np.linalg.norm(V, axis=1) * np.linalg.norm(vec))
        s = s * scale
        order = [j for j in np.argsort(-s, kind="stable") if self.item_ids[j] not in exclude]
        return [self.item_ids[j] for j in order[:k]], [float(s[j]) for j in order[:k]]


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.client.close()
    e.vs.close()


def assert_matches(got: list[Recalled], ids, scores, source, rel=1e-4):
    assert [r.item_id for r in got] == ids
    assert [r.source for r in got] == [source] * len(ids)
    np.testing.assert_allclose([r.score for r in got], scores, rtol=rel, atol=1e-4)
    assert all(a.score >= b.score for a, b in zip(got, got[1:], strict=False)), "not best first"


def implicit_solve(V, y, G, reg, alpha):
    """The implicit-ALS user solve (Hu, Koren & Volinsky; weighted-λ), written out here
    independently of train.foldin: preference p = [y > 0], confidence c = 1 + α y, all cells."""
    a = alpha * y
    p = (y > 0).astype(float)
    H = G + (V.T * a) @ V + reg * (a.sum() + 1.0) * np.eye(V.shape[1])
    return np.linalg.solve(H, V.T @ ((1.0 + a) * p))


# ---------------------------------------------------------------------------------------------
def test_recall_is_the_models_exact_top_k(env):
    assert env.client.version is None
    v = env.publish()
    assert env.client.version == v
    U, _ = env.versions[v]
    for u in (0, 5, 17):
        ids, scores = env.top(v, U[u], 10)
        res = env.client.recall_result(f"u{u}", 10)
        assert res.version == v and res.source == "model"
        assert_matches(res.items, ids, scores, "model")
    # integer ids are their decimal strings (DESIGN §1)
    env.triples.put_scores(["42"], ["i3"], [2])
    assert env.client.recall(42, 3) == env.client.recall("42", 3)


@pytest.mark.parametrize("direct_max", [256, 0], ids=["exclude-in-store", "client-rounds"])
def test_exclude_seen_still_returns_k(tmp_path, direct_max):
    e = Env(tmp_path, serve_cfg={"exclude_direct_max": direct_max, "fold_in": False})
    v = e.publish()
    U, V = e.versions[v]
    # the worst case: the user has seen exactly their 300 best items (and a few poor ones)
    best = np.argsort(-(V @ U[3]))
    seen = [e.item_ids[j] for j in best[:300]] + [e.item_ids[j] for j in best[-5:]]
    e.triples.put_scores(["u3"] * len(seen), seen, [1] * len(seen))
    res = e.client.recall("u3", 25, exclude_seen=True)
    ids, scores = e.top(v, U[3], 25, exclude=set(seen))
    assert_matches(res, ids, scores, "model")
    assert not set(seen) & {r.item_id for r in res}
    # a light user, and a request for more than what is left
    e.triples.put_scores(["u4"] * 3, [e.item_ids[j] for j in np.argsort(-(V @ U[4]))[:3]], [1] * 3)
    ids, scores = e.top(v, U[4], 10, exclude=set(e.triples.user_history("u4")[0]))
    assert_matches(e.client.recall("u4", 10, exclude_seen=True), ids, scores, "model")
    assert len(e.client.recall("u3", 1000, exclude_seen=True)) == N_ITEMS - len(seen)
    e.client.close()
    e.vs.close()


def test_cold_start_gets_popular_minus_seen(env):
    popular = [[f"i{j}", float(100 - j)] for j in range(30)]
    env.publish(popular_items=popular)
    res = env.client.recall_result("stranger", 5)
    assert res.source == "popular"
    # popularity as a share of the most popular item's, in (0, 1]: on no model's scale
    assert res.items == [Recalled(f"i{j}", (100 - j) / 100, "popular") for j in range(5)]
    # a user whose only triples are impressions: implicit fold-in has nothing to go on
    env.triples.put_scores(["shy"] * 3, ["i0", "i2", "i5"], [0, 0, 0])
    res = env.client.recall("shy", 4, exclude_seen=True)
    assert [r.item_id for r in res] == ["i1", "i3", "i4", "i6"]
    assert {r.source for r in res} == {"popular"}
    assert [r.item_id for r in env.client.recall("shy", 2)] == ["i0", "i1"]
    assert env.client.score("stranger", ["i0", "nope"]) == [None, None]  # no vector: no opinion


def test_fold_in_for_new_and_changed_users(env):
    v = env.publish(reg=0.2, alpha=3.0)
    U, V = env.versions[v]
    meta = env.registry.metadata(v)
    # a brand-new user, after the version was trained
    items, scores = ["i10", "i11", "i12", "i400"], [3, 1, 4, 0]
    env.triples.put_scores(["newbie"] * 4, items, scores)
    rows = [env.item_ids.index(i) for i in items]
    y = np.array(scores, float)
    expected = implicit_solve(V[rows].astype(float), y, V.T.astype(float) @ V, 0.2, 3.0)
    np.testing.assert_allclose(fold_in(V[rows], y, meta), expected, rtol=1e-4, atol=1e-6)
    res = env.client.recall_result("newbie", 10)
    assert res.source == "fold_in"
    ids, sc = env.top(v, expected, 10)
    assert_matches(res.items, ids, sc, "fold_in")
    # a user the version knows keeps the stored vector until their triples change
    assert env.client.recall_result("u1", 3).source == "model"
    env.triples.put_scores(["u1"], ["i99"], [4])
    res = env.client.recall_result("u1", 10)
    assert res.source == "fold_in"
    x = implicit_solve(V[[99]].astype(float), np.array([4.0]), V.T.astype(float) @ V, 0.2, 3.0)
    assert_matches(res.items, *env.top(v, x, 10), "fold_in")
    # the next version, trained on these triples, serves stored vectors again
    v2 = env.publish()
    assert env.client.recall_result("u1", 3).source == "model"
    assert env.client.recall_result("newbie", 3).source == "popular"  # not in v2's users
    assert v2 > v


def test_fold_in_follows_new_triples_within_a_second(env):
    v = env.publish()
    _, V = env.versions[v]
    env.triples.put_scores(["fresh"], ["i7"], [2])
    first = env.client.recall("fresh", 5)
    for item in ["i8", "i9", "i30"]:
        env.triples.put_scores(["fresh"], [item], [3])
        t0 = time.monotonic()
        res = env.client.recall("fresh", 5)
        assert time.monotonic() - t0 < 1.0
        hist_items, hist_scores = env.triples.user_history("fresh")
        rows = [env.item_ids.index(i) for i in hist_items]
        x = fold_in(V[rows], hist_scores, env.registry.metadata(v))
        assert_matches(res, *env.top(v, x, 5), "fold_in")
    assert res != first
    # switched off: the stored vector, or popular for an unknown user
    off = RecallClient(env.cfg.with_overrides(serve={"fold_in": False}), registry=env.registry)
    assert off.recall_result("fresh", 3).source == "popular"
    env.triples.put_scores(["u2"], ["i5"], [4])
    assert off.recall_result("u2", 3).source == "model"
    assert env.client.recall_result("u2", 3).source == "fold_in"


def test_score_is_the_predicted_interest(env):
    v = env.publish()
    U, V = env.versions[v]
    got = env.client.score("u6", ["i3", "i77", "nope", "i3"])
    np.testing.assert_allclose(got[:2], [V[3] @ U[6], V[77] @ U[6]], rtol=1e-5)
    assert got[2] is None and got[3] == got[0]  # an item the version does not know: None
    assert not any(isinstance(g, float) and math.isnan(g) for g in got)
    top = env.client.recall("u6", 5)
    np.testing.assert_allclose(env.client.score("u6", [r.item_id for r in top]),
                               [r.score for r in top], rtol=1e-5)
    assert env.client.score("u6", []) == []


@pytest.mark.parametrize("metric", ["COSINE", "L2", "IP"])
def test_cosine_model_scores_are_scaled(tmp_path, metric):
    e = Env(tmp_path, metric=metric)
    v = e.publish(similarity="cosine", score_scale=2.5, objective="squared")
    U, _ = e.versions[v]
    ids, scores = e.top(v, U[9], 8, scale=2.5, cosine=True)
    assert_matches(e.client.recall("u9", 8), ids, scores, "model")
    np.testing.assert_allclose(e.client.score("u9", ids), scores, rtol=1e-5)
    e.client.close()
    e.vs.close()


def test_dot_through_l2_and_cosine_metrics(tmp_path):
    for metric in ("L2", "COSINE"):
        e = Env(tmp_path / metric, metric=metric)
        v = e.publish()
        U, _ = e.versions[v]
        assert_matches(e.client.recall("u2", 10), *e.top(v, U[2], 10), "model")
        e.client.close()
        e.vs.close()


@pytest.mark.parametrize("call,exc,msg", [
    (lambda c: c.recall("u1", 0), ValueError, "positive integer"),
    (lambda c: c.recall("u1", -3), ValueError, "positive integer"),
    (lambda c: c.recall("u1", 10**9), ValueError, "max_k"),
    (lambda c: c.recall("u1", 2.5), TypeError, "k must be"),
    (lambda c: c.recall("u1", "10"), TypeError, "k must be"),
    (lambda c: c.recall("u1", True), TypeError, "k must be"),
    (lambda c: c.recall("u1", None), TypeError, "k must be"),
    (lambda c: c.recall(None, 3), TypeError, "user_id"),
    (lambda c: c.recall(1.5, 3), TypeError, "user_id"),
    (lambda c: c.recall(b"u1", 3), TypeError, "user_id"),
    (lambda c: c.recall(["u1"], 3), TypeError, "user_id"),
    (lambda c: c.recall("", 3), ValueError, "empty"),
    (lambda c: c.recall(-4, 3), ValueError, "non-negative"),
    (lambda c: c.recall("x" * 129, 3), ValueError, "128"),
    (lambda c: c.recall("u1", 3, exclude_seen="yes"), TypeError, "exclude_seen"),
    (lambda c: c.score("u1", "i1"), TypeError, "list of ids"),
    (lambda c: c.score("u1", ["i1", 2.0]), TypeError, r"item_ids\[1\]"),
])
def test_bad_input_is_a_clear_error(env, call, exc, msg):
    env.publish()
    with pytest.raises(exc, match=msg):
        call(env.client)


def test_errors_before_publication_and_for_bad_config(env, tmp_path):
    with pytest.raises(NoModelError, match="mcrecall train"):
        env.client.recall("u1", 3)
    bad = tmp_path / "bad.toml"
    bad.write_text("[serve]\nfold_inn = true\n")
    with pytest.raises(ConfigError, match="unknown config key"):
        RecallClient.from_config(bad)
    bad.write_text("[serve]\nmax_k = 0\n")
    with pytest.raises(ConfigError, match="max_k"):
        RecallClient.from_config(bad)


def test_vector_store_down_is_a_clear_error_not_a_hang(env, tmp_path):
    import socket

    env.publish()
    # a server that accepts connections and never answers, and a port nobody listens on
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    try:
        for uri in (f"http://127.0.0.1:{sock.getsockname()[1]}", f"http://127.0.0.1:{dead_port}"):
            cfg = env.cfg.with_overrides(index={"backend": "milvus", "uri": uri, "timeout_s": 1.0})
            client = RecallClient(cfg, registry=env.registry)
            t0 = time.monotonic()
            with pytest.raises(VectorStoreUnavailableError, match="milvus"):
                client.recall("u1", 3)
            assert time.monotonic() - t0 < 10
    finally:
        sock.close()


@pytest.mark.slow
def test_version_swaps_under_concurrent_recalls(env):
    """Publishing while threads recall: every answer complete and from one version."""
    env.publish()
    answers: list = []
    errors: list = []
    stop = threading.Event()

    def loop(user):
        while not stop.is_set():
            try:
                answers.append((user, env.client.recall_result(user, 10)))
            except Exception as e:
                errors.append(e)

    threads = [threading.Thread(target=loop, args=(f"u{j}",)) for j in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(6):
            time.sleep(0.05)
            env.publish()
    finally:
        time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    seen_versions = {res.version for _, res in answers}
    assert len(seen_versions) >= 3, seen_versions
    for user, res in answers:
        U, _ = env.versions[res.version]
        assert_matches(res.items, *env.top(res.version, U[int(user[1:])], 10), "model")


def test_a_version_dropped_mid_recall_is_retried_on_the_current_one(env):
    old = env.publish()
    env.publish()
    new = env.publish()  # publishing keeps only the current and the previous version
    assert old not in env.registry.versions()

    class Stale:
        """The pointer read just before two publications; afterwards the real one."""

        def __init__(self, reg):
            self.reg, self.calls = reg, 0

        def current_version(self):
            self.calls += 1
            return old if self.calls == 1 else self.reg.current_version()

        def __getattr__(self, name):
            return getattr(self.reg, name)

    client = RecallClient(env.cfg, registry=Stale(env.registry))
    res = client.recall_result("u3", 10)
    U, _ = env.versions[new]
    assert res.version == new
    assert_matches(res.items, *env.top(new, U[3], 10), "model")


def test_threads_get_the_same_answers_as_one_thread(env):
    v = env.publish()
    env.triples.put_scores(["n1", "n1", "n2"], ["i1", "i2", "i3"], [2, 3, 1])
    users = ["u0", "u1", "n1", "n2", "ghost", "u7"]
    want = {u: env.client.recall(u, 7, exclude_seen=True) for u in users}
    fresh = RecallClient(env.cfg, registry=env.registry)  # cold caches, filled concurrently
    bad: list = []

    def work(j):
        for n in range(60):
            u = users[(j + n) % len(users)]
            if fresh.recall(u, 7, exclude_seen=True) != want[u]:
                bad.append(u)

    threads = [threading.Thread(target=work, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad
    assert {want["n1"][0].source, want["ghost"][0].source} == {"fold_in", "popular"}
    assert v == fresh.version


def test_cli_prints_a_table(env, tmp_path, capsys):
    from mcrecall.cli import main

    v = env.publish()
    U, _ = env.versions[v]
    env.client.close()
    env.registry.close()  # the CLI opens its own read-only handle
    conf = tmp_path / "c.toml"
    conf.write_text(f'[store]\ndata_dir = "{env.cfg.data_dir}"\n'
                    '[index]\nbackend = "exact"\nindex_type = "FLAT"\n')
    assert main(["--config", str(conf), "recall", "u5", "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    ids, scores = env.top(v, U[5], 3)
    assert out[1].split() == ["rank", "item", "score", "source", "version"]
    assert [line.split()[1] for line in out[3:]] == ids
    assert all(line.split()[3:] == ["model", str(v)] for line in out[3:])
    assert main(["--config", str(conf), "recall", "u5", "-k", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == v and [i["item_id"] for i in doc["items"]] == ids[:2]
    assert main(["--config", str(conf), "recall", "u5", "-k", "0"]) == 1
    assert "positive integer" in capsys.readouterr().err


def test_module_level_recall_uses_the_default_config(env, tmp_path, monkeypatch):
    v = env.publish()
    U, _ = env.versions[v]
    env.client.close()
    env.registry.close()
    conf = tmp_path / "c.toml"
    conf.write_text(f'[store]\ndata_dir = "{env.cfg.data_dir}"\n'
                    '[index]\nbackend = "exact"\nindex_type = "FLAT"\n')
    monkeypatch.setenv("MCRECALL_CONFIG", str(conf))
    monkeypatch.setattr(serve, "_default", None)
    try:
        assert [r.item_id for r in serve.recall("u8", 4)] == env.top(v, U[8], 4)[0]
        assert serve.default_client() is serve.default_client()
    finally:
        if serve._default is not None:
            serve._default.close()


# --------------------------------------------------------------------------- ids are data, exactly k
def test_hostile_ids_through_recall_and_score(tmp_path):
    from mcrecall.plugins.testing import HOSTILE_IDS

    e = Env(tmp_path)
    hostile = list(HOSTILE_IDS)
    e.item_ids = hostile + [f"i{j}" for j in range(N_ITEMS - len(hostile))]
    e.user_ids = ["rock'n'roll", "u\x00", "x'] or not id in ['"] + e.user_ids[3:]
    v = e.publish()
    U, V = e.versions[v]
    for u, uid in enumerate(e.user_ids[:3]):
        ids, scores = e.top(v, U[u], 50)
        assert_matches(e.client.recall(uid, 50), ids, scores, "model")
        np.testing.assert_allclose(e.client.score(uid, hostile), V[:len(hostile)] @ U[u], rtol=1e-5)
        assert e.client.score(uid, ["tail", "x'] or id in ['"]) == [None, None]
    # seen hostile items are excluded exactly (and nothing that merely resembles them)
    seen = ["tail\x00", "it's", "x'] or not id in ['"]
    e.triples.put_scores(["rock'n'roll"] * 3, seen, [1, 1, 1])
    got = [r.item_id for r in e.client.recall("rock'n'roll", N_ITEMS, exclude_seen=True)]
    assert len(got) == N_ITEMS - 3 and not set(seen) & set(got) and "tail" not in got
    e.client.close()
    e.vs.close()


@pytest.mark.parametrize("backend", ["faiss", "hnswlib"])
@pytest.mark.parametrize("direct_max", [256, 0], ids=["exclude-in-store", "client-rounds"])
def test_exactly_k_with_an_ann_index_and_exclude_seen(tmp_path, backend, direct_max):
    """min(k, unseen items) on an approximate index, k up to every item of the version."""
    e = Env(tmp_path, backend=backend, index={"index_type": "HNSW", "flat_max_items": 0},
            serve_cfg={"exclude_direct_max": direct_max, "fold_in": False})
    v = e.publish(index_type="HNSW")
    U, V = e.versions[v]
    seen = [e.item_ids[j] for j in np.argsort(-(V @ U[3]))[:40]]
    e.triples.put_scores(["u3"] * len(seen), seen, [1] * len(seen))
    for k in (10, N_ITEMS - 41, N_ITEMS - 40, N_ITEMS - 1, N_ITEMS, e.cfg.serve.max_k):
        got = e.client.recall("u3", k, exclude_seen=True)
        ids = [r.item_id for r in got]
        assert len(ids) == min(k, N_ITEMS - 40) == len(set(ids)), (k, len(ids))
        assert not set(ids) & set(seen)
        assert len(e.client.recall("u5", k)) == min(k, N_ITEMS)
    e.client.close()
    e.vs.close()


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_exactly_k_for_users_without_a_vector(tmp_path, backend):
    """Issue 20 #10: a user without a vector gets min(k, items) too, not just the stored list."""
    index = {"index_type": "HNSW", "flat_max_items": 0} if backend == "faiss" else None
    e = Env(tmp_path, backend=backend, index=index, serve_cfg={"fold_in": False})
    popular = [[f"i{j}", float(100 - j)] for j in range(30)]
    v = e.publish(popular_items=popular, index_type="HNSW" if index else "FLAT")
    _, V = e.versions[v]
    for k in (5, 30, 31, 200, N_ITEMS, e.cfg.serve.max_k):
        res = e.client.recall_result("nobody", k)
        ids = [r.item_id for r in res.items]
        assert res.source == "popular" and {r.source for r in res.items} == {"popular"}
        assert len(ids) == min(k, N_ITEMS) == len(set(ids)), (k, len(ids))
        # the stored popularity order first, unchanged; the rest scored 0 (popularity unknown)
        assert ids[:min(k, 30)] == [f"i{j}" for j in range(min(k, 30))]
        assert all(r.score == 0.0 for r in res.items[30:])
        assert all(a.score >= b.score for a, b in zip(res.items, res.items[1:], strict=False))
    # the filler follows the typical taste: the popularity-weighted mean of the listed vectors
    w = np.array([100 - j for j in range(30)], np.float64)
    q = (w[:, None] * V[:30].astype(np.float64)).sum(0) / w.sum()
    want = [e.item_ids[j] for j in np.argsort(-(V.astype(np.float64) @ q), kind="stable") if j >= 30][:20]
    got = [r.item_id for r in e.client.recall("nobody", 50)][30:]
    if backend == "exact":
        assert got == want
    # with exclude_seen: min(k, unseen items), seen ones left out of both parts
    seen = ["i0", "i1", "i40", "i41", "i42"]
    e.triples.put_scores(["shy"] * len(seen), seen, [0] * len(seen))
    got = e.client.recall("shy", N_ITEMS, exclude_seen=True)
    assert len(got) == N_ITEMS - len(seen) and not {r.item_id for r in got} & set(seen)
    # a version that recorded no popularity at all still answers k items
    e.publish(popular_items=[], index_type="HNSW" if index else "FLAT")
    assert len(e.client.recall("nobody", 77)) == 77
    e.client.close()
    e.vs.close()

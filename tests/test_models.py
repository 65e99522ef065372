"""mcrecall.models.MatrixFactorization: the model as a library (issue 17 §2).

It must rank better than most-popular on a hold-out, agree between raw ids and a sparse matrix,
round-trip through save/load (hostile ids included), give exactly min(k, n) items, fall back to
popular items for unknown users, refuse bad settings with the configuration's own messages, fit
every objective, score as the served system does, and import no Kafka, LMDB or Milvus.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from mcrecall.core.config import ConfigError
from mcrecall.models import MatrixFactorization, NotFittedError
from mcrecall.plugins.exact_store import ExactVectorStore
from mcrecall.train.evaluate import RELEVANT_MIN_SCORE
from mcrecall.train.split import holdout_mask
from mcrecall.train.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
FAST = {"dim": 8, "epochs": 4, "threads": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_users=400, n_items=250, n_triples=16_000, seed=5)


def raw(d, mask=None):
    m = np.ones(len(d), bool) if mask is None else mask
    return ([d.user_ids[u] for u in d.user_idx[m]], [d.item_ids[i] for i in d.item_idx[m]],
            d.score[m])


@pytest.fixture(scope="module")
def fitted(data):
    return MatrixFactorization(**FAST).fit(*raw(data))


def recall_at_10(recs_by_user: dict, relevant: dict) -> float:
    hits = sum(len(set(recs_by_user[u]) & rel) for u, rel in relevant.items())
    return hits / sum(len(r) for r in relevant.values())


def test_beats_most_popular_on_a_hold_out(data):
    test = holdout_mask(data.user_idx, data.item_idx, data.user_ids, data.item_ids, 0.2)
    model = MatrixFactorization(dim=16, epochs=8, threads=1, device="cpu").fit(*raw(data, ~test))
    relevant: dict = {}
    for u, i, y in zip(*raw(data, test), strict=True):
        if y >= RELEVANT_MIN_SCORE:
            relevant.setdefault(u, set()).add(i)
    users = sorted(relevant)
    recs = dict(zip(users, ([i for i, _ in r] for r in model.recommend(users, k=10)), strict=True))
    # most popular (positive training triples), leaving out what the user has seen, as the model
    tu, ti, ty = raw(data, ~test)
    count: dict = {}
    seen: dict = {}
    for u, i, y in zip(tu, ti, ty, strict=True):
        seen.setdefault(u, set()).add(i)
        count[i] = count.get(i, 0) + (y > 0)
    order = sorted(count, key=lambda i: -count[i])
    pop = {u: [i for i in order if i not in seen.get(u, ())][:10] for u in users}
    r_model, r_pop = recall_at_10(recs, relevant), recall_at_10(pop, relevant)
    assert r_model > 1.2 * r_pop, (r_model, r_pop)
    assert all(len(r) == 10 for r in recs.values())


def test_raw_ids_and_a_sparse_matrix_give_the_same_model(data):
    matrix = sp.csr_matrix((data.score, (data.user_idx, data.item_idx)),
                           shape=(len(data.user_ids), len(data.item_ids)))
    a = MatrixFactorization(**FAST).fit(matrix)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data))  # the input order does not matter either
    b = MatrixFactorization(**FAST).fit(data.user_idx[order].tolist(),
                                        [str(i) for i in data.item_idx[order]], data.score[order])
    assert a.user_ids == b.user_ids and a.item_ids == b.item_ids
    assert set(a.user_ids) <= {str(u) for u in range(len(data.user_ids))}
    np.testing.assert_array_equal(a.user_factors, b.user_factors)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)
    users = [0, 7, "13", 399]
    assert a.recommend(users, k=5) == b.recommend(users, k=5)
    # ids are the row/column numbers: the matrix's entries are the triples
    u, i = int(data.user_idx[0]), int(data.item_idx[0])
    assert str(i) in a.item_ids and np.isfinite(a.score(u, i))


def test_save_load_round_trip_gives_identical_answers(fitted, data, tmp_path):
    p = fitted.save(tmp_path / "m.npz")
    assert p == tmp_path / "m.npz" and not list(tmp_path.glob(".*tmp"))
    back = MatrixFactorization.load(p)
    users = data.user_ids[:50] + ["nobody"]
    assert back.recommend(users, k=10) == fitted.recommend(users, k=10)
    assert back.recommend(users, k=10, filter_seen=False) == fitted.recommend(users, k=10, filter_seen=False)
    assert back.similar_items(data.item_ids[:20], k=5) == fitted.similar_items(data.item_ids[:20], k=5)
    np.testing.assert_array_equal(back.score(users[0], data.item_ids), fitted.score(users[0], data.item_ids))
    np.testing.assert_array_equal(back.user_factors, fitted.user_factors)
    assert back.get_params() == fitted.get_params() and back.item_ids == fitted.item_ids
    with np.load(p, allow_pickle=False) as z:  # plain arrays: readable without pickle
        assert {"header", "user_vectors", "item_ids_utf8"} <= set(z.files)


HOSTILE = ['a"b', "it's", "nul\x00", "\x00", "trail\x00\x00", "new\nline", "tab\there", "back\\slash",
           "ünïcødé", "😀", "ø" * 64, "'); DROP TABLE users; --", " spaced ", "x" * 128]


def test_hostile_ids_round_trip_through_save_and_load(tmp_path):
    rng = np.random.default_rng(1)
    users = HOSTILE + [f"u{j}" for j in range(30)] + [10**30]
    items = HOSTILE[::-1] + [f"i{j}" for j in range(20)] + [0]
    pairs = {(u, i) for u in range(len(users)) for i in range(len(items)) if rng.random() < 0.3}
    pairs |= {(u, u % len(items)) for u in range(len(users))}  # every user has a triple
    uu, ii = zip(*sorted(pairs), strict=True)
    model = MatrixFactorization(**FAST).fit([users[u] for u in uu], [items[i] for i in ii],
                                            rng.integers(1, 5, len(uu)))
    back = MatrixFactorization.load(model.save(tmp_path / "hostile.npz"))
    want = {str(x) for x in users}
    assert set(back.user_ids) == want and str(10**30) in back.user_ids  # an int id: its decimal string
    assert set(back.item_ids) == {str(x) for x in items}
    assert back.recommend(HOSTILE, k=7) == model.recommend(HOSTILE, k=7)
    got = {i for r in back.recommend(HOSTILE, k=100, filter_seen=False) for i, _ in r}
    assert got == {str(x) for x in items}  # every item comes back exactly as given
    assert np.isfinite(back.score("nul\x00", "trail\x00\x00")) and np.isnan(back.score("nul", "trail"))


def test_batches_of_queries_give_the_same_answers(fitted, data, monkeypatch):
    import mcrecall.models as models

    users, items = data.user_ids[:40] + ["nobody"], data.item_ids[:30]
    want = fitted.recommend(users, k=7), fitted.similar_items(items, k=4)
    monkeypatch.setattr(models, "_BATCH_CELLS", 3 * len(fitted.item_ids))  # 3 queries a product
    got = fitted.recommend(users, k=7), fitted.similar_items(items, k=4)
    for w, g in zip(want, got, strict=True):  # the same items; scores to BLAS summation order
        assert [[i for i, _ in r] for r in g] == [[i for i, _ in r] for r in w]
        np.testing.assert_allclose([s for r in g for _, s in r], [s for r in w for _, s in r], rtol=1e-12)


def test_k_larger_than_the_catalogue(fitted, data):
    n = len(fitted.item_ids)
    u = data.user_ids[0]
    seen = {data.item_ids[i] for i in data.item_idx[data.user_idx == 0]}
    full = fitted.recommend(u, k=10 * n, filter_seen=False)
    assert len(full) == n and len({i for i, _ in full}) == n
    assert [s for _, s in full] == sorted((s for _, s in full), reverse=True)
    unseen = fitted.recommend(u, k=10 * n)
    assert len(unseen) == len(set(fitted.item_ids) - seen) and not seen & {i for i, _ in unseen}
    assert len(fitted.recommend("nobody", k=10 * n)) == n
    sims = fitted.similar_items(fitted.item_ids[0], k=10 * n)
    assert len(sims) == n - 1 and fitted.item_ids[0] not in {i for i, _ in sims}


def test_an_unknown_user_gets_the_most_popular_items(fitted, data):
    positives = np.bincount(data.item_idx[data.score > 0], minlength=len(data.item_ids))
    top = sorted(data.item_ids, key=lambda i: (-positives[data.item_ids.index(i)], i))[:10]
    got = fitted.recommend(["nobody", 12345], k=10)
    assert got[0] == got[1]
    assert [i for i, _ in got[0]] == top  # ties by id
    assert got[0][0][1] == 1.0 and all(0 <= s <= 1 for _, s in got[0])
    assert np.isnan(fitted.score("nobody", top)).all()
    assert fitted.similar_items("no-such-item") == []


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"dimm": 8}, r"unknown config key \[train\] dimm \(from MatrixFactorization"),
    ({"dim": 0}, r"\[train\] dim = 0 .* out of range"),
    ({"epochs": "many"}, r"\[train\] epochs .* expected an integer"),
    ({"similarity": "euclid"}, r"\[train\] similarity must be one of dot, cosine"),
    ({"objective": "hinge"}, r"\[train\] objective must be one of"),
    ({"reg": -1.0}, r"\[train\] reg = -1.0 .* out of range"),
    ({"device": "tpu"}, r"\[train\] device must be auto, cpu or cuda"),
])
def test_bad_settings_are_the_configs_own_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MatrixFactorization(**kwargs)


def test_settings_are_the_train_keys():
    m = MatrixFactorization("squared", dim=4, solver="CHOLESKY", seed=7)
    assert (m.config.objective, m.config.dim, m.config.solver, m.config.seed) == ("squared", 4, "cholesky", 7)
    assert MatrixFactorization(**m.get_params()).get_params() == m.get_params()
    assert MatrixFactorization().config.dim == 32  # the [train] default


def test_from_config_takes_a_files_train_table(tmp_path):
    f = tmp_path / "mcrecall.toml"
    f.write_text('[train]\nobjective = "squared"\ndim = 4\nreg = 0.5\n')
    m = MatrixFactorization.from_config(f, epochs=3)
    assert (m.config.objective, m.config.dim, m.config.reg, m.config.epochs) == ("squared", 4, 0.5, 3)
    assert MatrixFactorization.from_config(f, objective="bce").config.objective == "bce"
    with pytest.raises(ConfigError, match="dimm"):
        MatrixFactorization.from_config(f, dimm=3)


def test_bad_data_is_a_one_line_error(fitted, tmp_path):
    m = MatrixFactorization(**FAST)
    with pytest.raises(NotFittedError, match="call fit"):
        m.recommend("u")
    cases = [
        ((["u", "v"], ["a"], [1, 2]), ValueError, "same length"),
        ((["u"], ["a"], [5]), ValueError, r"scores must be in 0..4"),
        ((["u"], ["a"], [float("nan")]), ValueError, r"scores must be in 0..4"),
        ((["u", ""], ["a", "b"], [1, 2]), ValueError, r"user_ids\[1\]: id is empty"),
        ((["u"], [-3], [1]), ValueError, r"item_ids\[0\]"),
        ((["u"], [1.5], [1]), TypeError, r"item_ids\[0\]"),
        ((["u", "u"], ["a", "a"], [1, 2]), ValueError, "given more than once"),
        (([], [], []), ValueError, "at least one"),
        (("u", ["a"], [1]), TypeError, "sequence of ids"),
        (([[1, 2]],), TypeError, "sparse matrix"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            m.fit(*args)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        fitted.recommend("u", k=0)
    with pytest.raises(TypeError, match="filter_seen"):
        fitted.recommend("u", filter_seen="yes")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a MatrixFactorization file"):
        MatrixFactorization.load(bad)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a MatrixFactorization file"):
        MatrixFactorization.load(tmp_path / "other.npz")


@pytest.mark.parametrize(("objective", "similarity"),
                         [("implicit", "dot"), ("squared", "dot"), ("bce", "dot"), ("implicit", "cosine")])
def test_every_objective_fits_and_scores_as_the_served_system(data, tmp_path, objective, similarity):
    m = MatrixFactorization(objective, similarity=similarity, **FAST).fit(*raw(data))
    d = m.item_factors.shape[1]  # published: + 2 for squared/dot (mean, biases), + 1 for bce (bias)
    assert d == {"squared": 10, "bce": 9}.get(objective if similarity == "dot" else "", 8)
    assert m.user_factors.shape == (len(m.user_ids), d) and m.item_factors.shape == (len(m.item_ids), d)
    assert np.isfinite(m.user_factors).all() and np.isfinite(m.item_factors).all()
    # the served system: the exact vector store holding the same item vectors, score x scale
    vs = ExactVectorStore(data_dir=tmp_path)
    vs.create_version(1, dim=d, metric="IP", similarity=similarity)
    vs.upsert(1, m.item_ids, m.item_factors)
    vs.finalize(1)
    for row in (0, 3, 17):
        uid = m.user_ids[row]
        served = [(i, s * m.score_scale) for i, s in vs.search(1, m.user_factors[row], 10)]
        got = m.recommend(uid, k=10, filter_seen=False)
        assert [i for i, _ in got] == [i for i, _ in served]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in served], rtol=1e-5)
        np.testing.assert_allclose(m.score(uid, [i for i, _ in got]), [s for _, s in got], rtol=1e-12)
    vs.close()


@pytest.mark.slow
def test_imports_no_kafka_lmdb_or_milvus():
    code = ("import sys\nfrom mcrecall.models import MatrixFactorization\n"
            "m = MatrixFactorization(dim=2, epochs=1, threads=1, device='cpu')\n"
            "m.fit(['a', 'a', 'b'], ['x', 'y', 'x'], [1, 2, 3]).recommend(['a', 'c'], k=2)\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
            "('kafka', 'confluent_kafka', 'lmdb', 'pymilvus', 'milvus_lite', 'grpc'))\n"
            "serve = sorted(n for n in sys.modules if n.startswith(('mcrecall.serve', 'mcrecall.ingest')))\n"
            "print(bad, serve)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "[] []", p.stdout


# --- attributes: the hybrid model through the library (issue 21 §2) ---------------------------

def _attribute_data(data):
    """Every item gets a category token by its cluster-free id hash; two extra items with the
    same tokens and no triples, one with unique tokens."""
    items = sorted(set(data.item_ids))
    attrs = {i: {"category": f"c{hash_ % 7}", "tags": [f"t{hash_ % 3}", "shared"]}
             for hash_, i in enumerate(items)}
    attrs["new-a"] = {"category": "c1", "tags": ["t1", "shared"]}
    attrs["new-b"] = {"tags": ["shared", "t1"], "category": "c1"}  # same tokens, other order
    attrs["new-c"] = {"category": "c2", "tags": ["t0"]}
    users = {u: {"age": 20 + k % 5} for k, u in enumerate(sorted(set(data.user_ids))[:50])}
    users["fresh-user"] = {"age": 21}
    return attrs, users


def test_attributes_give_vectors_to_ids_without_triples_and_equal_tokens_equal_vectors(data):
    attrs, users = _attribute_data(data)
    m = MatrixFactorization(**FAST).fit(*raw(data), item_attributes=attrs, user_attributes=users)
    items = m.item_ids
    assert {"new-a", "new-b", "new-c"} <= set(items)
    V = m.item_factors
    a, b, c = (V[items.index(x)] for x in ("new-a", "new-b", "new-c"))
    assert np.any(a) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert "fresh-user" in m.user_ids  # a user with attributes only is served from them
    s = m.score("fresh-user", ["new-a", "new-c"])
    assert np.all(np.isfinite(s))
    # the attribute-only items are recallable: the k best over all items include them for someone
    recs = m.recommend(m.user_ids, k=len(items), filter_seen=False)
    assert all(len(r) == len(items) for r in recs)
    # ... and without attributes they do not exist
    plain = MatrixFactorization(**FAST).fit(*raw(data))
    assert "new-a" not in plain.item_ids
    off = MatrixFactorization(**FAST, attributes=False).fit(*raw(data), item_attributes=attrs)
    assert "new-a" not in off.item_ids  # [train] attributes = false: ID embeddings only


def test_bad_attributes_are_a_value_error_naming_the_id(data):
    with pytest.raises(ValueError, match="attributes of 'i-bad'"):
        MatrixFactorization(**FAST).fit(*raw(data), item_attributes={"i-bad": {"price": 1.5}})

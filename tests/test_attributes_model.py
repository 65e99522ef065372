"""The hybrid model (issue 21 §2, §4): attribute parts learned with the ALS objectives, the
cold-item evaluation against its two baselines, on synthetic data with planted attributes."""

from __future__ import annotations

import numpy as np
import pytest

from mcrecall.train import trainer as T
from mcrecall.train.als import ALS
from mcrecall.train.attributes import build_tokens
from mcrecall.train.synthetic import make_synthetic_attributes
from mcrecall.train.testing import small_config


@pytest.fixture(scope="module")
def cold_run():
    syn = make_synthetic_attributes(n_users=2000, n_items=3000, n_triples=40_000, seed=0)
    cfg = small_config("/nonexistent", device="cpu", compare_squared_sweeps=0)
    run = T.split_snapshot(cfg, syn, log=lambda s: None)
    model, _, _ = T.fit_model(syn, cfg.train, device="cpu", train_mask=run.train, log=lambda s: None)
    return run, model, T.evaluate_step(run, model)


def test_cold_items_beat_attribute_popularity_and_the_two_stage_mapping(cold_run):
    run, _, ev = cold_run
    cold = ev["cold_items"]
    assert cold["n_cold_items"] > 100 and cold["n_eval_users"] > 500
    model, pop = cold["recall@20"], cold["attribute_popularity"]["recall@20"]
    mapping = cold["two_stage_mapping"]["recall@20"]
    assert model >= 1.5 * pop, (model, pop)
    assert model >= mapping, (model, mapping)
    # the warm figures: not below the ID-only model's by more than 0.005
    assert ev["model"]["recall@10"] >= ev["id_only"]["recall@10"] - 0.005, (ev["model"], ev["id_only"])
    assert "cold items" in T.format_table(ev)


def test_cold_items_are_held_out_whole_and_get_their_attribute_part(cold_run):
    run, model, _ = cold_run
    assert not (run.train & run.cold).any() and not (run.test & run.cold).any()
    _, item_pub = model.published()
    cold = np.flatnonzero(run.cold_item)
    assert np.abs(item_pub[cold]).sum(1).min() > 0  # no interactions, still a vector
    vocab, E = model.token_tables()["item"]
    tm = run.item_tokens
    np.testing.assert_allclose(item_pub[cold], tm.parts(E)[cold], rtol=1e-4, atol=1e-5)


def test_attributes_off_is_the_id_only_model():
    syn = make_synthetic_attributes(n_users=300, n_items=200, n_triples=5000, seed=1)
    cfg = small_config("/nonexistent", device="cpu", compare_squared_sweeps=0, attributes=False, epochs=3)
    run = T.split_snapshot(cfg, syn, log=lambda s: None)
    assert run.cold_item is None and run.item_tokens is None
    m, _, _ = T.fit_model(syn, cfg.train, device="cpu", train_mask=run.train, log=lambda s: None)
    assert m.token_tables() == {}


@pytest.mark.parametrize("objective, solver", [("implicit", "cg"), ("implicit", "cholesky"), ("squared", "cg")])
def test_identical_tokens_and_no_interactions_give_identical_vectors(objective, solver):
    rng = np.random.default_rng(0)
    n_users, n_items = 60, 40
    u = rng.integers(0, n_users, 800)
    i = rng.integers(0, 36, 800)  # items 36..39 have no interactions
    y = rng.integers(1, 5, 800).astype(np.float32)
    tokens = {j: (f"g={j % 3}", f"m={j % 5}") for j in range(36)}
    tokens.update({36: ("g=0", "m=1"), 37: ("m=1", "g=0"), 38: ("g=2",), 39: ()})
    tm = build_tokens(n_items, tokens)
    utm = build_tokens(n_users, {0: ("age=1",), 59: ("age=1",)})
    m = ALS(u, i, y, n_users, n_items, objective=objective, dim=6, solver=solver, item_tokens=tm,
            user_tokens=utm)
    m.init_factors(0)
    m.fit(4, log=lambda s: None)
    U, V = m.published()
    np.testing.assert_array_equal(V[36], V[37])
    assert np.abs(V[36]).sum() > 0 and not np.allclose(V[36], V[38])
    # no tokens, no interactions: the zero vector (not published); squared's last column is 1
    assert not (V[39][:-1] if objective == "squared" else V[39]).any()


def test_min_token_count_drops_rare_tokens():
    tm = build_tokens(4, {0: ("a=1", "b=1"), 1: ("a=1",), 2: ("c=1",)}, min_count=2)
    assert tm.vocab == ("a=1",) and tm.has.tolist() == [True, True, False, False]
    with pytest.raises(ValueError):
        small_config("/x", min_token_count=0)


@pytest.mark.parametrize("objective", ["implicit", "bce"])
def test_train_publishes_attribute_only_items_and_serves_them(tmp_path, objective):
    from mcrecall.ingest.attributes import validate_attributes, version_key
    from mcrecall.ingest.store import TripleStore
    from mcrecall.serve.client import RecallClient

    syn = make_synthetic_attributes(n_users=200, n_items=120, n_triples=3000, seed=2)
    store = TripleStore(tmp_path)
    ups = []
    new = {"item_id": "brand-new", "attributes": {"genre": ["v1", "v2"], "year": 2003}, "ts": 1}
    for j, toks in syn.item_tokens.items():
        attrs: dict = {}
        for t in toks:
            name, _, value = t.partition("=")
            attrs.setdefault(name, []).append(value)
        ups.append((validate_attributes({"item_id": syn.item_ids[j], "attributes": attrs, "ts": 1}),
                    version_key(1, 0, j)))
    ups.append((validate_attributes(new), version_key(1, 0, 10_000)))
    for j, toks in syn.user_tokens.items():  # user profiles; "newcomer" has no interactions
        uid = syn.user_ids[j] if j else "newcomer"
        ups.append((validate_attributes({"user_id": uid, "attributes": {"region": toks[1].split("=")[1],
                                                                        "age": toks[0].split("=")[1]}}),
                    version_key(1, 1, j)))
    store.apply_events([syn.user_ids[k] for k in syn.user_idx], [syn.item_ids[k] for k in syn.item_idx],
                       [0x11 if s >= 1 else 0x10 for s in syn.score], attributes=ups)
    store.close()
    cfg = small_config(tmp_path, dim=8, epochs=3, device="cpu", compare_squared_sweeps=0, objective=objective)
    version = T.train_once(cfg, log=lambda s: None)
    assert version is not None
    with RecallClient(cfg) as client:
        got = client.score(syn.user_ids[1], ["brand-new", syn.item_ids[0]])
        assert all(isinstance(v, float) for v in got), got
        assert client._registry.tokens(version, "item") is not None
        uv = client.user_vector("newcomer")
        assert uv.source == "attributes", uv
        if objective == "bce":
            assert uv.vector[-1] == 1.0  # [a, 1]: the item bias counts
        assert any(r.item_id == "brand-new" for r in client.recall("newcomer", 200))


def test_refresh_and_attribute_users_within_one_cycle(tmp_path):
    """A brand-new item (attributes only, then + first interactions) and an item whose
    attributes changed get their vectors from one `mcrecall refresh` cycle; a user with
    attributes and no interactions is served from them (source `attributes`)."""
    from mcrecall.ingest.attributes import validate_attributes, version_key
    from mcrecall.ingest.store import TripleStore
    from mcrecall.serve.client import RecallClient
    from mcrecall.train.refresh import refresh_once

    syn = make_synthetic_attributes(n_users=200, n_items=120, n_triples=3000, seed=3)

    def attrs_of(toks):
        out: dict = {}
        for t in toks:
            name, _, value = t.partition("=")
            out.setdefault(name, []).append(value)
        return out

    store = TripleStore(tmp_path)
    ups = [(validate_attributes({"item_id": syn.item_ids[j], "attributes": attrs_of(t), "ts": 1}),
            version_key(1, 0, j)) for j, t in syn.item_tokens.items()]
    ups += [(validate_attributes({"user_id": syn.user_ids[j], "attributes": attrs_of(t), "ts": 1}),
             version_key(1, 1, j)) for j, t in syn.user_tokens.items()]
    store.apply_events([syn.user_ids[k] for k in syn.user_idx], [syn.item_ids[k] for k in syn.item_idx],
                       [0x11 if s >= 1 else 0x10 for s in syn.score], attributes=ups)
    cfg = small_config(tmp_path, dim=8, epochs=3, device="cpu", compare_squared_sweeps=0)
    version = T.train_once(cfg, log=lambda s: None)
    changed = syn.item_ids[5]
    new_attrs = {"genre": ["v3", "v4"], "year": 2001}
    store.apply_events(["u0"], ["fresh-b"], [0x11], attributes=[
        (validate_attributes({"item_id": "fresh-a", "attributes": new_attrs, "ts": 2}), version_key(2, 0, 1)),
        (validate_attributes({"item_id": "fresh-b", "attributes": new_attrs, "ts": 2}), version_key(2, 0, 2)),
        (validate_attributes({"item_id": changed, "attributes": {"genre": "v7", "year": 2009}, "ts": 2}),
         version_key(2, 0, 3)),
        (validate_attributes({"user_id": "newcomer", "attributes": {"region": "g1", "age": "g2"}, "ts": 2}),
         version_key(2, 0, 4))])
    store.close()
    with RecallClient(cfg) as client:
        before = client._item_vectors(version, [changed, "fresh-a"])
        assert np.isnan(before[1]).all()
        res = refresh_once(cfg)
        assert res.status == "refreshed" and res.updated >= 3, res
        client._items = type(client._items)(100)  # read the refreshed rows
        after = client._item_vectors(version, [changed, "fresh-a", "fresh-b"])
        assert np.isfinite(after).all() and not np.allclose(after[0], before[0])
        assert not np.allclose(after[1], after[2])  # fresh-b: attribute part + its first click
        uv = client.user_vector("newcomer")
        assert uv.source == "attributes" and uv.vector.any()
        got = client.recall("newcomer", 5)
        assert got and got[0].source == "attributes"
        assert client.user_vector("nobody").source == "popular"


def test_bce_learns_attribute_parts_in_its_sgd(tmp_path):
    syn = make_synthetic_attributes(n_users=400, n_items=300, n_triples=8000, seed=4)
    cfg = small_config(tmp_path, objective="bce", epochs=4, dim=8, device="cpu", compare_squared_sweeps=0)
    run = T.split_snapshot(cfg, syn, log=lambda s: None)
    model, _, _ = T.fit_model(syn, cfg.train, device="cpu", train_mask=run.train, log=lambda s: None)
    tables = model.token_tables()
    assert set(tables) == {"item", "user"} and np.abs(tables["item"][1]).sum() > 0
    _, V = model.published()
    cold = np.flatnonzero(run.cold_item)
    np.testing.assert_allclose(V[cold], run.item_tokens.parts(tables["item"][1])[cold], rtol=1e-4, atol=1e-5)
    served, info = T.refit_all(syn, cfg.train, model, run.train, device="cpu", log=lambda s: None)
    assert info["kind"] == "refit_all"
    _, V2 = served.published()
    assert np.isfinite(V2).all()
    # a warm row keeps its total vector at the start of the refit (no attribute part counted twice)
    warm = np.flatnonzero(~run.cold_item & run.item_tokens.has)[:5]
    assert np.corrcoef(V[warm].ravel(), V2[warm].ravel())[0, 1] > 0.5

"""The prequential attributes strategy (issue 21 §4/§6): brand-new items with attributes are
recallable before their first interaction."""

from __future__ import annotations

import json

from mcrecall.train.prequential import ATTRIBUTES, STRATEGIES, prequential, read_events
from mcrecall.train.synthetic import make_stream
from mcrecall.train.testing import small_config


def test_attributes_strategy_beats_item_refresh_on_new_items(tmp_path):
    events = make_stream(n_users=300, n_items=400, n_exposures=12_000, seed=1, attributes=True)
    assert any("attributes" in e for e in events)
    f = tmp_path / "s.jsonl"
    f.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    evs = read_events(f)
    assert sum(e[0] is None for e in evs) == 400
    tc = small_config(tmp_path, dim=8, epochs=3, device="cpu", compare_squared_sweeps=0).train
    res = prequential(evs, tc, retrain_every=4000, refresh_every=100)
    assert list(res.hits) == [*STRATEGIES, ATTRIBUTES]
    assert res.recall(ATTRIBUTES) > res.recall("+ item refresh"), res.table()
    assert ATTRIBUTES in res.table() and ATTRIBUTES in res.to_json()["recall"]
    # a stream without attribute messages: the strategies as before
    plain = [e for e in evs if e[0] is not None]
    assert list(prequential(plain[:3000], tc, retrain_every=1500).hits) == list(STRATEGIES)

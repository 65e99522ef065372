"""The triple store's per-item change log and by-item index (what item refresh reads)."""

from __future__ import annotations

import numpy as np

from mcrecall.ingest.store import TripleStore

HOSTILE = ["q'uote", "back\\slash", "new\nline", "tab\there", "nul\0byte", "ünï©ødé", "a OR 1==1"]


def test_changed_items_since_a_seq(tmp_path):
    s = TripleStore(tmp_path)
    seq1 = s.put_scores(["u1", "u2"], ["a", "b"], [1, 2])["seq"]
    seq2 = s.put_scores(["u3"], ["c"], [3])["seq"]
    assert s.changed_items(0) == (["a", "b", "c"], seq2)
    assert s.changed_items(seq1) == (["c"], seq2)
    assert s.changed_items(seq2) == ([], seq2)
    # an item changed again moves to the newer seq: listed once
    seq3 = s.put_scores(["u4"], ["a"], [1])["seq"]
    assert s.changed_items(seq1) == (["c", "a"], seq3)
    assert s.item_seq("a") == seq3 and s.item_seq("b") == seq1 and s.item_seq("zz") == 0
    # an unchanged score (same mask again) is not a change
    r = s.put_scores(["u4"], ["a"], [1])
    assert r["changed"] == 0 and s.changed_items(seq3) == ([], seq3)


def test_item_histories_match_the_pairs(tmp_path):
    s = TripleStore(tmp_path)
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(40)] + HOSTILE
    items = [f"i{i}" for i in range(15)] + HOSTILE
    triples = {(users[rng.integers(len(users))], items[rng.integers(len(items))]): int(rng.integers(0, 5))
               for _ in range(400)}
    s.put_scores([u for u, _ in triples], [i for _, i in triples], list(triples.values()))
    expect: dict[str, dict[str, float]] = {}
    for u in users:
        its, sc = s.user_history(u)
        for i, y in zip(its, sc, strict=False):
            expect.setdefault(i, {})[u] = float(y)
    got = s.item_histories(items + ["unknown"])
    for item, (us, sc) in zip(items, got, strict=False):
        assert dict(zip(us, sc.tolist(), strict=False)) == expect.get(item, {})
    assert got[-1][0] == [] and len(got[-1][1]) == 0
    assert sorted(s.changed_items(0)[0]) == sorted(i for i in items if i in expect)


def test_store_written_before_the_index_is_indexed_once(tmp_path):
    """A store from before ``item_pairs`` existed: the first writable open indexes its pairs."""
    s = TripleStore(tmp_path)
    s.put_scores(["u1", "u2", "u2"], ["a", "a", "b"], [1, 3, 2])
    with s.env.begin(write=True) as txn:  # make it look old: no by-item index, no flag
        txn.drop(s._item_pairs, delete=False)
        txn.delete(b"item_index", db=s._meta)
    assert TripleStore(tmp_path, readonly=True).item_histories(["a"])[0][0] == []
    s2 = TripleStore(tmp_path)
    us, sc = s2.item_histories(["a"])[0]
    assert dict(zip(us, sc.tolist(), strict=False)) == {"u1": 1.0, "u2": 3.0}

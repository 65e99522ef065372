"""DESIGN §2: a pair's score is the number of distinct positive actions, whatever the order,
duplication or re-delivery of its events (real LMDB store, real validation)."""

import itertools
import json
import random

import pytest
from eventlib import ACTIONS, expected_scores, store_scores

from mcrecall.ingest.backfill import backfill_file
from mcrecall.ingest.events import ACTION_BITS, BadEvent, parse_event, score_of
from mcrecall.ingest.store import TripleStore


def test_every_combination_of_actions_and_duplicates(tmp_path):
    rng = random.Random(7)
    lines, expected = [], {}
    for k, subset in enumerate(itertools.chain.from_iterable(
            itertools.combinations(ACTIONS, r) for r in range(1, len(ACTIONS) + 1))):
        for dup in (1, 2, 3):  # each action delivered once, twice, three times
            events = [a for a in subset for _ in range(dup)]
            rng.shuffle(events)  # out of order
            pair = (f"u{k}", f"d{dup}")
            for a in events:
                lines.append(json.dumps({"user_id": pair[0], "item_id": pair[1], "action": a}))
            expected[pair] = sum(a != "impression" for a in subset)
    f = tmp_path / "events.jsonl"
    f.write_text("\n".join(lines) + "\n")
    store = TripleStore(tmp_path / "data")
    backfill_file(f, store)
    assert store_scores(store) == expected
    assert set(expected.values()) == {0, 1, 2, 3, 4}
    # delivering the whole stream again, in another order, changes nothing
    rng.shuffle(lines)
    f.write_text("\n".join(lines) + "\n")
    seq = store.seq
    backfill_file(f, store)
    assert store_scores(store) == expected
    assert store.seq == seq  # nothing changed, so no new store version


def test_random_stream_matches_reference(tmp_path):
    from eventlib import random_events

    lines = random_events(20_000, 300, 200, seed=3)
    f = tmp_path / "e.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    store = TripleStore(tmp_path / "data")
    stats = backfill_file(f, store, batch_size=1000)
    assert stats.events == len(lines) and stats.rejected == 0
    assert store_scores(store) == expected_scores(lines)


def test_score_of_masks():
    assert score_of(ACTION_BITS["impression"]) == 0
    assert score_of(ACTION_BITS["click"] | ACTION_BITS["share"]) == 2
    assert score_of(0xFF) == 4


@pytest.mark.parametrize("raw,reason", [
    (b"\xff\xfe not utf8", "not UTF-8"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"user_id": 1, "item_id": 2}', "missing field action"),
    (b'{"user_id": 1.5, "item_id": 2, "action": "click"}', "user_id must be"),
    (b'{"user_id": true, "item_id": 2, "action": "click"}', "boolean"),
    (b'{"user_id": -3, "item_id": 2, "action": "click"}', "non-negative"),
    (b'{"user_id": "", "item_id": 2, "action": "click"}', "user_id is empty"),
    (b'{"user_id": "u", "item_id": "", "action": "click"}', "item_id is empty"),
    (b'{"user_id": "u", "item_id": 2, "action": "buy"}', "unknown action"),
    (b'{"user_id": "u", "item_id": 2, "action": 1}', "action must be a string"),
    (b'{"user_id": "u", "item_id": 2, "action": "click", "ts": "yesterday"}', "ts must be"),
    (json.dumps({"user_id": "x" * 129, "item_id": 2, "action": "click"}).encode(), "129 bytes"),
    (json.dumps({"user_id": "u", "item_id": 2, "action": "click", "pad": "x" * 70000}).encode(), "max 65536"),
])
def test_bad_events_have_reasons(raw, reason):
    with pytest.raises(BadEvent) as e:
        parse_event(raw)
    assert reason in e.value.reason


def test_ids_canonicalised_and_extra_fields_ignored():
    ev = parse_event(b'{"user_id": 42, "item_id": "i7", "action": "like", "ts": 5, "extra": [1]}')
    assert (ev.user_id, ev.item_id, ev.action, ev.ts) == ("42", "i7", "like", 5)
    assert parse_event(json.dumps({"user_id": "é" * 64, "item_id": 0, "action": "share"})).user_id == "é" * 64


def test_backfill_rejects_bad_lines_with_line_numbers(tmp_path):
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(b'{"user_id": 1, "item_id": 1, "action": "click"}\n'
                  b'garbage\n'
                  b'{"user_id": 1, "item_id": 2, "action": "fly"}\n'
                  b'\n'
                  b'{"user_id": 2, "item_id": 1, "action": "like"}\n')
    store = TripleStore(tmp_path / "d")
    stats = backfill_file(f, store)
    assert (stats.events, stats.rejected) == (2, 2)
    rejected = [json.loads(line) for line in (tmp_path / "mixed.jsonl.rejected.jsonl").read_text().splitlines()]
    assert [(r["line"], r["raw"]) for r in rejected] == [
        (2, "garbage"), (3, '{"user_id": 1, "item_id": 2, "action": "fly"}')]
    assert "unknown action" in rejected[1]["reason"]
    assert store_scores(store) == {("1", "1"): 1, ("2", "1"): 1}
    assert store.counts()["bad_events"] == 2


def test_snapshot_and_history(tmp_path):
    store = TripleStore(tmp_path / "d")
    store.put_scores(["a", "a", "b"], ["x", "y", "x"], [3, 0, 4])
    snap = store.snapshot()
    triples = {(snap.user_ids[u], snap.item_ids[i], float(s))
               for u, i, s in zip(snap.user_idx, snap.item_idx, snap.score, strict=False)}
    assert triples == {("a", "x", 3.0), ("a", "y", 0.0), ("b", "x", 4.0)}
    items, scores = store.user_history("a")
    assert dict(zip(items, scores.tolist(), strict=False)) == {"x": 3.0, "y": 0.0}
    assert store.user_history("nobody")[0] == []
    s_before = store.user_seq("a")
    store.put_scores(["b"], ["y"], [1])
    assert store.user_seq("a") == s_before and store.user_seq("b") > s_before
    assert snap.seq < store.seq


def test_fast_path_agrees_with_full_validation():
    from mcrecall.ingest.events import ACTION_BITS, parse_scored

    samples = [b'{"user_id":"u1","item_id":"i1","action":"click"}',
               b'{"user_id":"u1","item_id":"i1","action":"click","ts":true}',
               b'{"user_id":"","item_id":"i1","action":"click"}',
               b'{"user_id":"u","item_id":"i1","action":["click"]}',
               b'{"user_id":"\\u00e9","item_id":7,"action":"share"}',
               b'{"user_id":"\\ud800","item_id":7,"action":"share"}',
               b'{"user_id":"u","item_id":"i","action":"like","ts":1.5}']
    for raw in samples:
        try:
            ev = parse_event(raw)
            expected = (ev.user_id, ev.item_id, ACTION_BITS[ev.action])
        except BadEvent as e:
            expected = e.reason
        try:
            got = parse_scored(raw)
        except BadEvent as e:
            got = e.reason
        assert got == expected, raw


def test_readonly_handle_neither_creates_nor_writes(tmp_path):
    with pytest.raises(FileNotFoundError, match="no triple store"):
        TripleStore(tmp_path / "missing", readonly=True)
    assert not (tmp_path / "missing").exists()
    TripleStore(tmp_path / "d").put_scores(["a"], ["x"], [2])
    ro = TripleStore(tmp_path / "d", readonly=True)
    assert store_scores(ro) == {("a", "x"): 2}
    with pytest.raises(PermissionError):
        ro.put_scores(["a"], ["y"], [1])

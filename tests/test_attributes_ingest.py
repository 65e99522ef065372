"""Attribute events (issue 21 §1, DESIGN §1a): validation, the last-writer merge, backfill,
the worker's DLQ and SIGKILL safety, against a real LMDB store and a real local broker."""

from __future__ import annotations

import json
import random
import signal
import time

import numpy as np
import pytest

from mcrecall.ingest.attributes import (
    BadAttributes,
    parse_attribute_message,
    split_attributes,
    validate_attributes,
    version_key,
)
from mcrecall.ingest.backfill import backfill_file
from mcrecall.ingest.events import parse_scored_many
from mcrecall.ingest.produce import attribute_line, message_key
from mcrecall.ingest.store import TripleStore


def _up(obj, ts_part_off):
    up = validate_attributes(obj)
    return up, version_key(*ts_part_off)


def test_tokens_are_name_equals_value_sorted_and_distinct():
    up = validate_attributes({"item_id": 5, "attributes": {"genre": ["b", "a", "a"], "year": 1999}, "ts": 3})
    assert up == ("item", "5", ("genre=a", "genre=b", "year=1999"), 3)
    assert validate_attributes({"user_id": "u", "attributes": {}}).tokens == ()


@pytest.mark.parametrize("obj, reason", [
    ({"item_id": 1, "attributes": {"a": {"b": 1}}}, "nested object"),
    ({"item_id": 1, "attributes": {"a": [["x"]]}}, "nested list"),
    ({"item_id": 1, "attributes": {"a": 1.5}}, "float"),
    ({"item_id": 1, "attributes": {"a": True}}, "boolean"),
    ({"item_id": 1, "attributes": {"a": None}}, "must be a string or an integer"),
    ({"item_id": 1, "attributes": {"": "x"}}, "1..64"),
    ({"item_id": 1, "attributes": {"n" * 65: "x"}}, "1..64"),
    ({"item_id": 1, "attributes": {"t": [str(k) for k in range(65)]}}, "more than 64"),
    ({"item_id": 1, "user_id": 2, "attributes": {"a": "x"}}, "both user_id and item_id"),
    ({"attributes": {"a": "x"}}, "neither"),
    ({"item_id": "", "attributes": {"a": "x"}}, "item_id is empty"),
    ({"item_id": 1, "attributes": ["a"]}, "must be a JSON object"),
    ({"item_id": 1, "attributes": {"a": "x"}, "ts": "now"}, "ts must be an integer"),
])
def test_malformed_attribute_messages_have_their_reason(obj, reason):
    with pytest.raises(BadAttributes) as e:
        validate_attributes(obj)
    assert reason in e.value.reason
    # through the worker's path (parse_scored_many, then split_attributes): bad, same reason
    raw = json.dumps(obj).encode()
    users, _, _, bad = parse_scored_many([raw])
    updates, bad = split_attributes([raw], bad)
    assert not users and not updates and len(bad) == 1 and reason in bad[0][1]
    with pytest.raises(BadAttributes):
        message_key(raw)  # mcrecall produce refuses it the same way


def test_64_tokens_are_allowed_and_events_are_not_attribute_messages():
    ok = {"item_id": 1, "attributes": {"t": [str(k) for k in range(64)]}}
    assert len(validate_attributes(ok).tokens) == 64
    assert parse_attribute_message(b'{"user_id":1,"item_id":2,"action":"click"}') is None
    assert parse_attribute_message(b"not json") is None
    assert message_key(attribute_line("item", "i9", {"a": "x"})) == b"i9"


HOSTILE = ["a=b", "quote\"back\\slash", "nul\x00byte", "new\nline\ttab", "émoji 🎉", "=", "x" * 64]


def test_hostile_names_and_values_round_trip(tmp_path):
    attrs = {name[:16] or "n": [name, 7] for name in HOSTILE}
    attrs["=="] = "==="
    raw = attribute_line("item", "it\"em\n", attrs, ts=1)
    up = parse_attribute_message(raw)
    s = TripleStore(tmp_path)
    s.apply_events([], [], [], attributes=[(up, version_key(1, 0, 0))])
    got = s.attributes("item")
    assert got == {"it\"em\n": up.tokens}
    assert "======" in up.tokens and "nul\x00byte=nul\x00byte" in up.tokens
    assert set(s.token_counts("item")) == set(up.tokens)
    s.close()


def test_last_writer_by_ts_then_partition_then_offset(tmp_path):
    a = {"item_id": "i", "attributes": {"c": "a"}}
    b = {"item_id": "i", "attributes": {"c": "b"}}
    c = {"item_id": "i", "attributes": {"c": "c"}}
    msgs = [_up(a, (5, 0, 10)), _up(b, (7, 0, 3)), _up(c, (7, 1, 0))]  # c: same ts, higher partition
    outcomes = set()
    for perm in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        s = TripleStore(tmp_path / f"p{perm}")
        for k in perm:  # one message a transaction, in this order, each delivered twice
            s.apply_events([], [], [], attributes=[msgs[k]])
            s.apply_events([], [], [], attributes=[msgs[k]])
        outcomes.add(s.attributes("item")["i"])
        assert s.counts()["items_with_attributes"] == 1 and s.counts()["item_tokens"] == 1
        s.close()
    assert outcomes == {("c=c",)}
    # in one batch, and a message without ts loses to any ts
    s = TripleStore(tmp_path / "batch")
    s.apply_events([], [], [], attributes=[_up(a, (None, 9, 99)), _up(b, (-5, 0, 0))])
    assert s.attributes("item")["i"] == ("c=b",)
    s.close()


def test_empty_object_clears_and_counts_follow(tmp_path):
    s = TripleStore(tmp_path)
    s.apply_events([], [], [], attributes=[
        _up({"item_id": "x", "attributes": {"g": ["1", "2"]}}, (1, 0, 0)),
        _up({"item_id": "y", "attributes": {"g": "2"}}, (1, 0, 1)),
        _up({"user_id": "u", "attributes": {"age": 30}}, (1, 0, 2))])
    c = s.counts()
    assert (c["items_with_attributes"], c["item_tokens"], c["users_with_attributes"], c["user_tokens"]) == (2, 2, 1, 1)
    seq = s.seq
    r = s.apply_events([], [], [], attributes=[_up({"item_id": "x", "attributes": {}}, (2, 0, 0))])
    assert r["changed_attributes"] == 1 and r["seq"] == seq + 1
    assert s.changed_items(seq)[0] == ["x"]  # the change log names the item for refresh
    assert s.attributes("item") == {"y": ("g=2",)}
    assert s.token_counts("item") == {"g=2": 1}
    # the cleared set keeps its version: an older message does not come back
    s.apply_events([], [], [], attributes=[_up({"item_id": "x", "attributes": {"g": "9"}}, (1, 5, 5))])
    assert "x" not in s.attributes("item")
    snap = s.snapshot()
    assert {snap.item_ids[j]: t for j, t in snap.item_tokens.items()} == {"y": ("g=2",)}
    assert {snap.user_ids[j]: t for j, t in snap.user_tokens.items()} == {"u": ("age=30",)}
    s.close()


def test_backfill_mixes_events_and_attributes(tmp_path):
    f = tmp_path / "in.jsonl"
    lines = [json.dumps({"user_id": "u1", "item_id": "i1", "action": "click"}),
             attribute_line("item", "i2", {"genre": "a"}, ts=1).decode(),
             attribute_line("item", "i2", {"genre": "b"}, ts=2).decode(),
             attribute_line("item", "i2", {"genre": "c"}, ts=1).decode(),  # older: loses
             json.dumps({"item_id": "i3", "attributes": {"x": 1.5}}),
             attribute_line("user", "u1", {"age": 20}).decode()]
    f.write_text("\n".join(lines) + "\n")
    s = TripleStore(tmp_path / "d")
    st = backfill_file(f, s)
    assert (st.events, st.attribute_events, st.rejected) == (1, 4, 1)
    rej = json.loads(f.with_name("in.jsonl.rejected.jsonl").read_text())
    assert rej["line"] == 5 and "float" in rej["reason"]
    assert s.attributes("item") == {"i2": ("genre=b",)} and s.attributes("user") == {"u1": ("age=20",)}
    assert s.counts()["items"] == 2  # i2 got its dense index from its attribute message
    s.close()


# ---------------------------------------------------------------- the worker, real broker
def _churn(n_items=300, n_msgs=6000, seed=3):
    """Attribute churn: many messages per item with distinct ts (the last writer is clear)."""
    rng = random.Random(seed)
    out = []
    ts = list(range(n_msgs))
    rng.shuffle(ts)  # reordered
    for k in range(n_msgs):
        i = rng.randrange(n_items)
        attrs = {} if rng.random() < 0.1 else {"g": [f"v{rng.randrange(20)}" for _ in range(rng.randrange(1, 4))],
                                                 "y": rng.randrange(1990, 2000)}
        out.append(attribute_line("item", f"i{i}", attrs, ts=ts[k]))
        if rng.random() < 0.3:
            out.append(json.dumps({"user_id": f"u{rng.randrange(100)}", "item_id": f"i{i}",
                                   "action": "click"}).encode())
    return out


def _expected(lines):
    best = {}
    for raw in lines:
        up = parse_attribute_message(raw)
        if up is not None and (up.entity_id not in best or up.ts > best[up.entity_id][0]):
            best[up.entity_id] = (up.ts, up.tokens)
    return {e: t for e, (_, t) in best.items() if t}


@pytest.mark.kafka
@pytest.mark.usefixtures("kafka_client")
def test_worker_stores_attributes_and_dead_letters_bad_ones(kafka_bootstrap, kafka_topic, tmp_path):
    from test_ingest_worker import make_cfg, read_dlq, send_raw

    from mcrecall.ingest.worker import IngestWorker

    bad = {json.dumps({"item_id": 1, "attributes": {"a": {"b": 1}}}).encode(): "nested object",
           json.dumps({"item_id": 1, "user_id": 1, "attributes": {}}).encode(): "both user_id and item_id"}
    good = [attribute_line("item", "i1", {"g": ["a", "b"]}, ts=1),
            json.dumps({"user_id": "u1", "item_id": "i0", "action": "click"}).encode(),
            attribute_line("user", "u1", {"age": 30}, ts=1)]
    send_raw(kafka_bootstrap, kafka_topic, [good[0], *bad, good[1], good[2]])
    cfg = make_cfg(kafka_bootstrap, kafka_topic, tmp_path / "data")
    stats = IngestWorker(cfg).run(until_idle=3)
    assert stats.bad_events == 2
    s = TripleStore(cfg.data_dir)
    assert s.attributes("item") == {"i1": ("g=a", "g=b")} and s.attributes("user") == {"u1": ("age=30",)}
    c = s.counts()
    assert (c["events"], c["attribute_events"], c["bad_events"]) == (1, 2, 2)
    dead = read_dlq(kafka_bootstrap, kafka_topic, 2)
    for rec in dead:
        assert bad[rec.value] in dict(rec.headers)["error"].decode()
    s.close()


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.usefixtures("kafka_client")
def test_attribute_churn_under_sigkill_gives_the_clean_store(kafka_bootstrap, kafka_topic, tmp_path):
    from test_ingest_worker import make_cfg, start_worker, worker_env

    from mcrecall.ingest.produce import produce_lines
    from mcrecall.ingest.worker import IngestWorker

    lines = _churn()
    cfg = make_cfg(kafka_bootstrap, kafka_topic, tmp_path / "data")
    env = worker_env(kafka_bootstrap, kafka_topic, cfg.data_dir)
    # small polls, one transaction each: many transactions, so the kills land between them
    env.update(MCRECALL_INGEST_BATCH_EVENTS="20", MCRECALL_KAFKA_MAX_POLL_RECORDS="20")
    store = TripleStore(cfg.data_dir)
    rng = random.Random(4)
    # a chunk of the churn before each worker: every worker has work when it is killed (one
    # worker consumes all 8k messages in about a second)
    chunks = np.array_split(np.arange(len(lines)), 5)
    produced, cut_short = 0, 0
    for chunk in chunks[:4]:
        produce_lines([lines[j] for j in chunk], cfg)
        produced += sum(parse_attribute_message(lines[j]) is not None for j in chunk)
        before = store.counts()["attribute_events"]
        proc = start_worker(env, log_path=tmp_path / "w.log")
        deadline = time.monotonic() + 60
        while store.counts()["attribute_events"] == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.counts()["attribute_events"] > before, (tmp_path / "w.log").read_text()[-3000:]
        time.sleep(rng.uniform(0.0, 0.1))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cut_short += store.counts()["attribute_events"] < produced
    assert cut_short >= 2, "the kills landed after the work: the test tested nothing"
    produce_lines([lines[j] for j in chunks[4]], cfg)
    proc = start_worker(env, "--until-idle", "4", log_path=tmp_path / "w.log")
    assert proc.wait(timeout=300) == 0, (tmp_path / "w.log").read_text()[-3000:]
    clean_cfg = make_cfg(kafka_bootstrap, kafka_topic, tmp_path / "clean", group="clean")
    IngestWorker(clean_cfg).run(until_idle=3)
    clean = TripleStore(clean_cfg.data_dir)
    n_attr = sum(parse_attribute_message(x) is not None for x in lines)
    expected = _expected(lines)
    assert clean.attributes("item") == expected  # one clean worker: the last writer by ts
    wrong = {k: (v, expected.get(k)) for k, v in store.attributes("item").items() if expected.get(k) != v}
    assert not wrong and len(store.attributes("item")) == len(expected), list(wrong.items())[:5]
    assert store.token_counts("item") == clean.token_counts("item")
    assert store.counts()["attribute_events"] == clean.counts()["attribute_events"] == n_attr
    for k in ("items_with_attributes", "item_tokens", "pairs"):
        assert store.counts()[k] == clean.counts()[k], k
    store.close()
    clean.close()


def test_status_counts_entities_with_attributes_and_tokens(tmp_path):
    from mcrecall.core.config import load_config
    from mcrecall.status import collect_status, render

    s = TripleStore(tmp_path)
    s.apply_events([], [], [], attributes=[
        _up({"item_id": "a", "attributes": {"g": ["x", "y"]}}, (1, 0, 0)),
        _up({"item_id": "b", "attributes": {"g": "x"}}, (1, 0, 1)),
        _up({"user_id": "u", "attributes": {"age": 3}}, (1, 0, 2))])
    s.close()
    st = collect_status(load_config(environ={}).with_overrides(store={"data_dir": str(tmp_path)}))
    assert (st["store"]["items_with_attributes"], st["store"]["item_tokens"]) == (2, 2)
    assert (st["store"]["users_with_attributes"], st["store"]["user_tokens"]) == (1, 1)
    text = render(st)
    assert "items with attributes" in text and "2 (2 distinct tokens)" in text

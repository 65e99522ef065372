"""Input edges (issue 9 §3): integer ids of any size, and a `--from-file` backfill that takes a
BOM, keeps rejected lines byte for byte and stays in bounded memory whatever a line's length.
Real LMDB; the worker path runs against the real Kafka-protocol broker."""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from eventlib import expected_scores, random_events, store_scores

from mcrecall.ingest.backfill import EXCERPT_BYTES, backfill_file
from mcrecall.ingest.events import (
    ACTION_BITS,
    MAX_MESSAGE_BYTES,
    BadEvent,
    parse_event,
    parse_scored,
    parse_scored_many,
)
from mcrecall.ingest.store import _PAIR, _U32, _U64, COUNTERS, TripleStore

ROOT = Path(__file__).resolve().parents[1]
HUGE = [2**64 - 1, 2**64, 2**70, 10**40, 10**127, 10**128 - 1]


def ev(user, item, action="click", **extra) -> bytes:
    """An event line with the ids written as JSON literals (ints stay ints, of any size)."""
    return json.dumps({"user_id": user, "item_id": item, "action": action, **extra}).encode()


def rejected_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def raw_of(rec: dict) -> bytes:
    """The rejected line's exact bytes, from either of its two spellings."""
    return base64.b64decode(rec["raw_base64"]) if "raw_base64" in rec else rec["raw"].encode("utf-8")


def excerpt_of(rec: dict) -> bytes:
    return (base64.b64decode(rec["excerpt_base64"]) if "excerpt_base64" in rec
            else rec["excerpt"].encode("utf-8"))


# --------------------------------------------------------------------------- integer ids of any size
@pytest.mark.parametrize("big", HUGE, ids=lambda v: f"{len(str(v))}digits")
def test_integer_ids_beyond_64_bits_are_canonicalised_exactly(big):
    raw = ev(big, big - 1, "like", ts=5)
    e = parse_event(raw)
    assert (e.user_id, e.item_id, e.action, e.ts) == (str(big), str(big - 1), "like", 5)
    assert parse_scored(raw) == (str(big), str(big - 1), ACTION_BITS["like"])
    # the same id as a string is the same id
    assert parse_scored(ev(str(big), "i")) == parse_scored(ev(big, "i"))


@pytest.mark.parametrize("raw,reason", [
    (b'{"user_id": 1.5, "item_id": 1, "action": "click"}',
     "user_id must be a string or a non-negative integer, got float"),
    (b'{"user_id": 1, "item_id": 1.0, "action": "click"}',
     "item_id must be a string or a non-negative integer, got float"),
    (b'{"user_id": 1e3, "item_id": 1, "action": "click"}', "got float"),
    (b'{"user_id": 18446744073709551616.0, "item_id": 1, "action": "click"}', "got float"),
    (b'{"user_id": 1e400, "item_id": 1, "action": "click"}', "not JSON"),
    (b'{"user_id": NaN, "item_id": 1, "action": "click"}', "not JSON"),
    (b'{"user_id": 1, "item_id": Infinity, "action": "click"}', "not JSON"),
    (b'{"user_id": -Infinity, "item_id": 1, "action": "click"}', "not JSON"),
    (b'{"user_id": -0.0, "item_id": 1, "action": "click"}', "got float"),
    (b'{"user_id": true, "item_id": 1, "action": "click"}', "boolean"),
    (b'{"user_id": 1, "item_id": false, "action": "click"}', "boolean"),
    (b'{"user_id": -1180591620717411303424, "item_id": 1, "action": "click"}', "non-negative"),
    (b'{"user_id": -9223372036854775809, "item_id": 1, "action": "click"}', "non-negative"),
    (b'{"user_id": 1, "item_id": 1%s, "action": "click"}' % (b"0" * 128), "more than 128 decimal digits"),
    (b'{"user_id": 1, "item_id": 2, "action": "click", "ts": 1.5}', "ts must be an integer"),
    (b'{"user_id": 1, "item_id": 2, "action": "click", "ts": NaN}', "not JSON"),
    (b'{"user_id": "\\ud800", "item_id": 2, "action": "click"}', "not JSON"),
    (b'{"user_id": 18446744073709551616, "item_id": "\\ud800", "action": "click"}', "not JSON"),
])
def test_floats_booleans_and_out_of_rule_numbers_are_still_rejected(raw, reason):
    with pytest.raises(BadEvent) as e:
        parse_event(raw)
    assert reason in e.value.reason
    with pytest.raises(BadEvent) as e2:
        parse_scored(raw)
    assert e2.value.reason == e.value.reason


def test_huge_integer_ts_is_an_integer():
    assert parse_event(ev(1, 2, ts=2**70)).ts == 2**70


def test_backfill_stores_huge_integer_ids_exactly(tmp_path):
    f = tmp_path / "big.jsonl"
    f.write_bytes(b"\n".join([ev(2**70, 2**64, "click"), ev(str(2**70), str(2**64), "like"),
                              ev(2**70, 10**127, "impression"),
                              b'{"user_id": 1.5, "item_id": 1, "action": "click"}']) + b"\n")
    store = TripleStore(tmp_path / "d")
    stats = backfill_file(f, store)
    assert (stats.events, stats.rejected) == (3, 1)
    assert store_scores(store) == {(str(2**70), str(2**64)): 2, (str(2**70), str(10**127)): 0}
    assert "got float" in rejected_records(tmp_path / "big.jsonl.rejected.jsonl")[0]["reason"]


def test_client_recall_of_a_huge_integer_sees_what_ingest_stored(tmp_path):
    """recall(2**70) is the user that an event ``"user_id": 1180591620717411303424`` fed."""
    from test_serve_client import N_ITEMS, Env

    e = Env(tmp_path)
    big = 2**70
    e.user_ids = [str(big)] + e.user_ids[1:]
    seen = [e.item_ids[j] for j in (3, 5, 8)]
    f = tmp_path / "ev.jsonl"
    f.write_bytes(b"\n".join(ev(big, i) for i in seen) + b"\n")
    assert backfill_file(f, e.triples).events == 3
    e.publish()
    try:
        got = [r.item_id for r in e.client.recall(big, N_ITEMS, exclude_seen=True)]
        assert len(got) == N_ITEMS - 3 and not set(seen) & set(got)
        assert got == [r.item_id for r in e.client.recall(str(big), N_ITEMS, exclude_seen=True)]
    finally:
        e.client.close()
        e.vs.close()


@pytest.mark.slow
@pytest.mark.kafka
def test_worker_and_produce_accept_huge_integer_ids(kafka_bootstrap, kafka_topic, tmp_path):
    from kafka import KafkaConsumer, TopicPartition
    from test_ingest_worker import make_cfg

    from mcrecall.ingest.produce import produce_lines
    from mcrecall.ingest.worker import IngestWorker

    cfg = make_cfg(kafka_bootstrap, kafka_topic, tmp_path / "data")
    lines = [ev(2**70, 2**64, "click"), ev(2**64 - 1, 10**127, "share"), ev(2**70, 2**64, "like"),
             b'{"user_id": 1.5, "item_id": 1, "action": "click"}']
    stats = produce_lines(lines, cfg, validate=False)
    assert stats.sent == 4
    assert produce_lines(lines[:3], cfg).invalid == 0  # validating produce accepts them too
    wstats = IngestWorker(cfg).run(until_idle=3)
    assert (wstats.events, wstats.bad_events) == (6, 1)
    store = TripleStore(cfg.data_dir)
    assert store_scores(store) == {(str(2**70), str(2**64)): 2, (str(2**64 - 1), str(10**127)): 1}
    # produce keyed the messages by the canonical id: one user's events on one partition
    c = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(kafka_topic, p) for p in range(4)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    keys = set()
    for _ in range(20):
        for recs in c.poll(timeout_ms=500).values():
            keys.update(r.key for r in recs if r.value == lines[0])
        if keys:
            break
    c.close()
    assert str(2**70).encode() in keys


# --------------------------------------------------------------------------- the backfill file
def test_bom_at_the_start_of_the_file_is_not_an_error(tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + ev("u", "a") + b"\n" + b"\xef\xbb\xbf" + ev("u", "b") + b"\n")
    store = TripleStore(tmp_path / "d")
    stats = backfill_file(f, store)
    # only the file's first three bytes are a BOM; one inside the file is a broken line
    assert (stats.lines, stats.events, stats.rejected) == (2, 1, 1)
    assert store_scores(store) == {("u", "a"): 1}
    [rec] = rejected_records(tmp_path / "bom.jsonl.rejected.jsonl")
    assert rec["line"] == 2 and raw_of(rec) == b"\xef\xbb\xbf" + ev("u", "b")


def test_a_file_of_only_a_bom_is_empty(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_bytes(b"\xef\xbb\xbf")
    stats = backfill_file(f, TripleStore(tmp_path / "d"))
    assert (stats.events, stats.rejected) == (0, 0)


BAD_LINES = [
    b"\xff\xfe not utf8 \x80",
    b'{"user_id": "caf\xc3\xa9", "item_id": "\xed\xa0\x80", "action": "click"}',  # CESU surrogate
    b"\xc3",  # a truncated character
    b"nul\x00and\ttab",
    b'{"user_id": "u", "item_id": "i", "action": "fly"}',
    b"caf\xc3\xa9 is text, not JSON",
    b"\xef\xbb\xbfx",
    b"two\r",  # written with "\r\r\n": the line is all but its terminator
    b"quote\" backslash\\ ' ${x} $(rm -rf) \\u0000",
]


def test_rejected_lines_are_kept_byte_for_byte(tmp_path):
    f = tmp_path / "bad.jsonl"
    good = [ev(f"u{k}", "i") for k in range(len(BAD_LINES) + 1)]
    body = b""
    for k, bad in enumerate(BAD_LINES):
        body += good[k] + b"\n" + bad + (b"\r\n" if k % 2 else b"\n")
    f.write_bytes(body + good[-1])  # the last line has no newline
    store = TripleStore(tmp_path / "d")
    stats = backfill_file(f, store)
    assert (stats.lines, stats.events, stats.rejected) == (2 * len(BAD_LINES) + 1, len(good), len(BAD_LINES))
    recs = rejected_records(tmp_path / "bad.jsonl.rejected.jsonl")
    assert [r["line"] for r in recs] == [2 * k + 2 for k in range(len(BAD_LINES))]
    assert [raw_of(r) for r in recs] == BAD_LINES
    assert all(r["reason"] for r in recs)
    assert "not UTF-8" in recs[0]["reason"] and "raw_base64" in recs[0]
    assert recs[5]["raw"] == "café is text, not JSON"  # UTF-8 lines stay readable
    assert store.counts()["bad_events"] == len(BAD_LINES)


def test_blank_and_whitespace_lines_are_neither_events_nor_rejects(tmp_path):
    f = tmp_path / "blank.jsonl"
    f.write_bytes(b"\n  \n\t\r\n" + ev("u", "i") + b"\r\n\r\n\n")
    stats = backfill_file(f, TripleStore(tmp_path / "d"))
    assert (stats.lines, stats.events, stats.rejected) == (6, 1, 0)
    assert not (tmp_path / "blank.jsonl.rejected.jsonl").exists()


@pytest.mark.parametrize("read_bytes", [7, 64, 1000, 1 << 20])
def test_lines_over_the_limit_are_rejected_with_size_and_a_bounded_excerpt(tmp_path, read_bytes):
    limit = 100
    exactly = b'{"user_id": "u", "item_id": "x", "action": "like", "pad": "'
    exactly += b"p" * (limit - len(exactly) - 2) + b'"}'
    assert len(exactly) == limit
    long_lines = {2: b"L" * 10_000, 4: b'{"user_id": "' + "é".encode() * 200 + b'"}',
                  6: b"x" * (limit + 1), 8: b"C" * 500 + b"\r", 10: b"E" * 5000}
    lines = [ev("u", "a"), long_lines[2], ev("u", "b"), long_lines[4], exactly, long_lines[6],
             ev("u", "c"), long_lines[8], ev("u", "d"), long_lines[10]]
    f = tmp_path / "long.jsonl"
    f.write_bytes(b"\n".join(lines))  # the last, long line ends the file without a newline
    store = TripleStore(tmp_path / "d")
    stats = backfill_file(f, store, max_line_bytes=limit, read_bytes=read_bytes)
    assert (stats.lines, stats.events, stats.rejected) == (10, 5, 5)
    assert store_scores(store) == {("u", "a"): 1, ("u", "b"): 1, ("u", "x"): 1, ("u", "c"): 1,
                                   ("u", "d"): 1}
    recs = rejected_records(tmp_path / "long.jsonl.rejected.jsonl")
    assert [r["line"] for r in recs] == sorted(long_lines)
    for r in recs:
        line = long_lines[r["line"]].removesuffix(b"\r")
        assert r["size"] == len(line)
        assert f"{len(line)} bytes" in r["reason"] and f"max {limit}" in r["reason"]
        assert "raw" not in r and "raw_base64" not in r
        x = excerpt_of(r)
        assert 0 < len(x) <= EXCERPT_BYTES and line.startswith(x)
    assert "excerpt" in recs[1]  # UTF-8 text, so the excerpt was not cut inside a character


def test_default_line_limit_is_the_event_limit(tmp_path):
    f = tmp_path / "big.jsonl"
    f.write_bytes(ev("u", "i", pad="z" * MAX_MESSAGE_BYTES) + b"\n" + ev("u", "j") + b"\n")
    stats = backfill_file(f, TripleStore(tmp_path / "d"))
    assert (stats.events, stats.rejected) == (1, 1)
    [rec] = rejected_records(tmp_path / "big.jsonl.rejected.jsonl")
    assert rec["size"] > MAX_MESSAGE_BYTES and len(excerpt_of(rec)) <= EXCERPT_BYTES


RSS_PROBE = textwrap.dedent("""
    import json, resource, sys
    from mcrecall.ingest.backfill import backfill_file
    from mcrecall.ingest.store import TripleStore
    store = TripleStore(sys.argv[2])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    st = backfill_file(sys.argv[1], store)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kib": before, "after_kib": after, "lines": st.lines,
                      "events": st.events, "rejected": st.rejected}))
""")


@pytest.mark.slow
def test_a_256_mb_line_is_read_in_bounded_memory(tmp_path):
    size = 256 << 20
    f = tmp_path / "huge.jsonl"
    with open(f, "wb") as out:  # sparse: the line costs no disk
        out.write(ev("u", "before") + b"\n" + b'{"user_id": "')
        out.seek(size, os.SEEK_CUR)
        out.write(b'", "item_id": "i", "action": "click"}\n' + ev("u", "after") + b"\n")
    p = subprocess.run([sys.executable, "-c", RSS_PROBE, str(f), str(tmp_path / "d")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert (r["lines"], r["events"], r["rejected"]) == (3, 2, 1)
    grew_mib = (r["after_kib"] - r["before_kib"]) / 1024
    assert grew_mib < 48, f"backfill grew RSS by {grew_mib:.0f} MiB for a 256 MiB line"
    [rec] = rejected_records(tmp_path / "huge.jsonl.rejected.jsonl")
    assert rec["line"] == 2 and rec["size"] > size
    assert (tmp_path / "huge.jsonl.rejected.jsonl").stat().st_size < 4096


# --------------------------------------------------------------------------- the fast paths agree
HOSTILE = [ev("u1", "i1"), ev(7, 2**70, "share"), ev("é", 0, "like"), ev("x" * 128, "y"),
           ev("x" * 129, "y"), ev("", "y"), ev("u", ""), ev(-1, 2), ev(True, 2), ev(1.5, 2),
           ev("u\x00\n\t'\"\\", "i"), ev("u", "i", "buy"), ev("u", "i", ts=True), ev("u", "i", ts=1.5),
           ev("u", "i", ts=None), ev("u", "i", ts=2**70), b'{"user_id": "\\ud800", "item_id": 1, "action": "click"}',
           b"[1, 2]", b'"str"', b"", b"  ", b"\xff", b"{", b'{"user_id": 1, "item_id": 2}',
           b'{"user_id": 1, "item_id": 2, "action": ["click"]}', b'{"user_id": 1, "item_id": 2, "action": null}',
           b'{"user_id": 1, "user_id": "dup", "item_id": 2, "action": "click"}',
           ev("u", "i", pad="p" * MAX_MESSAGE_BYTES), ev("u", "i") + b"\r", ev("😀" * 32, "i"),
           ev("😀" * 33, "i"), b'{"user_id":1,"item_id":2,"action":"click"}\t ']


def per_line(raws):
    users, items, bits, bad = [], [], [], []
    for k, raw in enumerate(raws):
        try:
            u, i, b = parse_scored(raw)
        except BadEvent as e:
            bad.append((k, e.reason))
            continue
        users.append(u)
        items.append(i)
        bits.append(b)
    return users, items, bits, bad


@pytest.mark.parametrize("seed", range(6))
def test_batch_parse_agrees_with_one_by_one(seed):
    rng = random.Random(seed)
    good = random_events(3000, 50, 40, seed=seed)
    raws = list(good)
    if seed:  # seed 0: all good, the vectorised path end to end
        for _ in range(rng.choice([1, 5, 60])):
            raws.insert(rng.randrange(len(raws) + 1), rng.choice(HOSTILE))
    assert parse_scored_many(raws) == per_line(raws)
    assert parse_scored_many(HOSTILE) == per_line(HOSTILE)
    with_null = raws[:1500] + [None] + raws[1500:]  # a tombstone (null value) among good events
    assert parse_scored_many(with_null) == per_line(with_null)


# --------------------------------------------------------------------------- the store, vectorised
def dump(store: TripleStore) -> dict:
    out = {}
    with store.env.begin() as txn:
        for name in (b"pairs", b"user_ids", b"users_by_idx", b"item_ids", b"items_by_idx", b"user_seq",
                     b"item_seq", b"item_log", b"item_pairs", b"offsets", b"meta"):
            out[name] = list(txn.cursor(db=store.env.open_db(name, txn=txn)).iternext())
    return out


def _ref_index(txn, ext_id, new, by_id_db, by_idx_db, counters, counter) -> int:
    idx = new.get(ext_id)
    if idx is not None:
        return idx
    key = ext_id.encode("utf-8")
    raw = txn.get(key, db=by_id_db)
    if raw is not None:
        idx = _U32.unpack(raw)[0]
    else:
        idx = counters[counter]
        counters[counter] += 1
        txn.put(key, _U32.pack(idx), db=by_id_db)
        txn.put(_U32.pack(idx), key, db=by_idx_db)
    new[ext_id] = idx
    return idx


def _ref_log_item(s, txn, i: int, seq_bytes: bytes) -> None:
    ikey = _U32.pack(i)
    old = txn.get(ikey, db=s._item_seq)
    if old is not None:
        txn.delete(bytes(old) + ikey, db=s._item_log)
    txn.put(ikey, seq_bytes, db=s._item_seq)
    txn.put(seq_bytes + ikey, b"", db=s._item_log)


def reference_apply(store: TripleStore, pairs, offsets=None, *, events=0, bad_events=0) -> int:
    """The per-pair definition of a batch (the store's original loop): the oracle."""
    s = store
    with s.env.begin(write=True) as txn:
        counters = {n: s._get_counter(txn, n) for n in COUNTERS}
        seq = counters["seq"] + 1
        seq_b = _U64.pack(seq)
        cu, ci, changed, new_u, new_i = set(), set(), 0, {}, {}
        for (user_id, item_id), bits in pairs.items():
            u = _ref_index(txn, user_id, new_u, s._user_ids, s._users_by_idx, counters, "n_users")
            i = _ref_index(txn, item_id, new_i, s._item_ids, s._items_by_idx, counters, "n_items")
            key = _PAIR.pack(u, i)
            old = txn.get(key, db=s._pairs)
            old_mask = old[0] if old is not None else 0
            new = old_mask | bits
            if old is None or new != old_mask:
                txn.put(key, bytes((new,)), db=s._pairs)
                counters["n_pairs"] += old is None
                changed += 1
                if u not in cu:
                    cu.add(u)
                    txn.put(_U32.pack(u), seq_b, db=s._user_seq)
                txn.put(_PAIR.pack(i, u), bytes((new,)), db=s._item_pairs)
                if i not in ci:
                    ci.add(i)
                    _ref_log_item(s, txn, i, seq_b)
        for (topic, part), off in (offsets or {}).items():
            k = topic.encode() + b"\0" + str(part).encode()
            old = txn.get(k, db=s._offsets)
            if old is None or int.from_bytes(old, "big", signed=True) < off:
                txn.put(k, off.to_bytes(8, "big", signed=True), db=s._offsets)
        if changed:
            counters["seq"] = seq
        counters["events"] += events
        counters["bad_events"] += bad_events
        for n, v in counters.items():
            txn.put(n.encode(), _U64.pack(v), db=s._meta)
    return changed


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_batches_write_exactly_what_the_per_pair_loop_writes(tmp_path, seed):
    rng = random.Random(seed)
    ids = ["a", "b", "é", "u\x00", "x'] or 1", "😀", str(2**70)] + [f"u{k}" for k in range(40)]
    actions = list(ACTION_BITS)
    new, ref = TripleStore(tmp_path / "new"), TripleStore(tmp_path / "ref")
    for batch in range(8):
        n = rng.choice([0, 1, 5, 300, 2000])
        users = [rng.choice(ids[:10 + 5 * batch]) for _ in range(n)]
        items = [rng.choice(ids[:8 + 5 * batch]) for _ in range(n)]
        bits = [ACTION_BITS[rng.choice(actions)] for _ in range(n)]
        merged: dict = {}
        for u, i, b in zip(users, items, bits, strict=False):
            merged[(u, i)] = merged.get((u, i), 0) | b
        offsets = {("t", batch % 3): 10 * batch} if batch % 2 else None
        if batch == 4:  # a second handle: the id caches start cold
            new = TripleStore(tmp_path / "new")
        got = new.apply_events(users, items, bits, offsets, events=n, bad_events=batch % 2)
        want = reference_apply(ref, merged, offsets, events=n, bad_events=batch % 2)
        assert got["changed"] == want
        assert dump(new) == dump(ref), f"batch {batch}"
        # the dict interface is the same write
        if batch == 6:
            got = new.apply(merged, events=1)
            assert got["changed"] == reference_apply(ref, merged, events=1) == 0
            assert dump(new) == dump(ref)


@pytest.mark.slow
def test_backfill_store_matches_the_reference_on_a_random_stream(tmp_path):
    lines = random_events(30_000, 700, 400, seed=4, dup_rate=0.3)
    f = tmp_path / "e.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    store = TripleStore(tmp_path / "new")
    stats = backfill_file(f, store, batch_size=7000)
    ref = TripleStore(tmp_path / "ref")
    for start in range(0, len(lines), 7000):
        merged: dict = {}
        for raw in lines[start:start + 7000]:
            u, i, b = parse_scored(raw)
            merged[(u, i)] = merged.get((u, i), 0) | b
        reference_apply(ref, merged, events=len(lines[start:start + 7000]))
    assert stats.events == len(lines)
    assert dump(store) == dump(ref)
    assert store_scores(store) == expected_scores(lines)
    assert np.array_equal(store.snapshot().score, ref.snapshot().score)


def test_produce_skips_a_leading_bom_like_the_backfill(kafka_bootstrap, kafka_topic, tmp_path):
    """Issue 20 #9: `produce` rejected line 1 of a file with a BOM that `ingest --from-file`
    skips: one rule for every file reader."""
    from test_ingest_worker import make_cfg

    from mcrecall.ingest.produce import produce_file

    cfg = make_cfg(kafka_bootstrap, kafka_topic, tmp_path / "data")
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + ev("u", "a") + b"\n" + ev("u", "b") + b"\n")
    stats = produce_file(f, cfg)
    assert (stats.sent, stats.invalid) == (2, 0)
    f.write_bytes(f.read_bytes() + b"\xef\xbb\xbf" + ev("u", "c") + b"\n")  # inside: a broken line
    assert produce_file(f, cfg).invalid == 1

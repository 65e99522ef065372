"""``mcrecall evaluate --prequential``: test-then-train replay; item refresh must pay off on a
stream where new items keep arriving and popularity drifts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mcrecall.cli import main
from mcrecall.core.config import load_config
from mcrecall.ingest.events import ACTION_BITS
from mcrecall.plot import plot_prequential
from mcrecall.train.prequential import STRATEGIES, prequential, read_events
from mcrecall.train.synthetic import make_stream


def _tc(**kw):
    return load_config(environ={}).with_overrides(
        train={"objective": "implicit", "dim": 8, "epochs": 5, "threads": 1, **kw}).train


@pytest.fixture(scope="module")
def stream():
    return make_stream(n_users=300, n_items=240, n_exposures=8000, seed=3)


def test_stream_has_arriving_items_and_drift(stream):
    ts = [e["ts"] for e in stream]
    assert ts == sorted(ts)
    first_seen = {}
    for n, e in enumerate(stream):
        first_seen.setdefault(e["item_id"], n)
    late = sum(n > len(stream) // 2 for n in first_seen.values())
    assert late > 0.2 * len(first_seen)  # many items are born in the second half
    # the most clicked items of the first and last quarter differ (popularity drifts)
    q = len(stream) // 4

    def top(part):
        c = {}
        for e in part:
            if e["action"] == "click":
                c[e["item_id"]] = c.get(e["item_id"], 0) + 1
        return set(sorted(c, key=c.get, reverse=True)[:10])

    assert len(top(stream[:q]) & top(stream[-q:])) <= 2


@pytest.mark.slow
def test_item_refresh_beats_user_fold_in_only(stream):
    events = [(e["user_id"], e["item_id"], ACTION_BITS[e["action"]]) for e in stream]
    res = prequential(events, _tc(), retrain_every=4000, refresh_every=50)
    r = {s: res.recall(s) for s in STRATEGIES}
    assert res.versions == len(events) // 4000 and res.positives > 500
    assert all(0 <= v <= 1 for v in r.values())
    assert r["+ item refresh"] > r["+ user fold-in"] + 0.02, r
    assert r["+ item refresh"] > r["most popular"], r
    assert set(res.curve) == set(STRATEGIES)


def test_cli_table_json_plot_and_bad_line(tmp_path, stream, capsys):
    f = tmp_path / "events.jsonl"
    f.write_text("".join(json.dumps(e) + "\n" for e in stream[:3000]))
    png = tmp_path / "p.png"
    rc = main(["evaluate", "--prequential", str(f), "--retrain-every", "1000", "--plot", str(png),
               "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["recall"]) == set(STRATEGIES) and out["events"] == 3000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(stream[0]) + "\n" + '{"user_id": "u1", "item_id": "i\\n1", "action": "buy"}\n')
    assert main(["evaluate", "--prequential", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl:2: bad event" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", "--prequential", str(f), "--retrain-every", "0"]) == 1


def test_test_then_train_counts_only_first_positives():
    """A hit is counted before the event is applied, once per (user, item) pair."""
    ev = []
    for r in range(60):  # u0..u9 all click i0..i5: a version will know them
        ev.append((f"u{r % 10}", f"i{r % 6}", ACTION_BITS["click"]))
    ev += [("u0", "i0", ACTION_BITS["like"]), ("u0", "i0", ACTION_BITS["share"])]  # not first
    ev += [("u0", "new", ACTION_BITS["impression"]), ("u0", "new", ACTION_BITS["click"])]
    res = prequential(ev, _tc(dim=4), retrain_every=60, refresh_every=1)
    assert res.positives == 1  # only u0's first click on "new" (after version 1)
    assert all(res.hits[s] == 0 for s in STRATEGIES)  # nobody knows "new" yet


def test_plot_function_takes_data_and_a_path(tmp_path):
    p = plot_prequential({"a": [(1, 0.1), (2, 0.2)], "b": []}, tmp_path / "x.png", k=10)
    assert p.stat().st_size > 1000


def test_bce_is_refused_clearly(stream):
    with pytest.raises(ValueError, match="ALS objective"):
        prequential([("u", "i", 1)], _tc(objective="bce"))
    assert np.isnan(prequential([("u", "i", 1)], _tc(), retrain_every=5).recall(STRATEGIES[0]))


def test_read_events_validates(tmp_path):
    f = tmp_path / "e.jsonl"
    f.write_text('{"user_id": 7, "item_id": "a", "action": "click"}\n\n')
    assert read_events(f) == [("7", "a", ACTION_BITS["click"])]


def test_json_of_a_replay_with_nothing_scored_is_valid_json(tmp_path, capsys):
    """Issue 20 #7: one event scores nothing: null in JSON (NaN is not JSON), n/a in the table."""
    f = tmp_path / "one.jsonl"
    f.write_text('{"user_id": "u", "item_id": "i", "action": "click"}\n')
    assert main(["evaluate", "--prequential", str(f), "--json"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out
    res = json.loads(out)
    assert all(v is None for v in res["recall"].values())
    assert main(["evaluate", "--prequential", str(f)]) == 0
    table = capsys.readouterr().out
    assert "| n/a |" in table and "nan" not in table.lower()


def test_a_bad_plot_path_is_refused_before_the_replay(tmp_path, stream, capsys):
    """Issue 20 #8: --plot /nonexistent/x.png replayed the whole file, then printed only
    [Errno 2]: the path is checked first, and the table is never lost."""
    f = tmp_path / "events.jsonl"
    f.write_text("".join(json.dumps(e) + "\n" for e in stream[:3000]))
    assert main(["evaluate", "--prequential", str(f), "--plot", "/nonexistent/x.png"]) == 1
    cap = capsys.readouterr()
    assert "--plot /nonexistent/x.png" in cap.err and "does not exist" in cap.err
    assert len(cap.err.strip().splitlines()) == 1 and cap.out == ""  # nothing was replayed
    assert main(["evaluate", "--prequential", str(f), "--plot", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err


def test_a_leading_bom_is_skipped_by_evaluate_as_by_backfill(tmp_path):
    """Issue 20 #9: one rule for every file reader: a BOM at the very start is skipped."""
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + b'{"user_id": "u", "item_id": "i", "action": "click"}\n')
    assert read_events(f) == [("u", "i", ACTION_BITS["click"])]
    f.write_bytes(f.read_bytes() + b'\xef\xbb\xbf{"user_id": "u", "item_id": "j", "action": "click"}\n')
    with pytest.raises(ValueError, match="bom.jsonl:2: bad event"):  # not at the start: data
        read_events(f)


def test_the_table_names_settings_in_words_not_a_dict_repr(stream):
    """Issue 20 #13: `1 versions ({'objective': ...})` was a Python dict repr."""
    res = prequential([(f"u{j % 7}", f"i{j % 5}", ACTION_BITS["click"]) for j in range(40)], _tc(dim=4),
                      retrain_every=20, refresh_every=5)
    tail = res.table().splitlines()[-1]
    assert "{" not in tail and "'" not in tail and "objective implicit" in tail, tail
    assert ("1 version (" in tail) == (res.versions == 1)

"""``mcrecall status``: current version and its evaluation, store counts, offsets, dead letters."""

from __future__ import annotations

import json
import sys


def add_status_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def collect_status(cfg) -> dict:
    from mcrecall.ingest.store import TripleStore

    try:
        store = TripleStore(cfg.data_dir, readonly=True)
        counts, offsets = store.counts(), store.offsets()
        notes = store.offset_notes()
    except FileNotFoundError:
        counts = {"pairs": 0, "users": 0, "items": 0, "events": 0, "bad_events": 0, "dlq_failed": 0,
                  "rejected": 0, "seq": 0}
        offsets, notes = {}, {}
    out: dict = {
        "data_dir": str(cfg.data_dir),
        "data_dir_exists": cfg.data_dir.is_dir(),
        "store": counts,
        "offsets": {f"{t}[{p}]": o for (t, p), o in sorted(offsets.items())},
        # backfill rejects went to F.rejected.jsonl, not to the topic: counted apart
        "dead_letters": {"topic": f"{cfg.kafka.topic}.dlq",
                         "count": counts["bad_events"] - counts.get("rejected", 0),
                         "not_written": counts.get("dlq_failed", 0)},
        "backfill_rejected": {"count": counts.get("rejected", 0),
                              "where": "<file>.rejected.jsonl beside each backfilled file"},
        # partitions whose stored offset was found outside the broker's range ([kafka] offset_reset)
        "offsets_out_of_range": {f"{t}[{p}]": n for (t, p), n in sorted(notes.items())
                                 if n.get("state") == "out_of_range"},
        "offset_resets": {f"{t}[{p}]": n for (t, p), n in sorted(notes.items()) if n.get("state") == "reset"},
        "version": None,
    }
    try:
        from mcrecall.train.versions import ModelRegistry
    except ImportError:
        return out
    try:
        from mcrecall.serve.replica import replica_status

        out["replica"] = replica_status(cfg)
    except ImportError:
        out["replica"] = None
    out["role"] = "replica" if out["replica"] else "primary"
    reg = ModelRegistry(cfg.data_dir, readonly=True)
    current = reg.current_version()
    if current is not None:
        meta = reg.metadata(current)
        out["version"] = current
        out["versions"] = reg.versions()
        out["model"] = {k: meta.get(k) for k in ("created_at", "dim", "similarity", "objective", "metric",
                                                 "backend", "collection", "n_triples", "store_seq")}
        out["model"]["world_size"] = int(meta.get("world_size") or 1)  # ranks it was trained on
        out["evaluation"] = meta.get("evaluation")
        out["new_triples_since_version"] = out["store"]["seq"] > int(meta.get("store_seq") or 0)
        out["refresh"] = refresh_status(reg.refresh_info(current), meta, out["store"]["seq"])
    return out


def refresh_status(info: dict | None, meta: dict, store_seq: int) -> dict:
    """The current version's item refresh: last cycle, items updated, lag behind the store."""
    import time

    upto = int((info or {}).get("seq", meta.get("store_seq") or 0))
    at = (info or {}).get("at_unix")
    return {"refreshes": int((info or {}).get("generation", 0)),
            "items_updated_total": int((info or {}).get("items_total", 0)),
            "last_items_updated": (info or {}).get("last", {}).get("updated"),
            "last_at_unix": at,
            "seconds_ago": None if at is None else round(time.time() - at, 1),
            "up_to_store_seq": upto,
            "lag_batches": max(0, int(store_seq) - upto)}


def _table(rows) -> str:
    rows = [(str(a), str(b)) for a, b in rows]
    w = max((len(a) for a, _ in rows), default=0)
    return "\n".join(f"  {a:<{w}}  {b}" for a, b in rows)


def _dead_letters(d: dict) -> str:
    text = f"{d['count']} -> {d['topic']}"
    if d.get("not_written"):
        text += f" ({d['not_written']} not written: the topic refused them; log line dlq_unwritable)"
    return text


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else v


def render(st: dict) -> str:
    lines = [f"mcrecall status  (data dir: {st['data_dir']})", "", "triple store:"]
    if not st.get("data_dir_exists", True):
        lines[0] += " -- does not exist: nothing ingested yet, or [store] data_dir points elsewhere"
    s = st["store"]
    lines.append(_table([("pairs", s["pairs"]), ("users", s["users"]), ("items", s["items"]),
                         ("events stored", s["events"]), ("store seq", s["seq"]),
                         ("items with attributes", f"{s.get('items_with_attributes', 0)} "
                                                   f"({s.get('item_tokens', 0)} distinct tokens)"),
                         ("users with attributes", f"{s.get('users_with_attributes', 0)} "
                                                   f"({s.get('user_tokens', 0)} distinct tokens)"),
                         ("dead letters", _dead_letters(st["dead_letters"])),
                         *([("backfill rejects", f"{st['backfill_rejected']['count']} -> "
                             f"{st['backfill_rejected']['where']}")]
                           if st.get("backfill_rejected", {}).get("count") else [])]))
    lines += ["", "offsets (next to consume, from the store):"]
    lines.append(_table(st["offsets"].items()) if st["offsets"] else "  none yet")
    bad = st.get("offsets_out_of_range") or {}
    if bad:
        lines += ["", "OFFSETS OUT OF RANGE (ingest stops; [kafka] offset_reset = earliest | latest goes on):"]
        lines.append(_table((k, f"stored {n['stored']} not in [{n['beginning']}, {n['end']}]") for k, n in bad.items()))
    resets = st.get("offset_resets") or {}
    if resets:
        lines += ["", "offsets reset (stored offset was outside the partition's range):"]
        lines.append(_table((k, f"{n['stored']} -> {n.get('reset_to')} ({n.get('policy')}; range "
                                f"[{n['beginning']}, {n['end']}])") for k, n in resets.items()))
    lines += [""]
    rep = st.get("replica")
    if rep:
        lag_ev = "unknown" if rep["lag_events"] is None else rep["lag_events"]
        lines.append(f"role: replica ({rep['state']}; model log {rep['log_topic']})")
        lines.append(_table([("current version", _fmt(rep["current_version"])),
                             ("newest on the log", _fmt(rep["newest_version"])),
                             ("lag", f"{rep['lag_versions']} version(s), {lag_ev} event(s), {rep['lag_s']} s"),
                             ("kafka reachable", _fmt(rep["kafka_reachable"]))]))
        for v, why in rep["bad_versions"].items():
            lines.append(f"  version {v} NOT made current (corrupt on the log): {why}")
        lines.append("")
    if st.get("version") is None:
        lines.append("model: no version published yet (run `mcrecall train`)")
        return "\n".join(lines)
    lines.append(f"model: version {st['version']} is current (kept: {st.get('versions')})")
    lines.append(_table((k, _fmt(v)) for k, v in st["model"].items()))
    if st.get("new_triples_since_version"):
        lines.append("  (the store has new triples since this version was trained)")
    r = st.get("refresh")
    if r:
        last = ("never (items are as trained)" if not r["refreshes"] else
                f"{r['seconds_ago']} s ago, {r['last_items_updated']} item(s) updated")
        lines += ["", "item refresh of the current version (`mcrecall refresh`):"]
        lines.append(_table([("last refresh", last), ("refreshes", r["refreshes"]),
                             ("items updated", r["items_updated_total"]),
                             ("up to store seq", r["up_to_store_seq"]),
                             ("lag behind the store", f"{r['lag_batches']} store batch(es)")]))
    ev = st.get("evaluation")
    if ev:
        lines += ["", "evaluation of the current version (held-out):"]
        from mcrecall.train.report import format_table

        lines.append(format_table(ev))
    return "\n".join(lines)


def run_status(args, cfg) -> int:
    st = collect_status(cfg)
    if args.json:
        json.dump(st, sys.stdout, indent=2, default=str)
        print()
    else:
        print(render(st))
    return 0

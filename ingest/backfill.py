"""Backfill a JSONL file into the triple store through the same validation and scoring.

Needs no broker. Bad lines go to ``F.rejected.jsonl`` (the file's whole name plus
``.rejected.jsonl``), one JSON object per line with the line number, the reason and the raw line, so nothing is silently lost.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ingest.events import BadEvent, parse_scored
from ingest.store import TripleStore

log = logging.getLogger("mcrecall.ingest")


@dataclass
class BackfillStats:
    lines: int = 0
    events: int = 0
    rejected: int = 0
    changed_pairs: int = 0
    seconds: float = 0.0
    rejected_path: Path | None = None


def backfill_file(path: str | Path, store: TripleStore, *, batch_size: int = 100_000,
                  progress_every_s: float = 5.0) -> BackfillStats:
    """Validate, score and store every line of ``path``; return counts."""
    path = Path(path)
    rejected_path = path.with_name(path.name + ".rejected.jsonl")  # DESIGN §7: F.rejected.jsonl
    stats = BackfillStats(rejected_path=rejected_path)
    t0 = last = time.monotonic()
    pairs: dict[tuple[str, str], int] = {}
    pending_events = 0
    rejected = None
    try:
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                stats.lines += 1
                raw = line.rstrip(b"\r\n")
                if not raw.strip():
                    continue  # blank lines separate nothing in JSONL; not an event
                try:
                    user_id, item_id, bits = parse_scored(raw)
                except BadEvent as e:
                    if rejected is None:
                        rejected = open(rejected_path, "w", encoding="utf-8")
                    rejected.write(json.dumps({"line": lineno, "reason": e.reason,
                                               "raw": raw.decode("utf-8", "replace")}) + "\n")
                    stats.rejected += 1
                    continue
                key = (user_id, item_id)
                pairs[key] = pairs.get(key, 0) | bits
                pending_events += 1
                if pending_events >= batch_size:
                    stats.changed_pairs += store.apply(pairs, events=pending_events)["changed"]
                    stats.events += pending_events
                    pairs, pending_events = {}, 0
                    now = time.monotonic()
                    if now - last >= progress_every_s:
                        log.info("backfill_progress", extra={
                            "lines": stats.lines, "events": stats.events, "rejected": stats.rejected,
                            "events_per_s": round(stats.events / (now - t0))})
                        last = now
        if pairs or pending_events or stats.rejected:
            stats.changed_pairs += store.apply(pairs, events=pending_events,
                                               bad_events=stats.rejected)["changed"]
            stats.events += pending_events
    finally:
        if rejected is not None:
            rejected.close()
    stats.seconds = time.monotonic() - t0
    log.info("backfill_done", extra={"lines": stats.lines, "events": stats.events,
                                     "rejected": stats.rejected, "seconds": round(stats.seconds, 2),
                                     "rejected_file": str(rejected_path) if stats.rejected else "-"})
    return stats

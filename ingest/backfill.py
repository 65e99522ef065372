"""Backfill a JSONL file into the triple store through the same validation and scoring.

Needs no broker. The file is read as bytes in bounded chunks: a UTF-8 byte order mark at its
start is skipped, and no line is ever held whole beyond the line limit (the event limit,
64 KiB), so memory stays bounded whatever the file holds.

Bad lines go to ``F.rejected.jsonl`` (the file's whole name plus ``.rejected.jsonl``), one JSON
object per line, so nothing is silently lost::

    {"line": 7, "reason": "...", "raw": "<the line>"}             the line is UTF-8 text
    {"line": 8, "reason": "...", "raw_base64": "<the line>"}      it is not: its exact bytes
    {"line": 9, "reason": "line is N bytes (max M) ...", "size": N,
     "excerpt": "<its first bytes>"}                              over the limit (or excerpt_base64)

``raw`` is the line byte for byte without its terminator (``\\n`` or ``\\r\\n``).
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import time
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple

from mcrecall.core.eventfile import BOM  # the one rule for a leading BOM (core/eventfile.py)
from mcrecall.ingest.attributes import FILE_PARTITION, split_attributes, version_key
from mcrecall.ingest.events import MAX_MESSAGE_BYTES, parse_scored_many
from mcrecall.ingest.store import TripleStore

log = logging.getLogger("mcrecall.ingest")
READ_BYTES = 4 << 20  # one read of the file
EXCERPT_BYTES = 256  # what is kept of a line over the limit


@dataclass
class BackfillStats:
    lines: int = 0
    events: int = 0
    rejected: int = 0
    changed_pairs: int = 0
    attribute_events: int = 0
    seconds: float = 0.0
    rejected_path: Path | None = None


class _LongLine(NamedTuple):
    """A line over the limit: its number, its size without the terminator, its first bytes."""

    lineno: int
    size: int
    excerpt: bytes


def backfill_file(path: str | Path, store: TripleStore, *, batch_size: int = 100_000,
                  progress_every_s: float = 5.0, max_line_bytes: int | None = None,
                  read_bytes: int = READ_BYTES) -> BackfillStats:
    """Validate, score and store every line of ``path``; return counts.

    Every ``batch_size`` good events are one store transaction (:meth:`TripleStore.apply_events`).
    A line longer than ``max_line_bytes`` (default: the event limit, ``MAX_MESSAGE_BYTES``) is
    rejected without being read whole; at most ``read_bytes + max_line_bytes`` bytes of the file
    are in memory at once.
    """
    path = Path(path)
    limit = MAX_MESSAGE_BYTES if max_line_bytes is None else int(max_line_bytes)
    rejected_path = path.with_name(path.name + ".rejected.jsonl")  # DESIGN §7: F.rejected.jsonl
    stats = BackfillStats(rejected_path=rejected_path)
    t0 = last = time.monotonic()
    users: list[str] = []
    items: list[str] = []
    bits: list[int] = []
    attrs: list = []  # [(AttributeUpdate, version)]: version from the line number
    rejected = None

    def reject(record: dict) -> None:
        nonlocal rejected
        if rejected is None:
            rejected = open(rejected_path, "w", encoding="utf-8")
        rejected.write(json.dumps(record) + "\n")
        stats.rejected += 1

    gc_was_enabled = gc.isenabled()
    # Each event makes a few short-lived containers and none of them can form a cycle; the
    # collector's passes over them cost ~5-10 % of a backfill, so it rests until the end.
    gc.disable()
    try:
        with open(path, "rb") as f:
            for piece in _pieces(f, limit, read_bytes):
                if isinstance(piece, _LongLine):
                    stats.lines += 1
                    reject(_long_record(piece, limit))
                    log.warning("backfill_line_too_long", extra={
                        "line": piece.lineno, "bytes": piece.size, "max": limit})
                    continue
                first, lines = piece
                stats.lines += len(lines)
                linenos = None
                if not all(map(bytes.strip, lines)):  # blank lines are no events (nor errors)
                    linenos = [first + k for k, line in enumerate(lines) if line.strip()]
                    lines = [line for line in lines if line.strip()]
                u, i, b, bad = parse_scored_many(lines)
                if bad:  # attribute messages (no action) come back here: take them out
                    updates, bad = split_attributes(lines, bad)
                    for k, up in updates:
                        line = first + k if linenos is None else linenos[k]
                        attrs.append((up, version_key(up.ts, FILE_PARTITION, line)))
                for k, reason in bad:
                    reject(_raw_record(first + k if linenos is None else linenos[k], reason, lines[k]))
                users += u
                items += i
                bits += b
                while len(users) >= batch_size:
                    stats.changed_pairs += store.apply_events(
                        users[:batch_size], items[:batch_size], bits[:batch_size])["changed"]
                    stats.events += batch_size
                    del users[:batch_size], items[:batch_size], bits[:batch_size]
                    now = time.monotonic()
                    if now - last >= progress_every_s:
                        log.info("backfill_progress", extra={
                            "lines": stats.lines, "events": stats.events, "rejected": stats.rejected,
                            "events_per_s": round(stats.events / (now - t0))})
                        last = now
        if users or attrs or stats.rejected:
            stats.changed_pairs += store.apply_events(users, items, bits, bad_events=stats.rejected,
                                                      rejected=stats.rejected, attributes=attrs)["changed"]
            stats.events += len(users)
            stats.attribute_events += len(attrs)
    finally:
        if gc_was_enabled:
            gc.enable()
        if rejected is not None:
            rejected.close()
    stats.seconds = time.monotonic() - t0
    log.info("backfill_done", extra={"lines": stats.lines, "events": stats.events,
                                     "rejected": stats.rejected, "seconds": round(stats.seconds, 2),
                                     "rejected_file": str(rejected_path) if stats.rejected else "-"})
    return stats


def _pieces(f: BinaryIO, limit: int, read_bytes: int) -> Iterator[tuple[int, list[bytes]] | _LongLine]:
    """The file as runs of lines ``(number of the first, lines)`` and over-limit lines, in file
    order; lines lose their ``\\n`` or ``\\r\\n``. At most ``read_bytes + limit + 1`` bytes of
    the file are held at once: the start of an over-limit line is dropped as soon as it is seen
    to be over the limit, and its end is only scanned for the newline."""
    read_bytes = max(1, int(read_bytes))
    lineno = 0  # lines yielded so far
    carry = b""  # the start of a line whose newline is not read yet (at most limit + 1 bytes)
    long: list | None = None  # [lineno, size so far, excerpt, ends with \r] of a line being skipped
    head = f.read(len(BOM))
    pending = b"" if head == BOM else head  # a BOM at the very start is no part of any line
    while True:
        chunk = f.read(read_bytes)
        if pending:
            chunk, pending = pending + chunk, b""
        if not chunk:
            break
        if long is not None:
            nl = chunk.find(b"\n")
            if nl < 0:
                long[1] += len(chunk)
                long[3] = chunk.endswith(b"\r")
                continue
            cr = chunk[nl - 1] == 0x0D if nl else long[3]
            lineno += 1
            yield _LongLine(long[0], long[1] + nl - cr, long[2])
            long = None
            chunk = chunk[nl + 1:]
        buf = carry + chunk if carry else chunk
        lines = buf.split(b"\n")
        carry = lines.pop()
        if lines:
            if b"\r" in buf:
                lines = list(map(bytes.removesuffix, lines, repeat(b"\r")))
            yield from _runs(lines, lineno + 1, limit)
            lineno += len(lines)
        if len(carry) > limit + 1:  # + 1: a "\r" before the coming "\n" is no part of the line
            long = [lineno + 1, len(carry), carry[:EXCERPT_BYTES], carry.endswith(b"\r")]
            carry = b""
    if long is not None:  # the file ends inside an over-limit line
        yield _LongLine(long[0], long[1], long[2])
    elif carry:  # the last line has no newline
        yield from _runs([carry], lineno + 1, limit)


def _runs(lines: list[bytes], first: int, limit: int) -> Iterator[tuple[int, list[bytes]] | _LongLine]:
    """``lines`` as runs of lines within the limit and the over-limit lines between them."""
    if max(map(len, lines)) <= limit:
        yield first, lines
        return
    start = 0
    for k, line in enumerate(lines):
        if len(line) > limit:
            if k > start:
                yield first + start, lines[start:k]
            yield _LongLine(first + k, len(line), line[:EXCERPT_BYTES])
            start = k + 1
    if start < len(lines):
        yield first + start, lines[start:]


def _raw_record(lineno: int, reason: str, raw: bytes) -> dict:
    """A rejected line: as text if it is UTF-8, else as base64 (its bytes, exactly)."""
    try:
        return {"line": lineno, "reason": reason, "raw": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"line": lineno, "reason": reason, "raw_base64": base64.b64encode(raw).decode("ascii")}


def _long_record(line: _LongLine, limit: int) -> dict:
    """A rejected over-limit line: its size and the start of it (cut between characters when
    it is UTF-8 text)."""
    record = {"line": line.lineno, "size": line.size,
              "reason": f"line is {line.size} bytes (max {limit}); only its first bytes are kept"}
    x = line.excerpt
    for cut in range(4):  # a UTF-8 character is at most 4 bytes: the cut can split one
        try:
            record["excerpt"] = x[:len(x) - cut].decode("utf-8")
            return record
        except UnicodeDecodeError:
            continue
    record["excerpt_base64"] = base64.b64encode(x).decode("ascii")
    return record

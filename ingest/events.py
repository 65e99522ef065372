"""Event validation and scoring (DESIGN §1–2).

An event is one JSON object ``{"user_id", "item_id", "action", "ts"?}``. Scores are kept as a
bitmask of the *distinct* actions ever seen for a (user, item) pair; merging is a bitwise OR, so
a redelivered, duplicated or reordered event can never change a score.

    score(u, i) = popcount(mask(u, i) & POSITIVE_BITS)   # 0..4
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

try:  # orjson is 2-3x faster and rejects lone surrogates; json is the fallback
    import orjson

    _loads = orjson.loads
    _DecodeErrors: tuple = (orjson.JSONDecodeError, RecursionError)
except ImportError:  # pragma: no cover
    _loads = json.loads
    _DecodeErrors = (json.JSONDecodeError, RecursionError)

from core import ids as _ids  # the one place for the id rules
from core.ids import MAX_ID_BYTES  # noqa: F401  (re-exported: the hot path below uses it)

MAX_MESSAGE_BYTES = 64 * 1024
_INT_ID_END = 10**MAX_ID_BYTES  # integer ids below this have at most MAX_ID_BYTES digits (core.ids)

IMPRESSION = 0x10
ACTION_BITS = {
    "impression": IMPRESSION,
    # a positive action implies exposure, so each also sets the impression bit
    "click": 0x01 | IMPRESSION,
    "like": 0x02 | IMPRESSION,
    "collect": 0x04 | IMPRESSION,
    "share": 0x08 | IMPRESSION,
}
POSITIVE_BITS = 0x0F
_POPCOUNT = bytes(bin(m & POSITIVE_BITS).count("1") for m in range(256))


class BadEvent(ValueError):
    """An event that breaks the schema; ``reason`` says why (it becomes the DLQ ``error`` header)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Event(NamedTuple):
    user_id: str
    item_id: str
    action: str
    ts: int | None

    @property
    def bits(self) -> int:
        return ACTION_BITS[self.action]


def score_of(mask: int) -> int:
    """Score (0..4) of a stored action mask."""
    return _POPCOUNT[mask & 0xFF]


def mask_for_score(score: int) -> int:
    """A mask whose score is ``score`` (used to write triples directly, e.g. in tests)."""
    if not 0 <= int(score) <= 4:
        raise ValueError(f"score must be in 0..4, got {score!r}")
    return IMPRESSION | ((1 << int(score)) - 1)


def canonical_id(value: Any, field: str) -> str:
    """Canonicalise an id by the rules of :mod:`core.ids` (a broken rule is a BadEvent)."""
    try:
        return _ids.canonical_id(value, field)
    except (TypeError, ValueError) as e:
        raise BadEvent(str(e)) from None


def validate_event(obj: Any) -> Event:
    """Validate a decoded JSON value; raise :class:`BadEvent` with the reason."""
    if not isinstance(obj, dict):
        raise BadEvent(f"event must be a JSON object, got {type(obj).__name__}")
    for name in ("user_id", "item_id", "action"):
        if name not in obj:
            raise BadEvent(f"missing field {name}")
    user_id = canonical_id(obj["user_id"], "user_id")
    item_id = canonical_id(obj["item_id"], "item_id")
    action = obj["action"]
    if action.__class__ is not str:
        raise BadEvent(f"action must be a string, got {type(action).__name__}")
    if action not in ACTION_BITS:
        raise BadEvent(f"unknown action {action[:64]!r} (expected one of {', '.join(ACTION_BITS)})")
    ts = obj.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
        raise BadEvent(f"ts must be an integer (ms since the epoch), got {type(ts).__name__}")
    return Event(user_id, item_id, action, ts)


def parse_event(raw: bytes | str) -> Event:
    """Decode and validate one message value (UTF-8 JSON object of at most 64 KiB)."""
    if raw is None:
        raise BadEvent("empty message (null value)")
    if isinstance(raw, (bytearray, memoryview)):
        raw = bytes(raw)
    elif isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise BadEvent(f"message is {len(raw)} bytes (max {MAX_MESSAGE_BYTES})")
    try:
        obj = _loads(raw)
    except _DecodeErrors as e:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as u:
            raise BadEvent(f"message is not UTF-8: {u.reason} at byte {u.start}") from None
        raise BadEvent(f"message is not JSON: {e}") from None
    return validate_event(obj)


def parse_scored(raw) -> tuple[str, str, int]:
    """``(user_id, item_id, action bits)`` of one message: the worker's hot path.

    Same rules and errors as :func:`parse_event`; the common case (string ids of ASCII
    characters, known action) is checked inline because it runs once per event.
    """
    if raw.__class__ is bytes and len(raw) <= MAX_MESSAGE_BYTES:
        try:
            obj = _loads(raw)
        except _DecodeErrors:
            obj = None
        if obj.__class__ is dict:
            u = obj.get("user_id")
            i = obj.get("item_id")
            if u.__class__ is int and 0 <= u < _INT_ID_END:  # an integer id: its decimal string
                u = str(u)
            if i.__class__ is int and 0 <= i < _INT_ID_END:
                i = str(i)
            bits = ACTION_BITS.get(obj.get("action")) if obj.get("action").__class__ is str else None
            ts = obj.get("ts")
            if (bits is not None and u.__class__ is str and i.__class__ is str and u.isascii()
                    and i.isascii() and 0 < len(u) <= MAX_ID_BYTES and 0 < len(i) <= MAX_ID_BYTES
                    and (ts is None or ts.__class__ is int)):
                return u, i, bits
    ev = parse_event(raw)  # the slow path decides, with the precise reason
    return ev.user_id, ev.item_id, ACTION_BITS[ev.action]

"""Event validation and scoring (DESIGN §1–2).

An event is one JSON object ``{"user_id", "item_id", "action", "ts"?}``. Scores are kept as a
bitmask of the *distinct* actions ever seen for a (user, item) pair; merging is a bitwise OR, so
a redelivered, duplicated or reordered event can never change a score.

    score(u, i) = popcount(mask(u, i) & POSITIVE_BITS)   # 0..4
"""

from __future__ import annotations

import json
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple

try:  # orjson is 2-3x faster and rejects lone surrogates; json is the fallback
    import orjson

    _loads = orjson.loads
    # orjson.JSONDecodeError is a json.JSONDecodeError: this also covers the exact re-parse below
    _DecodeErrors: tuple = (json.JSONDecodeError, RecursionError)
except ImportError:  # pragma: no cover
    _loads = json.loads
    _DecodeErrors = (json.JSONDecodeError, RecursionError)

from mcrecall.core import ids as _ids  # the one place for the id rules
from mcrecall.core.ids import MAX_ID_BYTES

MAX_MESSAGE_BYTES = 64 * 1024

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
    """Canonicalise an id by the rules of :mod:`mcrecall.core.ids` (a broken rule is a BadEvent)."""
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
        obj = _loads_exact(raw)
    except _DecodeErrors as e:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as u:
            raise BadEvent(f"message is not UTF-8: {u.reason} at byte {u.start}") from None
        raise BadEvent(f"message is not JSON: {e}") from None
    return validate_event(obj)


def _refuse_constant(name: str):
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _loads_exact(raw: bytes) -> Any:
    """Decode JSON like orjson, except that integers of any size stay exact integers.

    orjson turns an integer literal outside [-2**63, 2**64) into a float, which would make an id
    of 2**70 "a float". So when an id or ``ts`` comes back as a float, the message is decoded
    again by the standard library, which keeps integers exact (its NaN and Infinity extensions
    refused); a real float (``1.5``, ``1e3``) stays a float and is rejected as before.
    """
    obj = _loads(raw)
    if obj.__class__ is dict and float in (obj.get("user_id").__class__, obj.get("item_id").__class__,
                                           obj.get("ts").__class__):
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        try:
            obj = json.loads(text, parse_constant=_refuse_constant)
        except ValueError as e:  # e.g. an integer beyond Python's digit limit for int(str)
            raise json.JSONDecodeError(str(e), text, 0) from None
    return obj


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
            bits = ACTION_BITS.get(obj.get("action")) if obj.get("action").__class__ is str else None
            ts = obj.get("ts")
            # orjson's integers are below 2**64 (20 digits): a non-negative one is its decimal string
            if u.__class__ is int and u >= 0:
                u = str(u)
            if i.__class__ is int and i >= 0:
                i = str(i)
            if (bits is not None and u.__class__ is str and i.__class__ is str and u.isascii()
                    and i.isascii() and 0 < len(u) <= MAX_ID_BYTES and 0 < len(i) <= MAX_ID_BYTES
                    and (ts is None or ts.__class__ is int)):
                return u, i, bits
    ev = parse_event(raw)  # the slow path decides, with the precise reason
    return ev.user_id, ev.item_id, ACTION_BITS[ev.action]


_USER_ID, _ITEM_ID, _ACTION = itemgetter("user_id"), itemgetter("item_id"), itemgetter("action")
_TS_TYPES = frozenset((int, type(None)))
_GROUP = 1024  # messages decoded together; one bad message sends only its group one by one


def parse_scored_many(raws: list[bytes]) -> tuple[list[str], list[str], list[int], list[tuple[int, str]]]:
    """:func:`parse_scored` of many messages: ``(user_ids, item_ids, bits, bad)``.

    ``user_ids``, ``item_ids`` and ``bits`` hold the good messages in their order; ``bad`` the
    ``(position in raws, reason)`` of each bad one. Same rules, results and reasons as calling
    :func:`parse_scored` on each, but a group of messages that are all in the common form
    (string ids of ASCII characters or integer ids, a known action, ``ts`` absent or an integer)
    is checked with C-level passes over the group instead of Python code per message.
    """
    users: list[str] = []
    items: list[str] = []
    bits: list[int] = []
    bad: list[tuple[int, str]] = []
    for start in range(0, len(raws), _GROUP):
        group = raws[start:start + _GROUP]
        got = _scored_group(group)
        if got is not None:
            users += got[0]
            items += got[1]
            bits += got[2]
            continue
        for k, raw in enumerate(group, start):  # at least one exception inside: one by one
            try:
                u, i, b = parse_scored(raw)
            except BadEvent as e:
                bad.append((k, e.reason))
                continue
            users.append(u)
            items.append(i)
            bits.append(b)
    return users, items, bits, bad


def _scored_group(group: list[bytes]):
    """``(user_ids, item_ids, bits)`` if every message of ``group`` is a good event in the
    common form; None if any is not (then each is looked at on its own)."""
    # the types first: a null value (a tombstone) has no len()
    if not group or set(map(type, group)) != {bytes} or max(map(len, group)) > MAX_MESSAGE_BYTES:
        return None
    try:
        objs = list(map(_loads, group))
        users = list(map(_USER_ID, objs))  # a non-object or a missing field raises here
        items = list(map(_ITEM_ID, objs))
        bits = list(map(ACTION_BITS.__getitem__, map(_ACTION, objs)))
    except (*_DecodeErrors, KeyError, TypeError):
        return None
    if not set(map(type, map(dict.get, objs, repeat("ts")))) <= _TS_TYPES:
        return None
    users = _common_ids(users)
    items = _common_ids(items) if users is not None else None
    if items is None:
        return None
    return users, items, bits


def _common_ids(values: list):
    """The canonical ids if every value is an ASCII string of 1..128 characters or an integer
    >= 0 (orjson's integers are below 2**64); None otherwise."""
    types = set(map(type, values))
    if types != {str}:
        if not types <= {str, int}:
            return None
        values = list(map(str, values))  # str(s) is s itself; str(n) the decimal string
        if any(map(str.startswith, values, repeat("-"))):
            return None  # a negative integer (or a string id starting with "-": decided one by one)
    if (not all(map(str.isascii, values)) or min(map(len, values)) == 0
            or max(map(len, values)) > MAX_ID_BYTES):
        return None
    return values

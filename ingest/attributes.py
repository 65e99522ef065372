"""Attribute events (DESIGN §1a): what an item or a user *is*, as a set of tokens.

A message without ``action`` and with ``attributes`` describes one entity::

    {"item_id": ID, "attributes": {NAME: VALUE, ...}, "ts": ...}
    {"user_id": ID, "attributes": {NAME: VALUE, ...}, "ts": ...}

VALUE is a string, an integer or a list of them; each value becomes one token ``NAME=VALUE``
(an integer by its decimal string). Names are 1..64 UTF-8 bytes; a message has at most 64
tokens. A message REPLACES the entity's whole attribute set (an empty object clears it); the
stored set is the one of the message with the largest version

    version = (ts, partition, offset, tokens)     # ts absent: below every ts

so redelivered and reordered messages never change the outcome (the tokens only break a tie
between two different messages at the same coordinates, e.g. two backfilled files).
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

from mcrecall.core import ids as _ids
from mcrecall.ingest.events import MAX_MESSAGE_BYTES, BadEvent, _DecodeErrors, _loads_exact

MAX_NAME_BYTES = 64
MAX_TOKENS = 64
NO_TS = -(1 << 63)  # the ts of a message without one: older than any ts
FILE_PARTITION = -1  # the partition of a backfilled line (its offset: the line number)
KINDS = ("item", "user")

_VERSION = struct.Struct(">qiq")  # ts, partition, offset (signed: sorts as numbers after the flip)


class BadAttributes(ValueError):
    """An attribute message that breaks the schema; ``reason`` goes to the DLQ ``error`` header."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class AttributeUpdate(NamedTuple):
    """One validated attribute message: ``kind`` is ``"item"`` or ``"user"``; ``tokens`` are
    sorted and distinct."""

    kind: str
    entity_id: str
    tokens: tuple[str, ...]
    ts: int | None


def is_attribute_message(obj: Any) -> bool:
    """A JSON object with ``attributes`` and without ``action``."""
    return obj.__class__ is dict and "attributes" in obj and "action" not in obj


def _utf8_len(s: str, what: str) -> int:
    try:
        return len(s.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadAttributes(f"{what} is not valid UTF-8 (lone surrogate)") from None


def _value_text(name: str, v: Any) -> str:
    if v.__class__ is str:
        _utf8_len(v, f"value of attribute {name[:64]!r}")
        return v
    if isinstance(v, bool):
        raise BadAttributes(f"value of attribute {name[:64]!r} must be a string or an integer, got a boolean")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        raise BadAttributes(f"value of attribute {name[:64]!r} is a float (use a string or an integer)")
    if isinstance(v, dict):
        raise BadAttributes(f"value of attribute {name[:64]!r} is a nested object")
    raise BadAttributes(f"value of attribute {name[:64]!r} must be a string or an integer, got {type(v).__name__}")


def tokens_of(attributes: Any) -> tuple[str, ...]:
    """The sorted distinct tokens ``NAME=VALUE`` of an ``attributes`` object (BadAttributes)."""
    if not isinstance(attributes, dict):
        raise BadAttributes(f"attributes must be a JSON object, got {type(attributes).__name__}")
    out: set[str] = set()
    for name, value in attributes.items():
        n = _utf8_len(name, "attribute name")
        if not 1 <= n <= MAX_NAME_BYTES:
            raise BadAttributes(f"attribute name is {n} bytes (must be 1..{MAX_NAME_BYTES})")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, list):
                raise BadAttributes(f"value of attribute {name[:64]!r} is a nested list")
            out.add(f"{name}={_value_text(name, v)}")
            if len(out) > MAX_TOKENS:
                raise BadAttributes(f"more than {MAX_TOKENS} attribute tokens in one message")
    return tuple(sorted(out))


def validate_attributes(obj: Any) -> AttributeUpdate:
    """Validate a decoded attribute message (see :func:`is_attribute_message`)."""
    if not isinstance(obj, dict):
        raise BadAttributes(f"event must be a JSON object, got {type(obj).__name__}")
    has_u, has_i = "user_id" in obj, "item_id" in obj
    if has_u and has_i:
        raise BadAttributes("attribute message has both user_id and item_id (one entity per message)")
    if not (has_u or has_i):
        raise BadAttributes("attribute message has neither user_id nor item_id")
    field = "item_id" if has_i else "user_id"
    try:
        entity = _ids.canonical_id(obj[field], field)
    except (TypeError, ValueError) as e:
        raise BadAttributes(str(e)) from None
    ts = obj.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
        raise BadAttributes(f"ts must be an integer (ms since the epoch), got {type(ts).__name__}")
    if ts is not None and not -(1 << 63) < ts < (1 << 63):
        raise BadAttributes("ts is out of range (a signed 64-bit integer of ms)")
    return AttributeUpdate("item" if has_i else "user", entity, tokens_of(obj["attributes"]), ts)


def parse_attribute_message(raw: bytes) -> AttributeUpdate | None:
    """The update of one message if it is an attribute message (None if it is not one; then
    the event rules judge it). Raises :class:`BadAttributes` for a malformed one."""
    if raw is None or len(raw) > MAX_MESSAGE_BYTES:
        return None
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    try:
        obj = _loads_exact(bytes(raw))
    except (*_DecodeErrors, BadEvent):
        return None
    if not is_attribute_message(obj):
        return None
    return validate_attributes(obj)


def split_attributes(raws: list, bad: list[tuple[int, str]]):
    """Take the attribute messages out of the ``bad`` list of :func:`parse_scored_many`.

    An attribute message has no ``action``, so the event rules call it bad; this re-reads only
    those messages. Returns ``(updates, bad)``: ``updates`` = ``[(position, AttributeUpdate)]``,
    ``bad`` = the really bad ones (an attribute message's own reason where it is malformed).
    """
    updates, still_bad = [], []
    for k, reason in bad:
        try:
            up = parse_attribute_message(raws[k])
        except BadAttributes as e:
            still_bad.append((k, e.reason))
            continue
        if up is None:
            still_bad.append((k, reason))
        else:
            updates.append((k, up))
    return updates, still_bad


def version_key(ts: int | None, partition: int, offset: int) -> bytes:
    """The stored version of a message: bytes that sort like ``(ts, partition, offset)``."""
    t = NO_TS if ts is None else int(ts)
    v = _VERSION.pack(t, int(partition), int(offset))
    # flip the sign bits so that unsigned byte order is numeric order
    return bytes([v[0] ^ 0x80]) + v[1:8] + bytes([v[8] ^ 0x80]) + v[9:12] + bytes([v[12] ^ 0x80]) + v[13:]


VERSION_BYTES = _VERSION.size


def encode_tokens(tokens: tuple[str, ...]) -> bytes:
    """A token set as stored: a JSON array (any characters round-trip)."""
    return json.dumps(list(tokens), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_tokens(raw: bytes) -> tuple[str, ...]:
    return tuple(json.loads(bytes(raw).decode("utf-8")))

"""Checks of the client's arguments: a wrong type is a TypeError, a wrong value a ValueError."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from mcrecall.core.ids import MAX_ID_BYTES, canonical_id, check_k  # check_k: the one k rule

__all__ = ["MAX_ID_BYTES", "check_flag", "check_id", "check_ids", "check_k"]


def check_id(value, what: str = "user_id") -> str:
    """Canonical id (:mod:`mcrecall.core.ids`): a string of 1..128 UTF-8 bytes, or an integer >= 0
    as its decimal string. TypeError for a wrong type, ValueError for a wrong value."""
    if type(value) is str and value.isascii() and 0 < len(value) <= MAX_ID_BYTES:  # fast path
        return value
    return canonical_id(value, what)


def check_ids(values: Iterable, what: str = "item_ids") -> list[str]:
    """A list of canonical ids (a lone string is refused: it is not a list of ids)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{what} must be a list of ids, got {type(values).__name__} {values!r:.60}")
    return [check_id(v, f"{what}[{j}]") for j, v in enumerate(values)]


def check_flag(value, what: str) -> bool:
    if value is True or value is False:
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be True or False, got {value!r:.60}")
    return bool(value)

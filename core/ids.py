"""The id rules, in one place (DESIGN §1): every part imports them from here.

An external id (user or item) is

* a string of 1..128 UTF-8 bytes — any characters, quotes, backslashes, newlines, tabs and NUL
  included: an id is data, never code, and every store returns it exactly as it was given; or
* an integer >= 0 (of any size, also beyond 2**64), canonicalised to its decimal string, which
  then obeys the byte limit (at most 128 digits).

This module is a ground module: it imports nothing from ingest/, train/, serve/ or plugins/, so
each of them may import it.
"""

from __future__ import annotations

import numbers

MAX_ID_BYTES = 128
# 10**128 has 129 digits: the largest integer whose decimal string fits is 10**128 - 1.
_MAX_INT_ID = 10**MAX_ID_BYTES - 1


class InvalidIdError(ValueError):
    """An id with the right type but a value outside the rules (empty, too long, negative...)."""


def id_error(value) -> tuple[type[Exception], str] | None:
    """Why ``value`` is not an id, as ``(exception class, reason)``; None if it is one.

    The reason has no field name; :func:`canonical_id` prefixes it.
    """
    if isinstance(value, str):
        if value.isascii():  # the common case: bytes = characters
            n = len(value)
        else:
            try:
                n = len(value.encode("utf-8"))
            except UnicodeEncodeError:
                return InvalidIdError, "is not valid UTF-8 (lone surrogate)"
        if n == 0:
            return InvalidIdError, "is empty"
        if n > MAX_ID_BYTES:
            return InvalidIdError, f"is {n} bytes long (max {MAX_ID_BYTES})"
        return None
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # bool is an int in Python
        return TypeError, "must be a string or a non-negative integer, got a boolean"
    if isinstance(value, numbers.Integral):
        v = int(value)
        if v < 0:
            return InvalidIdError, f"must be a non-negative integer, got {v}"
        if v > _MAX_INT_ID:
            return InvalidIdError, (f"is an integer of more than {MAX_ID_BYTES} decimal digits "
                                    f"(max {MAX_ID_BYTES} bytes)")
        return None
    return TypeError, f"must be a string or a non-negative integer, got {type(value).__name__}"


def canonical_id(value, what: str = "id") -> str:
    """The canonical string of an id, or an exception saying which rule it breaks.

    Parameters
    ----------
    value : str or int
        A string of 1..:data:`MAX_ID_BYTES` UTF-8 bytes (returned unchanged), or an integer
        >= 0 (returned as its decimal string).
    what : str
        Name of the field in the error message (``user_id``, ``item_ids[3]``...).

    Returns
    -------
    str

    Raises
    ------
    TypeError
        Neither a string nor an integer (a boolean is not an integer here).
    InvalidIdError
        (a ``ValueError``) empty, over the byte limit, negative, or not encodable as UTF-8.
    """
    if type(value) is str and value.isascii() and 0 < len(value) <= MAX_ID_BYTES:  # fast path
        return value
    problem = id_error(value)
    if problem is not None:
        exc, reason = problem
        raise exc(f"{what} {reason}")
    if isinstance(value, str):
        return str(value)  # a str subclass (numpy.str_) becomes a plain str
    return str(int(value))


def check_stored_ids(ids, what: str = "item id") -> list[str]:
    """Validate already-canonical ids (strings only) for a store; a lone string is refused.

    Raises
    ------
    ValueError
        A non-string, or a string breaking the rules (the message names the id).
    """
    if isinstance(ids, (str, bytes)):
        raise ValueError("ids must be a sequence of strings, not a single string")
    out = list(ids)
    for i in out:
        if type(i) is str and i.isascii() and 0 < len(i) <= MAX_ID_BYTES:
            continue
        if not isinstance(i, str) or not i:
            raise ValueError(f"{what}s must be non-empty strings, got {i!r:.60}")
        problem = id_error(i)
        if problem is not None:
            raise ValueError(f"{what} {problem[1]}: {i[:40]!r}")
    return out


# -- k, the number of results asked of a search ------------------------------------------------
class InvalidKTypeError(TypeError, ValueError):
    """A ``k`` that is not an integer: a TypeError (the client's contract) that is also a
    ValueError (the vector stores' contract: every bad argument is a ValueError)."""


def check_k(k, max_k: int | None = None, limit_name: str = "[serve] max_k") -> int:
    """``k`` as int: an integer (``bool`` is not one) in 1..``max_k`` (no upper limit if None).

    The one k rule: the client checks it against ``[serve] max_k``, a vector store with no
    upper limit. Raises :class:`InvalidKTypeError` for a wrong type, ``ValueError`` for a
    value out of range; one line naming the limit.
    """
    if type(k) is int and 0 < k and (max_k is None or k <= max_k):  # fast path
        return k
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise InvalidKTypeError(f"k must be a positive integer, got {type(k).__name__} {k!r:.60}")
    if k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if max_k is not None and k > max_k:
        raise ValueError(f"k={k} is larger than the allowed maximum {max_k} ({limit_name})")
    return int(k)

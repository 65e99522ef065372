"""serve: the recall client (DESIGN §8).

>>> from mcrecall.serve import RecallClient, recall
>>> client = RecallClient.from_config()              # doctest: +SKIP
>>> client.recall("u42", k=10)                       # doctest: +SKIP
[Recalled(item_id='i7', score=3.21, source='model'), ...]
>>> recall("u42", 10)                                # doctest: +SKIP
"""

from __future__ import annotations

import threading

from mcrecall.serve.client import RecallClient
from mcrecall.serve.types import (
    NoModelError,
    RecallBatch,
    Recalled,
    RecallResult,
    UserVector,
    VectorStoreUnavailableError,
    VersionChurnError,
)

__all__ = [
    "NoModelError",
    "RecallBatch",
    "RecallClient",
    "RecallResult",
    "Recalled",
    "UserVector",
    "VectorStoreUnavailableError",
    "VersionChurnError",
    "default_client",
    "recall",
]

_default: RecallClient | None = None
_default_lock = threading.Lock()


def default_client() -> RecallClient:
    """The process-wide client of the default configuration, created on first use."""
    global _default
    client = _default
    if client is None:
        with _default_lock:
            if _default is None:
                _default = RecallClient.from_config()
            client = _default
    return client


def recall(user_id, k: int = 10, exclude_seen: bool = False) -> list[Recalled]:
    """``default_client().recall(user_id, k, exclude_seen)``."""
    return default_client().recall(user_id, k, exclude_seen=exclude_seen)

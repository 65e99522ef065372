"""Result types and errors of the recall client."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import numpy as np

#: ``Recalled.source`` values
SOURCE_MODEL = "model"  # the user's vector stored with the version
SOURCE_FOLD_IN = "fold_in"  # solved on the fly from triples newer than the version
SOURCE_POPULAR = "popular"  # no vector: the version's most popular items
SOURCE_ATTRIBUTES = "attributes"  # no interactions: the mean of its attribute tokens' embeddings


class Recalled(NamedTuple):
    """One recalled item.

    Attributes
    ----------
    item_id : str
        External item id.
    score : float
        The model's predicted interest (``model``, ``fold_in``). For ``source="popular"``: the
        item's popularity (distinct positive actions) as a share of the version's most popular
        item, in (0, 1] — not a model score.
    source : str
        ``"model"``, ``"fold_in"`` or ``"popular"``.
    """

    item_id: str
    score: float
    source: str


class RecallResult(NamedTuple):
    """A recall with the model version that answered it (every item is from that version)."""

    version: int
    items: list[Recalled]
    source: str


class RecallBatch(NamedTuple):
    """Recalls of several users, all answered by ONE model version (``results`` in the order
    the users were asked)."""

    version: int
    results: list[RecallResult]


class UserVector(NamedTuple):
    """The vector a recall would use for a user now (``vector`` is None for ``popular``)."""

    version: int
    vector: "np.ndarray | None"
    source: str


class NoModelError(RuntimeError):
    """No model version has been published yet (nothing to recall from)."""


class VectorStoreUnavailableError(ConnectionError):
    """The vector store did not answer (down, unreachable, or past its timeout)."""


class VersionChurnError(RuntimeError):
    """The current version kept changing and being dropped during one recall (retries spent)."""

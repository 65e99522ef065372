r"""One trainer interface: the factor models behind ``[train] objective``, resolved by name.

>>> from train.objectives import model_from_config          # doctest: +SKIP
>>> m = model_from_config(tc, (u, i, y), n_users, n_items, device="cpu")  # doctest: +SKIP
>>> m.warm_start(tc.seed, user_published, item_published)    # doctest: +SKIP
>>> history = m.fit(tc.epochs)                               # doctest: +SKIP
>>> user_vectors, item_vectors = m.published()               # doctest: +SKIP

Like the vector stores (:mod:`plugins`), a small abstract base (:class:`FactorModel`) with thin
implementations registered under names: ``squared`` and ``implicit`` are :class:`mcrecall.train.als.ALS`,
``bce`` is :class:`mcrecall.train.sgd.BCE`. What the trainer needs to know about an objective beyond the
model (its publish-gate figure, which triples give a row a vector, whether it has a closed-form
item step for ``refresh``) is one :class:`ObjectiveSpec` here, not a chain of ``if objective``.

Notation (docs/notation.md): a model learns internal factor tables U (users) and V (items); its
*published* vectors are what the version stores, with predicted interest
``score_scale · ⟨user, item⟩`` (cosine: on unit rows).

This module does not import torch: the models are loaded on first use.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .foldin import fold_in


@dataclass(frozen=True)
class ObjectiveSpec:
    """What the trainer knows about an objective besides its model.

    Attributes
    ----------
    model : ``"module:Class"`` of its :class:`FactorModel`.
    gate : (figure, direction, tolerance key) of the publish gate: the held-out figure compared
        with the current version's, ``"lower"`` or ``"higher"`` is better, and the ``[train]``
        key of the allowed regression.
    positives_only : only triples with score > 0 carry information for a row (so a user or
        item with score-0 triples only gets no vector).
    step : what one unit of ``[train] epochs`` is called in logs (``sweep`` / ``epoch``).
    item_step : it has a closed-form item fold-in step (``mcrecall refresh``, prequential).
    """

    model: str
    gate: tuple[str, str, str]
    positives_only: bool
    step: str
    item_step: bool


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "squared": ObjectiveSpec("mcrecall.train.als:ALS", ("rmse", "lower", "max_rmse_regression"),
                             positives_only=False, step="sweep", item_step=True),
    "implicit": ObjectiveSpec("mcrecall.train.als:ALS", ("recall@10", "higher", "max_recall_regression"),
                              positives_only=True, step="sweep", item_step=True),
    "bce": ObjectiveSpec("mcrecall.train.sgd:BCE", ("recall@10", "higher", "max_recall_regression"),
                         positives_only=True, step="epoch", item_step=False),
}


def available_objectives() -> list[str]:
    return sorted(OBJECTIVES)


def objective_spec(objective: str) -> ObjectiveSpec:
    """The :class:`ObjectiveSpec` registered under ``objective`` (ValueError if none)."""
    spec = OBJECTIVES.get(objective) if isinstance(objective, str) else None
    if spec is None:
        raise ValueError(f"unknown objective {objective!r}; available: "
                         f"{', '.join(available_objectives())}")
    return spec


def model_class(objective: str) -> type[FactorModel]:
    """The :class:`FactorModel` subclass that trains ``objective``."""
    module, _, attr = objective_spec(objective).model.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, FactorModel)):
        raise ValueError(f"objective {objective!r} resolves to {cls!r}, not a FactorModel")
    return cls


def model_from_config(tc, triples, n_users: int, n_items: int, *, device: str = "cpu",
                      objective: str | None = None, item_tokens=None, user_tokens=None) -> FactorModel:
    """A new, uninitialised model of ``objective`` (default ``tc.objective``) on ``triples``
    = (user_idx, item_idx, score), with its hyper-parameters from ``tc`` ([train]).

    ``item_tokens`` / ``user_tokens``: :class:`mcrecall.train.attributes.TokenMatrix` of the
    items / users for the hybrid model (None: ID embeddings only)."""
    objective = objective or tc.objective
    extra = {}
    if item_tokens is not None or user_tokens is not None:
        extra = {"item_tokens": item_tokens, "user_tokens": user_tokens}
    return model_class(objective).from_config(tc, triples, n_users, n_items, device=device,
                                              objective=objective, **extra)


def rows_with_data(idx: np.ndarray, score: np.ndarray, n: int, objective: str) -> np.ndarray:
    """(n,) bool: rows (users or items) that get a vector from these triples under ``objective``
    (any triple, or a positive one where the objective uses positives only)."""
    keep = score > 0 if objective_spec(objective).positives_only else np.ones(len(score), bool)
    return np.bincount(idx[keep], minlength=n) > 0


class FactorModel(ABC):
    """A matrix-factorisation model trained under one objective.

    The life of a model in a train run: :meth:`from_config` (data and hyper-parameters),
    :meth:`warm_start` (random rows, or a published version's where known), :meth:`fit`
    (``epochs`` sweeps or epochs, one progress line each), :meth:`loss`, :meth:`published`
    (the vectors a version stores), :meth:`foldin_section` (what the fold-in step,
    :func:`mcrecall.train.foldin.fold_in`, needs to solve one user against the published items).

    Attributes
    ----------
    objective : str, the registered name it trains.
    scale : float, the score scale s (prediction = s · ⟨user, item⟩).
    mu : float, the training mean folded into the published vectors (0 where none).
    """

    objective: str
    scale: float
    mu: float

    @classmethod
    @abstractmethod
    def from_config(cls, tc, triples, n_users: int, n_items: int, *, device: str = "cpu",
                    objective: str | None = None) -> FactorModel:
        """A model on ``triples`` = (user_idx, item_idx, score) with ``[train]``'s settings."""

    @abstractmethod
    def init_factors(self, seed: int, user_init=None, item_init=None) -> None:
        """Seeded random factors; rows of the *internal* tables ``user_init`` / ``item_init``
        without NaN replace them (train/warm.py)."""

    def internal_rows(self, user, item):
        """Published vectors → this model's internal rows (identity unless overridden)."""
        return user, item

    def warm_start(self, seed: int, user_published=None, item_published=None,
                   scale: float | None = None) -> None:
        """Start from a version's published vectors where known (NaN rows: random).

        ``scale``: a learnt score scale to continue from, for models that learn it by gradient
        (the ALS objectives refit theirs in closed form and ignore it).
        """
        self.init_factors(seed, *self.internal_rows(user_published, item_published))

    @abstractmethod
    def fit(self, epochs: int, log: Callable[[str], None] = print,
            on_sweep: Callable[[int, FactorModel], dict] | None = None) -> list[dict]:
        """Train ``epochs`` steps; return one record per step (``epoch``, ``seconds``, ``loss``
        and what ``on_sweep(epoch, model)`` adds)."""

    @abstractmethod
    def predict(self, u, i):
        """Predicted scores for index tensors ``u``, ``i`` (torch)."""

    @abstractmethod
    def loss(self) -> dict:
        """The objective's data term per training example after the last step (``loss``)."""

    @abstractmethod
    def published(self) -> tuple[np.ndarray, np.ndarray]:
        """(user vectors, item vectors), float32: the vectors a version stores."""

    @abstractmethod
    def hyperparameters(self) -> dict:
        """``reg`` and ``alpha`` (None where the objective has none) as the version records them."""

    @abstractmethod
    def foldin_section(self, item_vectors: np.ndarray, item_has: np.ndarray | None = None,
                       seed: int = 0) -> dict:
        """The version's ``foldin`` metadata for these published item vectors
        (:func:`mcrecall.train.foldin.foldin_section`, the one writer)."""

    def token_tables(self) -> dict:
        """``{"item" | "user": (vocab, embeddings)}`` of the hybrid model's token embeddings in
        the published space (empty: ID embeddings only; train/attributes.py)."""
        return {}

    @staticmethod
    def fold_in(item_vectors: np.ndarray, scores: np.ndarray, section: dict):
        """The fold-in step: one user's published vector from their items' published vectors
        and scores, under a ``foldin`` section (:func:`mcrecall.train.foldin.fold_in`; serve calls that
        function directly, without torch)."""
        return fold_in(item_vectors, scores, section)

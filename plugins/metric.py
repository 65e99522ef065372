"""The one place where model similarity meets index metric (DESIGN §5).

A model scores a (user, item) pair with either ``dot`` (⟨a, b⟩) or ``cosine``
(cos(a, b)); a vector index ranks by ``L2``, ``IP`` or ``COSINE``. For every
pair of the two, :class:`MetricReduction` says how item vectors and queries are
transformed before they reach an index (so that the index's own order equals
the model's order) and how the index's raw values are turned back into model
scores. Every backend goes through this class; none of them does its own math.

The reductions:

* ``dot`` through ``IP``: nothing to do.
* ``dot`` through ``L2`` or ``COSINE``: the standard inner-product-to-L2
  reduction. Each item ``b`` becomes ``[b, sqrt(M² - ‖b‖²)]`` (so every item has
  norm ``M``, the ``max_norm`` fixed when the version is created) and each query
  ``a`` becomes ``[a, 0]``. Then ``‖a' - b'‖² = ‖a‖² + M² - 2⟨a, b⟩`` and
  ``cos(a', b') = ⟨a, b⟩ / (‖a‖ M)``: both are monotone in ⟨a, b⟩ for a fixed
  query, and both invert exactly.
* ``cosine`` through any metric: unit-normalise items and queries; then
  ``IP = COSINE = cos`` and ``L2² = 2 - 2 cos``.

Raw values come from a backend in one of three *kinds*: ``"ip"`` (inner product
of the stored vectors), ``"sqeuclidean"`` (squared L2 distance) or ``"cosine"``
(cosine similarity of the stored vectors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

SIMILARITIES = ("dot", "cosine")
METRICS = ("L2", "IP", "COSINE")
RawKind = Literal["ip", "sqeuclidean", "cosine"]

# Relative slack when checking ‖b‖ <= max_norm: float32 norms computed by the
# caller and by us differ in the last bits.
_NORM_SLACK = 1e-5


# -- the model's score formula (the one place train, serve and the backends use) ------------
def unit_rows(x, eps: float = 1e-12):
    """``x`` with every row (last axis) scaled to unit length; rows shorter than ``eps`` are
    divided by ``eps``. NumPy arrays and torch tensors alike (torch: exactly
    ``torch.nn.functional.normalize``, so a gradient flows through it)."""
    if isinstance(x, np.ndarray):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def pair_scores(a, b, similarity: str, scale=1.0):
    r"""Predicted interest of paired rows: :math:`s\,\langle a, b\rangle` (``dot``) or
    :math:`s\,\cos(a, b)` (``cosine``), over the last axis (leading axes broadcast).

    The model's score formula, in one place: training's predictions and logits, the
    evaluation, the client's ``score`` and the backends' reference all call this (or
    :func:`cross_scores`, its all-pairs form). ``a`` and ``b`` are published (model-space)
    vectors; ``scale`` is the version's ``score_scale`` s (a float, or a tensor that takes a
    gradient). NumPy arrays or torch tensors.
    """
    if similarity == "cosine":
        a, b = unit_rows(a), unit_rows(b)
    return scale * (a * b).sum(-1)


def cross_scores(queries, items, similarity: str, scale=1.0):
    """All pairs of :func:`pair_scores`: ``(q, dim) x (n, dim) -> (q, n)``."""
    if similarity == "cosine":
        queries, items = unit_rows(queries), unit_rows(items)
    s = queries @ items.T
    return s if scale == 1.0 else scale * s


def normalize_metric(metric: str) -> str:
    """Return ``metric`` upper-cased, or raise ``ValueError`` if it is unknown."""
    if not isinstance(metric, str) or metric.upper() not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    return metric.upper()


def normalize_similarity(similarity: str) -> str:
    """Return ``similarity`` lower-cased, or raise ``ValueError`` if it is unknown."""
    if not isinstance(similarity, str) or similarity.lower() not in SIMILARITIES:
        raise ValueError(
            f"unknown similarity {similarity!r}; expected one of {', '.join(SIMILARITIES)}"
        )
    return similarity.lower()


def as_finite_matrix(vectors, dim: int, what: str = "vectors") -> np.ndarray:
    """Validate ``vectors`` as a finite ``(n, dim)`` float32 matrix.

    Parameters
    ----------
    vectors : array_like
        One vector of length ``dim`` or a matrix of shape ``(n, dim)``.
    dim : int
        The model dimension the vectors must have.
    what : str
        Name used in error messages.

    Returns
    -------
    numpy.ndarray
        A C-contiguous float32 array of shape ``(n, dim)``.

    Raises
    ------
    ValueError
        If the shape is wrong or any value is NaN or infinite.
    """
    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be numeric arrays: {e}") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{what} must have dimension {dim}, got shape {np.shape(vectors)}")
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"{what} contain NaN or infinite values (first at row {bad})")
    return np.ascontiguousarray(arr)


@dataclass(frozen=True)
class MetricReduction:
    """How one version's vectors are stored in an index and scores recovered.

    Parameters
    ----------
    similarity : {"dot", "cosine"}
        The model's score function.
    metric : {"L2", "IP", "COSINE"}
        The index metric.
    dim : int
        Model dimension (the stored dimension may be ``dim + 1``).
    max_norm : float or None
        ``M`` of the inner-product-to-L2 reduction. Required (and only used)
        for ``dot`` through ``L2`` or ``COSINE``.
    """

    similarity: str
    metric: str
    dim: int
    max_norm: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "similarity", normalize_similarity(self.similarity))
        object.__setattr__(self, "metric", normalize_metric(self.metric))
        if isinstance(self.dim, bool) or not isinstance(self.dim, (int, np.integer)) or self.dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {self.dim!r}")
        object.__setattr__(self, "dim", int(self.dim))
        if self.augmented:
            if self.max_norm is None:
                raise ValueError(
                    f"max_norm is required for similarity 'dot' through metric {self.metric} "
                    "(the largest item vector norm of the version)"
                )
            m = float(self.max_norm)
            if not math.isfinite(m) or m <= 0:
                raise ValueError(f"max_norm must be a positive finite number, got {self.max_norm!r}")
            object.__setattr__(self, "max_norm", m)
        elif self.max_norm is not None:
            m = float(self.max_norm)
            if not math.isfinite(m) or m <= 0:
                raise ValueError(f"max_norm must be a positive finite number, got {self.max_norm!r}")
            object.__setattr__(self, "max_norm", m)

    # -- shape -------------------------------------------------------------------------------
    @property
    def augmented(self) -> bool:
        """True when items get the extra ``sqrt(M² - ‖b‖²)`` component."""
        return self.similarity == "dot" and self.metric in ("L2", "COSINE")

    @property
    def stored_dim(self) -> int:
        """Dimension of the vectors the index holds."""
        return self.dim + 1 if self.augmented else self.dim

    # -- items -------------------------------------------------------------------------------
    def items(self, vectors) -> tuple[np.ndarray, np.ndarray]:
        """Transform model-space item vectors into index vectors.

        Parameters
        ----------
        vectors : array_like, shape (n, dim)

        Returns
        -------
        stored : numpy.ndarray, shape (n, stored_dim), float32
            What the index stores.
        norms : numpy.ndarray, shape (n,), float32
            ‖b‖ of each model vector; with ``stored`` it restores ``b``
            (:meth:`restore_items`), since cosine storage drops the norm.

        Raises
        ------
        ValueError
            Wrong dimension, NaN/inf, a zero vector under cosine similarity, or
            (dot through L2/COSINE) a norm above ``max_norm``.
        """
        b = as_finite_matrix(vectors, self.dim, "item vectors")
        norms = np.linalg.norm(b.astype(np.float64), axis=1)
        if self.similarity == "cosine":
            if (norms == 0).any():
                raise ValueError("item vectors must be non-zero under cosine similarity")
            return (b / norms[:, None]).astype(np.float32), norms.astype(np.float32)
        if self.augmented:
            m = self.max_norm
            over = norms > m * (1 + _NORM_SLACK)
            if over.any():
                i = int(np.flatnonzero(over)[0])
                raise ValueError(
                    f"item vector norm {norms[i]:.6g} (row {i}) exceeds max_norm {m:.6g} "
                    "given at create_version"
                )
            extra = np.sqrt(np.clip(m * m - norms * norms, 0.0, None))
            stored = np.concatenate([b, extra[:, None].astype(np.float32)], axis=1)
            return np.ascontiguousarray(stored), norms.astype(np.float32)
        if self.max_norm is not None and (norms > self.max_norm * (1 + _NORM_SLACK)).any():
            i = int(np.flatnonzero(norms > self.max_norm * (1 + _NORM_SLACK))[0])
            raise ValueError(
                f"item vector norm {norms[i]:.6g} (row {i}) exceeds max_norm {self.max_norm:.6g}"
            )
        return b, norms.astype(np.float32)

    def restore_items(self, stored: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """Invert :meth:`items`: model-space vectors from stored ones."""
        stored = np.asarray(stored, dtype=np.float32).reshape(-1, self.stored_dim)
        b = stored[:, : self.dim]
        if self.similarity == "cosine":
            b = b * np.asarray(norms, dtype=np.float32).reshape(-1, 1)
        return np.ascontiguousarray(b, dtype=np.float32)

    # -- queries -----------------------------------------------------------------------------
    def queries(self, vectors) -> tuple[np.ndarray, np.ndarray]:
        """Transform model-space queries into index queries.

        Returns
        -------
        stored : numpy.ndarray, shape (q, stored_dim), float32
        norms : numpy.ndarray, shape (q,), float64
            ‖a‖, needed by :meth:`scores`.

        Raises
        ------
        ValueError
            Wrong dimension, NaN/inf, or a zero query where a direction is needed.
        """
        a = as_finite_matrix(vectors, self.dim, "query vectors")
        norms = np.linalg.norm(a.astype(np.float64), axis=1)
        if (self.similarity == "cosine" or self.metric == "COSINE") and (norms == 0).any():
            raise ValueError(
                f"a zero query vector has no direction (similarity {self.similarity}, "
                f"metric {self.metric})"
            )
        if self.similarity == "cosine":
            return (a / norms[:, None]).astype(np.float32), norms
        if self.augmented:
            a = np.concatenate([a, np.zeros((a.shape[0], 1), np.float32)], axis=1)
        return np.ascontiguousarray(a), norms

    # -- scores ------------------------------------------------------------------------------
    def scores(self, raw, kind: RawKind, query_norms) -> np.ndarray:
        """Convert raw index values into model scores.

        Parameters
        ----------
        raw : array_like, shape (q, k)
            Values from the index, for stored queries from :meth:`queries`.
        kind : {"ip", "sqeuclidean", "cosine"}
            What ``raw`` is.
        query_norms : array_like, shape (q,)
            Second output of :meth:`queries`.

        Returns
        -------
        numpy.ndarray, shape (q, k), float64
            ⟨a, b⟩ for ``dot``, cos(a, b) for ``cosine``.
        """
        raw = np.asarray(raw, dtype=np.float64)
        qn = np.asarray(query_norms, dtype=np.float64).reshape(-1, 1)
        if kind not in ("ip", "sqeuclidean", "cosine"):
            raise ValueError(f"unknown raw value kind {kind!r}")
        if self.similarity == "cosine":
            # Stored vectors are unit length: ip == cosine, ‖a-b‖² = 2 - 2 cos.
            return 1.0 - raw / 2.0 if kind == "sqeuclidean" else raw
        if not self.augmented:  # dot through IP
            if kind != "ip":
                raise ValueError(f"dot through IP expects raw inner products, got {kind!r}")
            return raw
        m = self.max_norm
        if kind == "sqeuclidean":
            return (qn * qn + m * m - raw) / 2.0
        if kind == "cosine":
            return raw * qn * m
        # kind == "ip" of the augmented vectors is ⟨a, b⟩ itself (the query's extra is 0).
        return raw

    # -- reference ---------------------------------------------------------------------------
    def model_scores(self, queries, items) -> np.ndarray:
        """Brute-force model scores of model-space queries × items (float64)."""
        a = np.asarray(queries, dtype=np.float64).reshape(-1, self.dim)
        b = np.asarray(items, dtype=np.float64).reshape(-1, self.dim)
        return cross_scores(a, b, self.similarity)


# -- exact search (the reference every backend falls back to) ---------------------------------
def top_k(values: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Column indices of the top-k of each row of ``values``, best first."""
    v = -values if largest else values
    k = min(k, v.shape[1])
    if k < v.shape[1]:
        part = np.argpartition(v, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(v.shape[1]), v.shape).copy()
    order = np.argsort(np.take_along_axis(v, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def exact_top_k(metric: str, queries: np.ndarray, stored: np.ndarray, k: int):
    """Exact top-k of stored (reduced) queries against stored (reduced) items, by ``metric``.

    Returns
    -------
    labels : numpy.ndarray, shape (q, min(k, n)), int64
        Row numbers of ``stored``, best first.
    raw : numpy.ndarray, shape (q, min(k, n))
        The metric's raw values of those rows (for :meth:`MetricReduction.scores`).
    kind : {"ip", "sqeuclidean", "cosine"}
    """
    metric = normalize_metric(metric)
    q = np.asarray(queries, dtype=np.float32)
    x = np.asarray(stored, dtype=np.float32)
    if metric == "COSINE":
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        raw = qn @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
        labels, kind = top_k(raw, k, largest=True), "cosine"
    elif metric == "IP":
        raw = q @ x.T
        labels, kind = top_k(raw, k, largest=True), "ip"
    else:
        raw = (np.einsum("ij,ij->i", q, q)[:, None] + np.einsum("ij,ij->i", x, x)[None, :]
               - 2.0 * (q @ x.T))
        labels, kind = top_k(raw, k, largest=False), "sqeuclidean"
    return labels.astype(np.int64), np.take_along_axis(raw, labels, axis=1), kind


# -- recall from scores and from popularity (the one top-k rule: serve, models, prequential) ---
def ranked(scores, k: int, excluded=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact top-k of every row of a score matrix, best first, leaving out excluded columns.

    The in-process form of a vector store's ``search_batch`` (what the ``exact`` backend
    answers): each row gets exactly ``min(k, columns not excluded)`` columns.

    Parameters
    ----------
    scores : array_like, shape (q, n) or (n,)
        Model scores (higher is better), e.g. from :func:`cross_scores`.
    k : int
        How many columns per row (>= 1).
    excluded : array_like of bool, shape (q, n) or (n,), optional
        True where a column may not be returned for that row (seen items, items without a
        vector).

    Returns
    -------
    list of (columns, values), one per row: int64 column numbers and their scores.
    """
    s = np.array(scores, dtype=np.float64, ndmin=2)
    if excluded is not None:
        s[np.broadcast_to(np.asarray(excluded, dtype=bool).reshape((-1, s.shape[1])), s.shape)] = -np.inf
    labels = top_k(s, k, largest=True)
    out = []
    for row, lab in zip(s, labels, strict=True):
        v = row[lab]
        keep = v > -np.inf
        out.append((lab[keep].astype(np.int64), v[keep]))
    return out


def usable_vector(x):
    """``x`` if it can rank items (not None, finite, not all zero), else None: a user without
    one is served the popular items (DESIGN §8)."""
    if x is None or not np.all(np.isfinite(x)) or not np.any(x):
        return None
    return x


def popular_fallback(popular, k: int, seen=(), key=None) -> list:
    """The first ``k`` entries of ``popular`` (best first) that are not in ``seen``: what a user
    without a vector is recalled (DESIGN §8's ``popular`` source).

    Parameters
    ----------
    popular : iterable
        Items (ids, indices, or (id, score) pairs), most popular first.
    k : int
    seen : container
        Items to leave out (``key(entry)`` is looked up in it).
    key : callable, optional
        What of an entry ``seen`` holds (default: the entry itself).
    """
    out = []
    if k <= 0:
        return out
    for entry in popular:
        if (entry if key is None else key(entry)) not in seen:
            out.append(entry)
            if len(out) == k:
                break
    return out

"""The model as a library: fit, recommend, score, save and load in a notebook, no pipeline.

>>> from mcrecall.models import MatrixFactorization                     # doctest: +SKIP
>>> model = MatrixFactorization(objective="implicit", dim=32, epochs=10)  # doctest: +SKIP
>>> model.fit(["u1", "u1", "u2"], ["a", "b", "a"], [4, 1, 2])             # doctest: +SKIP
>>> model.recommend(["u2"], k=5)   # [[("b", 0.41)]]: (item id, score), best first  # doctest: +SKIP
>>> model.save("model.npz"); MatrixFactorization.load("model.npz")      # doctest: +SKIP

:class:`MatrixFactorization` runs the trainer's own code: the keyword arguments are the
``[train]`` keys, validated by :mod:`mcrecall.core.config`; :meth:`~MatrixFactorization.fit` is
:func:`mcrecall.train.fit.fit_model` with the :class:`~mcrecall.train.objectives.FactorModel`
of the objective (ALS for ``implicit`` and ``squared``, SGD for ``bce``); the vectors are the
model's ``published()`` ones, those a version stores; the scores and the top-k are those of
:mod:`mcrecall.plugins.metric`, which the recall client and the vector stores use. So the same
data and settings give the same vectors as ``mcrecall train`` (minus its hold-out, gate and
refit: the library fits once on every triple it is given), and the scores equal what
``RecallClient.recall`` would return for those vectors.

Layers: this module imports core, train and plugins only, and none of Kafka, LMDB or Milvus
(tests/test_models.py checks ``sys.modules``); no part of the pipeline imports it.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

import mcrecall
from mcrecall.core.config import Config, TrainConfig, load_config
from mcrecall.core.ids import canonical_id
from mcrecall.core.ids import check_k as _check_k
from mcrecall.plugins.metric import cross_scores, pair_scores, popular_fallback, ranked

FORMAT = "mcrecall.models.MatrixFactorization"
FORMAT_VERSION = 1
MAX_SCORE = 4.0  # scores are 0..4 (DESIGN §2)
_BATCH_CELLS = 1 << 24  # scores per matrix product in recommend/similar_items (128 MiB of float64)
_ORIGIN = "MatrixFactorization(...)"


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted model was called before :meth:`MatrixFactorization.fit`
    (a ValueError and an AttributeError, as scikit-learn's)."""


@dataclass
class _Triples:
    """Triples in the shape :func:`mcrecall.train.fit.fit_model` reads (a snapshot's)."""

    user_idx: np.ndarray  # int32 (n,), into user_ids
    item_idx: np.ndarray  # int32 (n,), into item_ids
    score: np.ndarray  # float32 (n,), 0..4
    user_ids: list[str]
    item_ids: list[str]
    item_tokens: dict | None = None  # {row: tokens} (the hybrid model), as a snapshot holds them
    user_tokens: dict | None = None

    def __len__(self) -> int:
        return len(self.score)


def _train_config(objective, keys: dict, base: Config | None = None) -> TrainConfig:
    """``[train]`` from keyword arguments, through the configuration's own checks."""
    base = load_config(environ={}) if base is None else base
    return base.with_overrides(origin=_ORIGIN, train={"objective": objective, **keys}).train


def _canonical_ids(ids, what: str) -> list[str]:
    """Canonical id strings (core/ids.py) of a sequence; a lone id is refused."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"{what} must be a sequence of ids, got {type(ids).__name__}")
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":  # a matrix's row numbers: fast
        if ids.size and ids.min() < 0:
            raise ValueError(f"{what} must be non-negative integers, got {int(ids.min())}")
        return [str(v) for v in ids.tolist()]
    out = []
    for n, v in enumerate(ids):
        try:
            out.append(canonical_id(v))
        except (TypeError, ValueError) as e:
            raise type(e)(f"{what}[{n}]: {e}") from None
    return out


def _scores(scores, n: int) -> np.ndarray:
    try:
        y = np.asarray(scores, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise TypeError(f"scores must be numbers in 0..4: {e}") from None
    if len(y) != n:
        raise ValueError(f"user_ids, item_ids and scores must have the same length, got {n} ids "
                         f"and {len(y)} scores")
    bad = ~(np.isfinite(y) & (y >= 0) & (y <= MAX_SCORE))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(f"scores must be in 0..4 (DESIGN §2), got {y[j]!r} at position {j}")
    return y.astype(np.float32)


def _index(ids: list[str], extra: list[str] = ()) -> tuple[list[str], np.ndarray]:
    """(sorted distinct ids of ``ids`` and ``extra``, the index of each of ``ids``): the model's
    rows do not depend on the order of the input. ``extra``: ids with attributes only."""
    uniq = sorted(set(ids).union(extra))
    where = {x: j for j, x in enumerate(uniq)}
    return uniq, np.fromiter((where[x] for x in ids), dtype=np.int64, count=len(ids))


def _encode_ids(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of every id, concatenated, and the (n + 1,) offsets: NumPy's fixed-width
    string dtypes drop trailing NUL characters, a blob keeps every id exactly."""
    raw = [i.encode("utf-8") for i in ids]
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in raw], out=offsets[1:])
    return np.frombuffer(b"".join(raw), dtype=np.uint8).copy(), offsets


def _decode_ids(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    data = blob.tobytes()
    return [data[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(),
                                                       strict=True)]


def _batch_rows(n_items: int) -> int:
    """Queries per matrix product: memory stays near :data:`_BATCH_CELLS` scores whatever the
    catalogue's size."""
    return max(1, min(1024, _BATCH_CELLS // max(n_items, 1)))


def _is_one_id(x) -> bool:
    return isinstance(x, (str, numbers.Integral)) and not isinstance(x, bool)


class MatrixFactorization:
    """A matrix-factorisation recall model, fitted in process (the pipeline's model as a library).

    Parameters
    ----------
    objective : {"implicit", "squared", "bce"}, default "implicit"
        ``[train] objective``: ``implicit`` (weighted ALS on confidence ``1 + alpha * score``,
        the best-ranking default), ``squared`` (ALS on the observed scores: the original
        matrix-completion objective, docs/design.md) or ``bce`` (SGD on positives and sampled
        negatives).
    **train_keys
        Any ``[train]`` key, same names, defaults and range checks as the configuration file
        (docs/operations.md): ``dim``, ``epochs``, ``reg``, ``alpha``, ``similarity``
        (``dot`` | ``cosine``), ``solver`` (``cg`` | ``cholesky``), ``cg_steps``, ``seed``,
        ``device`` (``auto`` | ``cpu`` | ``cuda[:N]``), ``threads``, ``negatives``, ``lr``,
        ``batch_size``, ``reg_bce``. The keys of the pipeline's run around the fit
        (``holdout_fraction``, ``max_rmse_regression``, ``max_recall_regression``,
        ``popular_items``, ``eval_users``, ``warm_start``, ``refit_sweeps``,
        ``compare_squared_sweeps``) are accepted, so a ``[train]`` table can be pasted, and
        unused. An unknown key or a value out of range is a ``ValueError``
        (:class:`mcrecall.core.config.ConfigError`) naming it.

    Notes
    -----
    Ids follow the pipeline's rule (core/ids.py): strings of 1..128 UTF-8 bytes, or integers
    >= 0, which become their decimal strings. Every id the model returns is a string.

    A user or item has a vector when it has a triple the objective learns from (``implicit``
    and ``bce``: a score > 0; ``squared``: any triple), as in a published version; the others
    are unknown to :meth:`recommend` and :meth:`score`, as they are to the recall client.

    ``threads > 0`` sets torch's thread count for the process (``torch.set_num_threads``).
    """

    def __init__(self, objective: str = "implicit", **train_keys):
        self._tc = _train_config(objective, train_keys)
        self._state: dict | None = None

    @classmethod
    def from_config(cls, config: str | os.PathLike | Config | None = None,
                    **train_keys) -> MatrixFactorization:
        """A model with the ``[train]`` table of a configuration (a TOML path, a
        :class:`~mcrecall.core.config.Config`, or None for ``$MCRECALL_CONFIG`` / the defaults),
        ``train_keys`` overriding it."""
        cfg = config if isinstance(config, Config) else load_config(config)
        self = cls.__new__(cls)
        self._tc = _train_config(train_keys.pop("objective", cfg.train.objective), train_keys, cfg)
        self._state = None
        return self

    # ------------------------------------------------------------------ settings
    @property
    def config(self) -> TrainConfig:
        """The validated ``[train]`` settings (:class:`mcrecall.core.config.TrainConfig`)."""
        return self._tc

    def get_params(self) -> dict:
        """Every ``[train]`` key and its value (``MatrixFactorization(**m.get_params())`` is a
        model with the same settings)."""
        return asdict(self._tc)

    def __repr__(self) -> str:
        tc = self._tc
        fitted = (f", {len(self.user_ids)} users x {len(self.item_ids)} items"
                  if self._state is not None else ", not fitted")
        return (f"MatrixFactorization(objective={tc.objective!r}, dim={tc.dim}, "
                f"epochs={tc.epochs}, similarity={tc.similarity!r}{fitted})")

    # ------------------------------------------------------------------ fit
    def fit(self, user_ids, item_ids=None, scores=None, *, item_attributes=None, user_attributes=None,
            log: Callable[[str], None] | None = None) -> MatrixFactorization:
        """Fit on scored (user, item) pairs; returns ``self``.

        Parameters
        ----------
        user_ids, item_ids, scores : sequences of equal length
            One triple per position: raw ids (strings or integers >= 0, core/ids.py) and a
            score in 0..4 (DESIGN §2; 0 = seen and not engaged). Or pass one argument, a sparse
            matrix (``scipy.sparse`` or anything with ``.tocoo()``): rows are users, columns
            items, stored values scores; the ids are then the row and column numbers (as
            strings), and a stored 0 is a score-0 triple, an absent entry no triple.
        item_attributes, user_attributes : dict, optional
            ``{id: {NAME: VALUE, ...}}`` with the attribute events' rules (DESIGN §1a: VALUE a
            string, an integer or a list of them; each becomes a token ``NAME=VALUE``). With
            ``[train] attributes`` (default true) every vector is its ID embedding plus the mean
            of its tokens' embeddings (the hybrid model, docs/attributes.md); an id with
            attributes and no triples gets a vector from its attributes alone, and two such ids
            with the same tokens get the same vector. Tokens held by fewer than
            ``min_token_count`` entities are dropped.
        log : callable, optional
            Receives the trainer's progress line per sweep (epoch); silent by default.

        Raises
        ------
        ValueError / TypeError
            A bad id (naming its position), a score outside 0..4, lengths that differ, a
            (user, item) pair given twice, or no triples.
        """
        if item_ids is None and scores is None:
            user_ids, item_ids, scores = self._from_matrix(user_ids)
        elif item_ids is None or scores is None:
            raise TypeError("fit takes (user_ids, item_ids, scores) or one sparse matrix")
        users = _canonical_ids(user_ids, "user_ids")
        items = _canonical_ids(item_ids, "item_ids")
        if len(users) != len(items):
            raise ValueError(f"user_ids and item_ids must have the same length, got {len(users)} "
                             f"and {len(items)}")
        y = _scores(scores, len(users))
        if not len(y):
            raise ValueError("fit needs at least one (user, item, score) triple")
        user_list, u = _index(users, _canonical_ids(list(user_attributes or ()), "user_attributes"))
        item_list, i = _index(items, _canonical_ids(list(item_attributes or ()), "item_attributes"))
        key = u * len(item_list) + i
        order = np.argsort(key, kind="stable")  # one canonical triple order, whatever the input's
        key, u, i, y = key[order], u[order], i[order], y[order]
        dup = np.flatnonzero(key[1:] == key[:-1])
        if len(dup):
            j = int(dup[0])
            raise ValueError(f"the pair (user {user_list[u[j]]!r}, item {item_list[i[j]]!r}) is given "
                             "more than once; give one score per pair (the pipeline keeps one)")
        itype = np.int32 if max(len(user_list), len(item_list)) < 2**31 else np.int64
        from mcrecall.train.attributes import token_rows

        user_attrs = {canonical_id(k): v for k, v in (user_attributes or {}).items()}
        item_attrs = {canonical_id(k): v for k, v in (item_attributes or {}).items()}
        t = _Triples(u.astype(itype), i.astype(itype), y, user_list, item_list,
                     item_tokens=token_rows(item_list, item_attrs) or None,
                     user_tokens=token_rows(user_list, user_attrs) or None)
        self._state = self._train(t, log or (lambda s: None))
        return self

    @staticmethod
    def _from_matrix(matrix):
        if not hasattr(matrix, "tocoo"):
            raise TypeError("fit takes (user_ids, item_ids, scores) or one sparse matrix (an object "
                            f"with .tocoo(), e.g. scipy.sparse), got {type(matrix).__name__}")
        coo = matrix.tocoo()
        return (np.asarray(coo.row, dtype=np.int64), np.asarray(coo.col, dtype=np.int64),
                np.asarray(coo.data))

    def _train(self, t: _Triples, log) -> dict:
        import torch  # lazy: constructing and loading a model needs no torch

        from mcrecall.train.attributes import snapshot_tokens
        from mcrecall.train.evaluate import popularity
        from mcrecall.train.fit import fit_model, resolve_device
        from mcrecall.train.objectives import rows_with_data

        tc = self._tc
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        device = resolve_device(tc.device)
        model, history, seconds = fit_model(t, tc, device=device, train_mask=np.ones(len(t), bool),
                                            log=log)
        U, V = model.published()
        user_has = rows_with_data(t.user_idx, t.score, len(t.user_ids), tc.objective)
        item_has = rows_with_data(t.item_idx, t.score, len(t.item_ids), tc.objective)
        for kind, has in (("user", user_has), ("item", item_has)):  # an attribute part is a vector
            tokens = snapshot_tokens(t, tc, kind)
            if tokens is not None:
                has |= tokens.has
        meta = {"scale": float(model.scale), "mu": float(getattr(model, "mu", 0.0)),
                "foldin": model.foldin_section(V, item_has, tc.seed),
                "training": {"seconds": seconds, "device": device, "history": history}}
        return self._make_state(t.user_ids, t.item_ids, np.asarray(U, np.float32),
                                np.asarray(V, np.float32), user_has, item_has,
                                t.user_idx.astype(np.int64), t.item_idx.astype(np.int64), t.score,
                                popularity(t.item_idx, t.score, len(t.item_ids)), meta)

    @staticmethod
    def _make_state(user_ids, item_ids, U, V, user_has, item_has, tu, ti, ty, pop, meta) -> dict:
        """Everything recommend/score/save read, with the lookups built once."""
        n_users = len(user_ids)
        order = np.argsort(tu, kind="stable")
        seen_ptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(tu, minlength=n_users), out=seen_ptr[1:])
        top = pop.max() if len(pop) else 0.0
        # the client's popular source: most popular first, popularity as a share of the top item's
        cand = np.flatnonzero(item_has)
        pop_order = cand[np.argsort(-pop[cand], kind="stable")].tolist()
        return {
            "user_ids": user_ids, "item_ids": item_ids, "U": U, "V": V,
            "user_has": user_has, "item_has": item_has, "tu": tu, "ti": ti, "ty": ty, "pop": pop,
            "meta": meta, "seen_items": ti[order], "seen_ptr": seen_ptr,
            "user_index": {x: j for j, x in enumerate(user_ids)},
            "item_index": {x: j for j, x in enumerate(item_ids)},
            "pop_order": pop_order, "pop_share": pop / top if top > 0 else np.zeros_like(pop),
            "known_users": np.flatnonzero(user_has), "known_items": cand,
        }

    def _fitted(self) -> dict:
        if self._state is None:
            raise NotFittedError("this MatrixFactorization is not fitted: call fit() or "
                                 "MatrixFactorization.load() first")
        return self._state

    # ------------------------------------------------------------------ vectors and ids
    @property
    def user_ids(self) -> list[str]:
        """Ids of the users with a vector, in the order of :attr:`user_factors`' rows."""
        s = self._fitted()
        return [s["user_ids"][j] for j in s["known_users"]]

    @property
    def item_ids(self) -> list[str]:
        """Ids of the items with a vector, in the order of :attr:`item_factors`' rows."""
        s = self._fitted()
        return [s["item_ids"][j] for j in s["known_items"]]

    @property
    def user_factors(self) -> np.ndarray:
        """(len(user_ids), d) float32: the users' published vectors, those a version stores.

        ``d`` is ``dim``, or ``dim + 2`` for ``squared`` with ``dot`` (the mean and the biases
        folded in) and ``dim + 1`` for ``bce`` with ``dot`` (the item bias), so that
        ``score_scale * <user, item>`` is the prediction (docs/notation.md)."""
        s = self._fitted()
        return s["U"][s["known_users"]].copy()

    @property
    def item_factors(self) -> np.ndarray:
        """(len(item_ids), d) float32: the items' published vectors (``d``: see
        :attr:`user_factors`)."""
        s = self._fitted()
        return s["V"][s["known_items"]].copy()

    @property
    def score_scale(self) -> float:
        """s of the score formula ``s * <user, item>`` (cosine: on unit rows)."""
        return self._fitted()["meta"]["scale"]

    # ------------------------------------------------------------------ queries
    def _seen(self, s: dict, u: int) -> np.ndarray:
        return s["seen_items"][s["seen_ptr"][u]:s["seen_ptr"][u + 1]]

    def recommend(self, user_ids, k: int = 10, filter_seen: bool = True):
        """The top ``k`` items for each user, best first.

        Parameters
        ----------
        user_ids : id or sequence of ids
            One id gives one list; a sequence gives one list per id.
        k : int
            Items per user (>= 1). Each list has exactly ``min(k, items with a vector)`` pairs,
            or with ``filter_seen`` ``min(k, such items the user has no triple for)``.
        filter_seen : bool
            Leave out the items the user has a triple for in the fitted data (any score, as the
            client's ``exclude_seen``).

        Returns
        -------
        list of (item_id, score) pairs (or one such list per user). ``score`` is the model's
        predicted interest, ``score_scale * <user, item>`` (cosine: of unit rows), as
        ``RecallClient.recall`` returns it. A user without a vector (unknown, or with no triple
        the objective learns from) gets the most popular items (most positive triples first;
        ties by id), scored as the client's ``popular`` source: popularity as a share of the
        most popular item's, in [0, 1].
        """
        s = self._fitted()
        k = _check_k(k)
        if not isinstance(filter_seen, bool):
            raise TypeError(f"filter_seen must be a boolean, got {type(filter_seen).__name__}")
        one = _is_one_id(user_ids)
        ids = _canonical_ids([user_ids] if one else user_ids, "user_ids")
        rows = [s["user_index"].get(x, -1) for x in ids]
        out: list = [None] * len(ids)
        has = [n for n, u in enumerate(rows) if u >= 0 and s["user_has"][u]]
        V, iids, sim, scale = s["V"], s["item_ids"], self._tc.similarity, s["meta"]["scale"]
        no_vector = ~s["item_has"]
        step = _batch_rows(len(V))
        for start in range(0, len(has), step):
            batch = has[start:start + step]
            us = np.array([rows[n] for n in batch], dtype=np.int64)
            excluded = np.broadcast_to(no_vector, (len(us), len(no_vector))).copy()
            if filter_seen:
                for r, u in enumerate(us):
                    excluded[r, self._seen(s, u)] = True
            scores = cross_scores(s["U"][us].astype(np.float64), V.astype(np.float64), sim, scale)
            for n, (cols, vals) in zip(batch, ranked(scores, k, excluded), strict=True):
                out[n] = [(iids[c], v) for c, v in zip(cols.tolist(), vals.tolist(), strict=True)]
        for n, u in enumerate(rows):
            if out[n] is None:
                seen = set(self._seen(s, u).tolist()) if (filter_seen and u >= 0) else ()
                out[n] = [(iids[c], float(s["pop_share"][c]))
                          for c in popular_fallback(s["pop_order"], k, seen)]
        return out[0] if one else out

    def score(self, user_ids, item_ids) -> np.ndarray | float:
        """Predicted interest of (user, item) pairs: ``score_scale * <user, item>`` (cosine: of
        unit rows), the value :meth:`recommend` and ``RecallClient.score`` give.

        ``user_ids`` and ``item_ids`` are ids or equal-length sequences; a single id on one side
        pairs with every id on the other (NumPy broadcasting). Returns a float64 array (a float
        for two single ids); NaN where the user or the item has no vector.
        """
        s = self._fitted()
        one_u, one_i = _is_one_id(user_ids), _is_one_id(item_ids)
        us = _canonical_ids([user_ids] if one_u else user_ids, "user_ids")
        its = _canonical_ids([item_ids] if one_i else item_ids, "item_ids")
        if len(us) != len(its) and not (one_u or one_i):
            raise ValueError(f"user_ids and item_ids must have the same length (or be one id), got "
                             f"{len(us)} and {len(its)}")
        u = np.array([s["user_index"].get(x, -1) for x in us], dtype=np.int64)
        i = np.array([s["item_index"].get(x, -1) for x in its], dtype=np.int64)
        u, i = np.broadcast_arrays(u, i)
        ok = (u >= 0) & (i >= 0)
        ok[ok] = s["user_has"][u[ok]] & s["item_has"][i[ok]]
        out = np.full(u.shape, np.nan)
        out[ok] = pair_scores(s["U"][u[ok]].astype(np.float64), s["V"][i[ok]].astype(np.float64),
                              self._tc.similarity, s["meta"]["scale"])
        return float(out[0]) if (one_u and one_i) else out

    def similar_items(self, item_ids, k: int = 10):
        """The ``k`` items most similar to each item: cosine of the item vectors, best first.

        Returns one list of (item_id, cosine) pairs per item (one list for a single id), exactly
        ``min(k, items with a vector - 1)`` long, the item itself left out; an item without a
        vector gets an empty list.
        """
        s = self._fitted()
        k = _check_k(k)
        one = _is_one_id(item_ids)
        ids = _canonical_ids([item_ids] if one else item_ids, "item_ids")
        rows = [s["item_index"].get(x, -1) for x in ids]
        out: list = [[] for _ in ids]
        has = [n for n, i in enumerate(rows) if i >= 0 and s["item_has"][i]]
        V, iids = s["V"].astype(np.float64), s["item_ids"]
        step = _batch_rows(len(V))
        for start in range(0, len(has), step):
            batch = has[start:start + step]
            its = np.array([rows[n] for n in batch], dtype=np.int64)
            excluded = np.broadcast_to(~s["item_has"], (len(its), len(V))).copy()
            excluded[np.arange(len(its)), its] = True
            scores = cross_scores(V[its], V, "cosine")
            for n, (cols, vals) in zip(batch, ranked(scores, k, excluded), strict=True):
                out[n] = [(iids[c], v) for c, v in zip(cols.tolist(), vals.tolist(), strict=True)]
        return out[0] if one else out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted model to ``path`` as one ``.npz`` file (written under a temporary name
        and renamed, so a crash leaves the old file or the new one).

        Plain arrays only, no pickle: ids as UTF-8 bytes with offsets, vectors float32, the
        fitted triples (for ``filter_seen`` and popularity) and the settings as a JSON string.
        :meth:`load` reads it with ``np.load(allow_pickle=False)``.
        """
        s = self._fitted()
        path = Path(path)
        ub, uo = _encode_ids(s["user_ids"])
        ib, io = _encode_ids(s["item_ids"])
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "mcrecall": mcrecall.__version__,
                  "config": asdict(self._tc), **s["meta"]}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, header=np.array(json.dumps(header)), user_ids_utf8=ub,
                         user_ids_offsets=uo, item_ids_utf8=ib, item_ids_offsets=io,
                         user_vectors=s["U"], item_vectors=s["V"], user_has=s["user_has"],
                         item_has=s["item_has"], triple_user=s["tu"], triple_item=s["ti"],
                         triple_score=s["ty"], popularity=s["pop"])
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> MatrixFactorization:
        """A model written by :meth:`save` (``np.load(allow_pickle=False)``; the settings go
        through the configuration's checks again). A file that is not one is a one-line
        ``ValueError``."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
        except FileNotFoundError:
            raise FileNotFoundError(f"no model file at {path}") from None
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"{path} is not a MatrixFactorization file ({e})") from None
        try:
            header = json.loads(str(arrays.pop("header")))
            if header.get("format") != FORMAT:
                raise ValueError(f"format {header.get('format')!r}")
            if header.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format version {header.get('format_version')!r}, this mcrecall "
                                 f"reads {FORMAT_VERSION}")
            config = dict(header.pop("config"))
            self = cls.__new__(cls)
            self._tc = _train_config(config.pop("objective"), config)
            user_ids = _decode_ids(arrays["user_ids_utf8"], arrays["user_ids_offsets"])
            item_ids = _decode_ids(arrays["item_ids_utf8"], arrays["item_ids_offsets"])
            U, V = arrays["user_vectors"], arrays["item_vectors"]
            tu, ti = arrays["triple_user"].astype(np.int64), arrays["triple_item"].astype(np.int64)
            shapes_ok = (U.ndim == V.ndim == 2 and U.shape == (len(user_ids), V.shape[1])
                         and len(V) == len(item_ids)
                         and arrays["user_has"].shape == (len(user_ids),)
                         and arrays["item_has"].shape == (len(item_ids),)
                         and tu.shape == ti.shape == arrays["triple_score"].shape
                         and (not len(tu) or (0 <= tu.min() and tu.max() < len(user_ids)
                                              and 0 <= ti.min() and ti.max() < len(item_ids))))
            if not shapes_ok:
                raise ValueError("arrays of inconsistent shapes")
            meta = {key: header[key] for key in ("scale", "mu", "foldin", "training") if key in header}
            if not math.isfinite(float(meta.get("scale", math.nan))):
                raise ValueError("no finite score scale")
            self._state = cls._make_state(user_ids, item_ids, U.astype(np.float32), V.astype(np.float32),
                                          arrays["user_has"].astype(bool), arrays["item_has"].astype(bool),
                                          tu, ti, arrays["triple_score"].astype(np.float32),
                                          arrays["popularity"].astype(np.float64), meta)
        except (KeyError, TypeError, ValueError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a MatrixFactorization file ({e})") from None
        return self

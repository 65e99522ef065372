"""The recall client: ``recall(user_id, k)`` from the KV table and the vector store (DESIGN §4, §8).

One recall reads the current version ONCE (the pointer in ``users.lmdb``) and then uses only
that version: its user vector, its collection (searched by explicit version number, never
through the moving alias), its metadata. The publisher keeps the previous version until the
next one is current, so a recall in flight during a swap completes on the version it started
with; should that version be dropped under it anyway (two publications inside one recall), the
recall starts over on the new current version rather than mixing or returning nothing.

Where the user vector comes from, in order:

1. ``fold_in`` — the user's triples changed after the version was trained
   (``TripleStore.user_seq(user) > metadata["store_seq"]``, which includes users the version
   never saw): solve the version's own objective for this user against the version's item
   vectors (:func:`mcrecall.train.foldin.fold_in`). Cached per (version, user, user_seq).
2. ``model`` — the vector the version stored for the user.
3. ``popular`` — no vector: the version's most popular items (``metadata["popular_items"]``,
   the ``[train] popular_items`` most popular), then — so that ``k`` items still come back —
   the version's other items ranked by the popularity-weighted mean of those items' vectors
   (the typical taste), with score 0.0: their popularity was not recorded.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import numpy as np

from mcrecall.core.config import Config, load_config
from mcrecall.plugins import VersionNotFoundError, vector_store_from_config
from mcrecall.plugins.metric import pair_scores, popular_fallback, usable_vector
from mcrecall.serve.cache import LRUCache
from mcrecall.serve.types import (
    SOURCE_ATTRIBUTES,
    SOURCE_FOLD_IN,
    SOURCE_MODEL,
    SOURCE_POPULAR,
    NoModelError,
    RecallBatch,
    Recalled,
    RecallResult,
    UserVector,
    VectorStoreUnavailableError,
    VersionChurnError,
)
from mcrecall.serve.validate import check_flag, check_id, check_ids, check_k
from mcrecall.train.foldin import fold_in
from mcrecall.train.versions import ModelRegistry

log = logging.getLogger("mcrecall.serve")

T = TypeVar("T")
_first = itemgetter(0)  # an (item id, score) pair's id
_VERSION_RETRIES = 4  # each retry needs another publication inside one recall
_KEEP_VERSION_STATES = 4


class _VersionGone(Exception):
    """Internal: the version read as current was dropped during the recall; start over."""


@dataclass(frozen=True)
class _Version:
    """What one recall needs of a version besides vectors (immutable, cached per version)."""

    number: int
    meta: dict
    similarity: str
    scale: float  # predicted interest = scale * (dot or cosine)
    store_seq: int  # triple-store seq the version was trained on
    popular: tuple[tuple[str, float], ...]
    can_fold_in: bool


def _version_state(number: int, meta: dict) -> _Version:
    fm = meta.get("foldin") or {}
    similarity = str(meta.get("similarity", fm.get("similarity", "dot")))
    scale = float(meta.get("score_scale", fm.get("score_scale", 1.0)))
    raw = [(str(p[0]), float(p[1])) for p in meta.get("popular_items") or ()]
    # Popularity is a count, on no model's scale: serve it as a share of the most popular
    # item's figure, in (0, 1], so it can never pass for a predicted interest (DESIGN §8).
    top = max((c for _, c in raw), default=0.0)
    popular = tuple((i, c / top if top > 0 else 0.0) for i, c in raw)
    return _Version(number, meta, similarity, scale, int(meta.get("store_seq", 0)), popular,
                    bool(fm))


def _looks_unavailable(exc: BaseException) -> bool:
    """A connection-level failure (down, unreachable, timed out) rather than a bug or bad input."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    module = type(exc).__module__ or ""
    return module.startswith(("pymilvus", "grpc"))


class RecallClient:
    """Top-k recall for users from the current model version.

    Parameters
    ----------
    cfg : core.config.Config
        ``[store] data_dir`` (users.lmdb, triples.lmdb), ``[index]`` (the vector store),
        ``[serve]`` (fold-in switch, k limit, exclude and cache sizes).
    registry : train.versions.ModelRegistry, optional
        Share a registry already open in this process (LMDB allows one handle per process and
        path); by default one is opened read-only.
    vector_store : plugins.VectorStore, optional
        Share an open vector store; by default it is opened from ``cfg`` on first use.
    triple_store : ingest.store.TripleStore, optional
        By default opened read-only on first use, once ``triples.lmdb`` exists; without it there
        is no fold-in and ``exclude_seen`` has nothing to exclude.

    Notes
    -----
    Safe to share between threads. Caches: the metadata of the last few versions, item vectors
    per (version, refresh generation, item) and fold-in vectors per (version, user, user_seq,
    refresh generation) — a version's item vectors change only by item refresh
    (``mcrecall refresh``), which bumps the generation, so nothing cached can go stale.
    """

    def __init__(self, cfg: Config, *, registry: ModelRegistry | None = None, vector_store=None,
                 triple_store=None):
        if not isinstance(cfg, Config):
            raise TypeError(f"cfg must be a core.config.Config, got {type(cfg).__name__}")
        self.cfg = cfg
        self._own_registry = registry is None
        self._registry = registry if registry is not None else ModelRegistry(
            cfg.data_dir, readonly=True, map_size=int(cfg.store.map_size_gb * (1 << 30)))
        self._registry_open = not self._own_registry
        self._own_store = vector_store is None
        self._vs = vector_store
        self._ts = triple_store
        self._triples_path = Path(cfg.data_dir) / "triples.lmdb" / "data.mdb"
        self._lock = threading.Lock()
        self._states: dict[int, _Version] = {}
        self._adopted: set[int] = set()
        self._items = LRUCache(cfg.serve.item_cache_size)
        self._foldins = LRUCache(cfg.serve.foldin_cache_size)
        self._fold_in_on = bool(cfg.serve.fold_in)
        self._user_tokens: dict = {}  # version -> (vocab, user token embeddings) or ()

    @classmethod
    def from_config(cls, path: str | os.PathLike | Config | None = None, **kwargs) -> "RecallClient":
        """A client for the configuration at ``path`` (default: ``$MCRECALL_CONFIG`` or the
        embedded defaults, with ``MCRECALL_*`` overrides); a ``Config`` is used as it is."""
        cfg = path if isinstance(path, Config) else load_config(path)
        return cls(cfg, **kwargs)

    # ------------------------------------------------------------------ public API
    @property
    def version(self) -> int | None:
        """The current model version (None before the first publication)."""
        return self._current_or_none()

    def recall(self, user_id, k: int = 10, exclude_seen: bool = False) -> list[Recalled]:
        """The user's top-k items, best first.

        Parameters
        ----------
        user_id : str or int
            External user id (an integer means its decimal string, as in events).
        k : int
            1..``[serve] max_k``. Exactly ``min(k, items of the version not excluded)`` come
            back, on every backend and index type (a short approximate answer is completed by
            an exact scan). A user without a vector gets the version's popular items, then
            (to make up ``k``) its other items ranked by the typical taste, scored 0.0.
        exclude_seen : bool
            Leave out items the user already has triples for.

        Returns
        -------
        list of Recalled(item_id, score, source)
            ``source`` is ``"model"``, ``"fold_in"`` or ``"popular"``. For ``model`` and
            ``fold_in``, ``score`` is the model's predicted interest. For ``popular`` it is the
            item's popularity as a share of the version's most popular item, in (0, 1]: a
            ranking figure on no model's scale, not comparable with model scores.

        Raises
        ------
        TypeError, ValueError
            Bad ``user_id``, ``k`` or ``exclude_seen``.
        NoModelError
            Nothing has been published yet.
        VectorStoreUnavailableError
            The vector store is down or did not answer within ``[index] timeout_s``.
        """
        return self.recall_result(user_id, k, exclude_seen).items

    def recall_result(self, user_id, k: int = 10, exclude_seen: bool = False) -> RecallResult:
        """Like :meth:`recall`, with the version that answered (``RecallResult``)."""
        uid = check_id(user_id, "user_id")
        k = check_k(k, self.cfg.serve.max_k)
        exclude_seen = check_flag(exclude_seen, "exclude_seen")
        return self._with_version(lambda st: self._recall_at(st, uid, k, exclude_seen))

    def recall_many(self, user_ids: Iterable, k: int = 10, exclude_seen: bool = False) -> RecallBatch:
        """:meth:`recall_result` for several users, every one from the same version.

        The current version is read once for the whole batch; should it be dropped before the
        batch is done (two publications meanwhile), the whole batch starts over on the new
        current version, so the answers never mix versions.

        Parameters
        ----------
        user_ids : iterable of str or int
            The users, in the order their results come back (a lone string is refused).
        k, exclude_seen
            As for :meth:`recall`, the same for every user.

        Returns
        -------
        RecallBatch(version, results)
            ``results[j]`` is the ``RecallResult`` of ``user_ids[j]`` (each with ``version``).

        Raises
        ------
        TypeError, ValueError
            A bad id (the message names ``user_ids[j]``), ``k`` or ``exclude_seen``.
        NoModelError, VectorStoreUnavailableError, VersionChurnError
            As for :meth:`recall`.
        """
        uids = check_ids(user_ids, "user_ids")
        k = check_k(k, self.cfg.serve.max_k)
        exclude_seen = check_flag(exclude_seen, "exclude_seen")

        def at(st: _Version) -> RecallBatch:
            return RecallBatch(st.number, [self._recall_at(st, u, k, exclude_seen) for u in uids])

        return self._with_version(at)

    def score(self, user_id, item_ids: Iterable) -> list[float | None]:
        """The model's predicted interest of the user for each item (same user vector as
        :meth:`recall`, same scale as its ``model`` / ``fold_in`` scores).

        Returns
        -------
        list of float or None
            One entry per item, in order. ``None`` where the model has no opinion: an item the
            current version does not know (e.g. newer than the version), and every item when
            the user has no vector (a cold-start user, whom :meth:`recall` serves ``popular``
            items). Never NaN.
        """
        uid = check_id(user_id, "user_id")
        ids = check_ids(item_ids, "item_ids")
        return self._with_version(lambda st: self._score_at(st, uid, ids))

    def user_vector(self, user_id) -> UserVector:
        """The vector :meth:`recall` would use for the user now, with its version and source
        (``"model"``, ``"fold_in"``, or ``"popular"`` with ``vector=None``)."""
        uid = check_id(user_id, "user_id")

        def at(st: _Version) -> UserVector:
            vec, source, _ = self._user_vector(st, uid, False)
            return UserVector(st.number, None if vec is None else vec.copy(), source)

        return self._with_version(at)

    def close(self) -> None:
        """Release what this client opened (a shared registry or store is left open)."""
        with self._lock:
            vs, self._vs = self._vs, None
            self._adopted = set()
            if vs is not None and self._own_store:
                vs.close()
            if self._own_registry:
                self._registry.close()
                self._registry_open = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"RecallClient(data_dir={str(self.cfg.data_dir)!r}, "
                f"backend={self.cfg.index.backend!r}, fold_in={self.cfg.serve.fold_in})")

    # ------------------------------------------------------------------ versions
    def _current_or_none(self) -> int | None:
        if self._registry_open:
            return self._registry.current_version()
        # ModelRegistry opens its LMDB environment lazily, and two threads opening it at once
        # would open it twice: serialise until it is open (it stays open once it returned one).
        with self._lock:
            v = self._registry.current_version()
            if v is not None:
                self._registry_open = True
            return v

    def _current(self) -> int:
        v = self._current_or_none()
        if v is None:
            raise NoModelError(
                f"no model version has been published in {self.cfg.data_dir}/users.lmdb yet "
                "(run `mcrecall train` first)"
            )
        return v

    def _version(self, number: int) -> _Version:
        st = self._states.get(number)
        if st is None:
            try:
                meta = self._registry.metadata(number)
            except KeyError:
                raise _VersionGone(number) from None
            st = _version_state(number, meta)
            if not st.can_fold_in and self.cfg.serve.fold_in:
                log.warning("version %s has no fold-in metadata: changed users are served "
                            "their stored vectors until the next version", number)
            with self._lock:
                self._states[number] = st
                for old in sorted(self._states)[:-_KEEP_VERSION_STATES]:
                    del self._states[old]
        return st

    def _alive(self, number: int) -> bool:
        try:
            self._registry.metadata(number)
            return True
        except KeyError:
            return False

    def _with_version(self, fn: Callable[[_Version], T]) -> T:
        for _ in range(_VERSION_RETRIES):
            number = self._current()
            try:
                return fn(self._version(number))
            except _VersionGone:
                log.info("version %s was dropped during a recall; retrying on the current one",
                         number)
        raise VersionChurnError(
            f"the current model version changed and was dropped {_VERSION_RETRIES} times during "
            "one recall; are several trainers publishing in a tight loop?"
        )

    # ------------------------------------------------------------------ backing stores
    def _store(self):
        vs = self._vs
        if vs is None:
            with self._lock:
                if self._vs is None:
                    i = self.cfg.index
                    try:
                        self._vs = vector_store_from_config(self.cfg)
                    except Exception as e:
                        if _looks_unavailable(e):
                            raise VectorStoreUnavailableError(
                                f"cannot open the {i.backend} vector store "
                                f"({i.uri or self.cfg.data_dir}): {e}") from e
                        raise
                vs = self._vs
        return vs

    def _adopt(self, vs, number: int) -> None:
        """Tell the store what the registry (the authority) says version ``number`` is, so it
        is searched without the store's own finalized marker (lost by a Milvus restart)."""
        st = self._states.get(number)
        spec = st.meta.get("vector_store") if st is not None else None
        if spec:
            try:
                vs.adopt_version(spec)
            except (TypeError, ValueError) as e:  # metadata of another layout: use the store's own
                log.warning("version %s: cannot adopt its vector-store spec (%s)", number, e)
        self._adopted.add(number)

    def _store_call(self, number: int, fn: Callable[[], T]) -> T:
        if number not in self._adopted:
            vs = self._store()
            if hasattr(vs, "adopt_version"):
                self._adopt(vs, number)
        try:
            return fn()
        except VersionNotFoundError as e:
            if self._alive(number) and self._current() == number:
                # not churn: the registry and the vector store disagree ([index] points elsewhere)
                i = self.cfg.index
                raise VersionNotFoundError(
                    f"version {number} is current in {self.cfg.data_dir} but the {i.backend} "
                    f"vector store ({i.uri or 'its default place in the data dir'}) does not have "
                    "it: point [index] backend and uri where the trainer published it") from e
            raise _VersionGone(number) from None
        except (ValueError, TypeError, KeyError):
            raise
        except Exception as e:
            if not self._alive(number):  # e.g. a collection dropped between two calls
                raise _VersionGone(number) from None
            if _looks_unavailable(e):
                i = self.cfg.index
                raise VectorStoreUnavailableError(
                    f"the {i.backend} vector store ({i.uri or self.cfg.data_dir}) did not answer "
                    f"(timeout {i.timeout_s:g} s): {e}") from e
            raise

    def _triples(self):
        ts = self._ts
        if ts is None:
            if not self._triples_path.exists():  # a serving host without the triple store
                return None
            from mcrecall.ingest.store import TripleStore

            with self._lock:
                if self._ts is None:
                    self._ts = TripleStore(self.cfg.data_dir, readonly=True,
                                           map_size_gb=self.cfg.store.map_size_gb)
                ts = self._ts
        return ts

    # ------------------------------------------------------------------ user vectors
    def _user_vector(self, st: _Version, uid: str, want_seen: bool):
        """(vector or None, source, seen item ids or None)."""
        seen = None
        fold = self._fold_in_on and st.can_fold_in
        ts = self._triples() if (fold or want_seen) else None
        if fold and ts is not None:
            useq = ts.user_seq(uid)
            if useq > st.store_seq:
                key = (st.number, uid)
                useq = (useq, self._registry.refresh_generation(st.number))  # refreshed items
                hit = self._foldins.get(key)
                if hit is not None and hit[0] == useq:
                    vec = hit[1]
                else:
                    # useq read before the history: a newer history cached under an older seq
                    # only costs one recomputation, never a stale vector.
                    items, scores = ts.user_history(uid)
                    seen = items
                    vec = self._fold_in(st, items, scores, self._attribute_vector(st, uid))
                    self._foldins.put(key, (useq, vec))
                if vec is not None:
                    if want_seen and seen is None:
                        seen = ts.user_history(uid)[0]
                    return vec, SOURCE_FOLD_IN, seen
        vec = self._registry.user_vector(st.number, uid)
        if want_seen and seen is None:
            seen = ts.user_history(uid)[0] if ts is not None else []
        if vec is None or not vec.any():  # a zero vector ranks nothing
            if vec is None and not self._alive(st.number):
                raise _VersionGone(st.number)
            avec = self._attribute_vector(st, uid)  # the hybrid model: what the user is
            if avec is not None:
                return avec, SOURCE_ATTRIBUTES, seen
            return None, SOURCE_POPULAR, seen
        return vec, SOURCE_MODEL, seen

    def _attribute_vector(self, st: _Version, uid: str) -> np.ndarray | None:
        """The user's attribute part (current tokens x the version's user token embeddings,
        train/attributes.py), or None (no tokens known to the version, or no triple store)."""
        tables = self._user_tokens.get(st.number)
        if tables is None:
            tables = self._registry.tokens(st.number, "user") or ()
            self._user_tokens[st.number] = tables
        ts = self._triples() if tables else None
        if ts is None:
            return None
        from mcrecall.train.attributes import build_tokens

        tm = build_tokens(1, ts.entity_attributes("user", [uid]), vocab=tables[0])
        vec = tm.parts(tables[1])[0]
        if not vec.any():
            return None
        fm = st.meta.get("foldin") or {}
        if fm.get("objective") == "bce" and fm.get("layout") == "biased":
            vec[-1] = 1.0  # bce/dot users are [a, 1]: the 1 picks up the item bias
        return vec

    def _fold_in(self, st: _Version, items: list[str], scores: np.ndarray,
                 prior: np.ndarray | None = None) -> np.ndarray | None:
        if not items:
            return None
        V = self._item_vectors(st.number, items)
        known = ~np.isnan(V).any(axis=1)  # items newer than the version carry no vector
        if not known.any():
            return None
        x = usable_vector(fold_in(V[known], np.asarray(scores, dtype=np.float64)[known], st.meta,
                                  **({"prior": prior} if prior is not None else {})))
        return None if x is None else np.asarray(x, dtype=np.float32)

    def _item_vectors(self, number: int, ids: list[str]) -> np.ndarray:
        """(len(ids), dim) model-space vectors of version ``number``; NaN rows for unknown ids."""
        # read before the vectors: a refresh in between only makes the cached rows newer
        gen = self._registry.refresh_generation(number)
        cached = self._items.get_many((number, gen, i) for i in ids)
        missing = [i for i in dict.fromkeys(ids) if (number, gen, i) not in cached]
        if missing:
            vs = self._store()
            got = self._store_call(number, lambda: vs.get_vectors(number, missing, missing="nan"))
            fresh = {(number, gen, i): got[j] for j, i in enumerate(missing)}
            self._items.put_many(fresh.items())
            cached.update(fresh)
        return np.stack([cached[(number, gen, i)] for i in ids]) if ids else np.zeros((0, 0),
                                                                                       np.float32)

    # ------------------------------------------------------------------ recall and score
    def _recall_at(self, st: _Version, uid: str, k: int, exclude_seen: bool) -> RecallResult:
        vec, source, seen_list = self._user_vector(st, uid, exclude_seen)
        seen = frozenset(seen_list) if exclude_seen and seen_list else frozenset()
        if vec is None:
            items = [Recalled(i, s, SOURCE_POPULAR)
                     for i, s in popular_fallback(st.popular, k, seen, key=_first)]
            if len(items) < k:
                items += self._popular_fill(st, k - len(items), seen)
            return RecallResult(st.number, items, SOURCE_POPULAR)
        hits = self._search(st, vec, k, seen)
        scale, new = st.scale, tuple.__new__  # tuple.__new__: a third of Recalled()'s cost
        if scale != 1.0:
            items = [new(Recalled, (i, s * scale, source)) for i, s in hits]
        else:
            items = [new(Recalled, (i, s, source)) for i, s in hits]
        return RecallResult(st.number, items, source)

    def _popular_fill(self, st: _Version, n: int, seen: frozenset) -> list[Recalled]:
        """Up to ``n`` more items for a user without a vector, after the recorded popular list:
        the index's top items for the popularity-weighted mean of the listed items' vectors
        (exactly ``min(n, items left)`` by the store's exactly-k contract)."""
        q = self._fill_query(st)
        listed = frozenset(i for i, _ in st.popular)
        hits = self._search(st, q, n, seen | listed)
        return [Recalled(i, 0.0, SOURCE_POPULAR) for i, _ in hits]

    def _fill_query(self, st: _Version) -> np.ndarray:
        key = ("fill", st.number, self._registry.refresh_generation(st.number))
        q = self._foldins.get(key)
        if q is None:
            ids = [i for i, _ in st.popular]
            q = None
            if ids:
                V = self._item_vectors(st.number, ids).astype(np.float64)
                w = np.array([s for _, s in st.popular], np.float64)
                ok = ~np.isnan(V).any(axis=1) & (w > 0)
                if ok.any():
                    q = (w[ok, None] * V[ok]).sum(axis=0) / w[ok].sum()
            if q is None or not np.all(np.isfinite(q)) or not q.any():
                # nothing recorded: any fixed direction gives a deterministic, complete order
                q = np.ones(int(st.meta["dim"]))
            q = np.asarray(q, dtype=np.float32)
            self._foldins.put(key, q)
        return q

    def _search(self, st: _Version, vec: np.ndarray, k: int, seen: frozenset) -> list:
        vs, number = self._store(), st.number
        if not seen:
            return self._store_call(number, lambda: vs.search(number, vec, k))
        if len(seen) <= self.cfg.serve.exclude_direct_max:
            # the store over-fetches k + |seen| itself and filters: one exact round trip
            return self._store_call(number, lambda: vs.search(number, vec, k, exclude=seen))
        # A heavy user: fetching k + |seen| every time would be a huge search (and Milvus caps
        # top-k at 16384). Seen items rarely fill the top ranks, so fetch a little more than k,
        # filter here, and widen only when too few survive; the last round is exact.
        need = k + len(seen)
        fetch = min(need, self.cfg.serve.overfetch * k + self.cfg.serve.exclude_direct_max)
        while True:
            raw = self._store_call(number, lambda fetch=fetch: vs.search(number, vec, fetch))
            hits = [h for h in raw if h[0] not in seen]
            if len(hits) >= k or len(raw) < fetch or fetch >= need:
                return hits[:k]
            fetch = min(need, fetch * 4)

    def _score_at(self, st: _Version, uid: str, ids: list[str]) -> list[float | None]:
        vec, _source, _ = self._user_vector(st, uid, False)
        if not ids:
            return []
        if vec is None:
            return [None] * len(ids)
        V = self._item_vectors(st.number, ids).astype(np.float64)
        s = pair_scores(vec.astype(np.float64)[None, :], V, st.similarity, st.scale)
        return [None if math.isnan(x) else float(x) for x in s.tolist()]

"""The small vector-store interface every backend implements.

Like implicit's ``RecommenderBase``, the public methods live here once — they
validate input, apply the similarity/metric reduction of :mod:`mcrecall.plugins.metric`,
handle excluded ids and turn raw index values into model scores — and a backend
only fills in a handful of storage primitives (the ``_``-prefixed abstract
methods). A third-party backend subclasses :class:`VectorStore` and registers it
in the ``mcrecall.vector_stores`` entry-point group.

Versions (DESIGN §4) are immutable once finalized: ``create_version`` →
``upsert``\\* → ``finalize`` → ``make_current``; a finalized version is never
modified, so readers in any process see either all of it or none of it. The one exception is
:meth:`VectorStore.replace_items` (item refresh): it replaces or adds whole items of a
published version in one atomic step per call, so a reader sees each item's old or new vector.

Exactly k (every backend, every index type): :meth:`VectorStore.search_batch`
returns ``min(k, items in the version not excluded)`` distinct items, best first.
An approximate index may come back short (HNSW with k near its beam, IVF with
few cells probed, a server's top-k cap); the base class then answers that query
with an exact scan of the version (:meth:`VectorStore._exact_search`).

The model registry (``users.lmdb``, :mod:`mcrecall.train.versions`) is the authority on
which versions exist and are complete. A store's own "finalized" marker is a
convenience for stand-alone use; :meth:`VectorStore.adopt_version` lets a caller
that read the version's spec from the registry search it without that marker
(Milvus forgets collection properties on a server restart).
"""

from __future__ import annotations

import abc
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from mcrecall.core.ids import MAX_ID_BYTES, check_stored_ids  # noqa: F401  (the one id rule; MAX_ID_BYTES re-exported)
from mcrecall.core.ids import check_k as _check_k
from mcrecall.plugins.metric import MetricReduction, exact_top_k, normalize_metric, normalize_similarity, top_k

log = logging.getLogger("mcrecall.plugins")

DEFAULT_PARAMS = {
    "hnsw_m": 16,
    "ef_construction": 200,
    "ef_search": 128,
    "nlist": 1024,
    "nprobe": 32,
    "flat_max_items": 10_000,
    "timeout_s": 10.0,
}


class VersionNotFoundError(LookupError):
    """The requested model version does not exist in the vector store."""

    def __str__(self):  # LookupError/KeyError would print the repr of the message
        return str(self.args[0]) if self.args else "version not found"


@dataclass(frozen=True)
class VersionSpec:
    """What a version's collection was created with (persisted with it).

    Attributes
    ----------
    version : int
    dim : int
        Model dimension.
    metric : str
        ``L2``, ``IP`` or ``COSINE``.
    index_type : str
        Backend index type, upper-case (``AUTOINDEX`` already resolved).
    similarity : str
        ``dot`` or ``cosine``.
    max_norm : float or None
    params : dict
        Index build/search parameters in force when it was built.
    created_at : float
        Unix time.
    """

    version: int
    dim: int
    metric: str
    index_type: str
    similarity: str = "dot"
    max_norm: float | None = None
    params: dict = field(default_factory=dict)
    created_at: float = 0.0

    @property
    def reduction(self) -> MetricReduction:
        return MetricReduction(self.similarity, self.metric, self.dim, self.max_norm)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "VersionSpec":
        return cls(**json.loads(text))


def check_version(version) -> int:
    """Return ``version`` as int, or raise ``ValueError`` unless it is an int ≥ 0."""
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version!r}")
    return int(version)


def check_k(k) -> int:
    """Return ``k`` as int, or raise ``ValueError`` unless it is a positive integer
    (:func:`mcrecall.core.ids.check_k`, the one k rule; a store has no upper limit of its own)."""
    return _check_k(k)


def check_ids(ids) -> list[str]:
    """Validate external item ids: strings of 1..MAX_ID_BYTES UTF-8 bytes (mcrecall.core.ids)."""
    return check_stored_ids(ids, "item id")


class VectorStore(abc.ABC):
    """A store of versioned item-vector collections with top-k search.

    Parameters
    ----------
    data_dir : str or path-like, optional
        The mcrecall data directory (file backends keep versions under
        ``<data_dir>/vectors/<collection>/``).
    uri : str
        Backend address (Milvus: a ``.db`` path or ``http://host:port``).
    collection : str
        Base collection name; version N is ``<collection>_v<N>``.
    hnsw_m, ef_construction, ef_search, nlist, nprobe : int
        Index parameters (used where the index type has them). Backends size them to
        the version: HNSW searches with ``ef >= k``, IVF probes more cells for a large k.
    flat_max_items : int
        A version with at most this many items gets an exact (FLAT) index whatever
        ``index_type`` asks for: as fast as a graph at that size, and exact (0 = never).
    timeout_s : float
        Per-request timeout for networked backends.

    Notes
    -----
    Scores returned by :meth:`search` are the model's own: ⟨a, b⟩ for
    ``similarity="dot"``, cos(a, b) for ``"cosine"`` — never raw distances.
    """

    #: backend name (the entry-point name)
    name: str = "base"
    #: index types the backend builds (upper-case); ``AUTOINDEX`` maps to
    #: :attr:`auto_index_type`
    index_types: tuple[str, ...] = ()
    auto_index_type: str = "FLAT"
    #: index types whose search is exact (a flat scan)
    exact_index_types: tuple[str, ...] = ("FLAT",)
    #: a search for at least 1/direct_exact_share of a version's items (and >= 1000) goes to
    #: :meth:`_exact_search` directly: a graph beam that wide is slower than a scan
    #: (benchmarks/bench_exactly_k.py). 0 = never (e.g. where the scan fetches over a network).
    direct_exact_share: int = 0

    def __init__(
        self,
        data_dir=None,
        uri: str = "",
        collection: str = "mcrecall_items",
        *,
        hnsw_m: int = DEFAULT_PARAMS["hnsw_m"],
        ef_construction: int = DEFAULT_PARAMS["ef_construction"],
        ef_search: int = DEFAULT_PARAMS["ef_search"],
        nlist: int = DEFAULT_PARAMS["nlist"],
        nprobe: int = DEFAULT_PARAMS["nprobe"],
        flat_max_items: int = DEFAULT_PARAMS["flat_max_items"],
        timeout_s: float = DEFAULT_PARAMS["timeout_s"],
    ):
        import re

        if not isinstance(collection, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,200}", collection):
            raise ValueError(
                f"collection must be letters, digits and underscores (not starting with a digit), "
                f"got {collection!r}"
            )
        self.data_dir = data_dir
        self.uri = uri or ""
        self.collection = collection
        params = {
            "hnsw_m": hnsw_m,
            "ef_construction": ef_construction,
            "ef_search": ef_search,
            "nlist": nlist,
            "nprobe": nprobe,
        }
        for key, value in params.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if isinstance(flat_max_items, bool) or not isinstance(flat_max_items, (int, np.integer)) or flat_max_items < 0:
            raise ValueError(f"flat_max_items must be an integer >= 0, got {flat_max_items!r}")
        params["flat_max_items"] = flat_max_items
        self.params = {k: int(v) for k, v in params.items()}
        self._adopted: dict[int, VersionSpec] = {}
        self._counts_cache: dict[tuple[int, float], int] = {}
        self._warned_no_exact = False
        if not float(timeout_s) > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)

    # ------------------------------------------------------------------ public API
    def create_version(
        self,
        version: int,
        dim: int,
        metric: str,
        index_type: str = "AUTOINDEX",
        similarity: str = "dot",
        max_norm: float | None = None,
    ) -> VersionSpec:
        """Create the empty collection of a new model version.

        Parameters
        ----------
        version : int
            Model version N (collection ``<collection>_v<N>``).
        dim : int
            Model dimension of the item vectors.
        metric : {"L2", "IP", "COSINE"}
            Index metric.
        index_type : str
            One of :attr:`index_types`, or ``AUTOINDEX`` for the backend's default.
        similarity : {"dot", "cosine"}
            The model's score function.
        max_norm : float, optional
            Largest item-vector norm; required for ``dot`` through ``L2``/``COSINE``.

        Returns
        -------
        VersionSpec

        Raises
        ------
        ValueError
            Bad arguments, or ``version`` is the current version (a serving
            version is never overwritten). A stale, non-current version with
            the same number (e.g. left by a crashed run) is replaced.
        """
        version = check_version(version)
        metric = normalize_metric(metric)
        similarity = normalize_similarity(similarity)
        index_type = self._resolve_index_type(index_type)
        spec = VersionSpec(
            version=version,
            dim=int(dim) if not isinstance(dim, bool) and isinstance(dim, (int, np.integer)) else dim,
            metric=metric,
            index_type=index_type,
            similarity=similarity,
            max_norm=None if max_norm is None else float(max_norm),
            params=dict(self.params),
            created_at=time.time(),
        )
        _ = spec.reduction  # validates dim and max_norm
        if version == self.current_version():
            raise ValueError(f"version {version} is current; refusing to overwrite it")
        self._create(spec)
        return spec

    def upsert(self, version: int, ids: Sequence[str], vectors, batch_size: int = 10_000) -> int:
        """Insert or replace (id, vector) pairs of a version that is being built.

        Parameters
        ----------
        version : int
        ids : sequence of str
            External item ids (at most :data:`MAX_ID_BYTES` UTF-8 bytes each).
            A repeated id keeps its last vector.
        vectors : array_like, shape (len(ids), dim)
            Model-space item vectors.
        batch_size : int
            Rows sent to the backend at a time.

        Returns
        -------
        int
            Number of rows written.
        """
        version = check_version(version)
        spec = self._building_spec(version)
        ids = check_ids(ids)
        stored, norms = spec.reduction.items(vectors)
        if stored.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids but {stored.shape[0]} vectors")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        for start in range(0, len(ids), batch_size):
            end = start + batch_size
            self._add(version, ids[start:end], stored[start:end], norms[start:end])
        return len(ids)

    def finalize(self, version: int) -> int:
        """Make a version complete and searchable (flush, build the index, load).

        After this returns, every search of the version — from any process —
        sees all its vectors; the version can no longer be modified.

        Returns
        -------
        int
            Number of items in the version.
        """
        version = check_version(version)
        self._building_spec(version)
        return self._finalize(version)

    def replace_items(self, version: int, ids: Sequence[str], vectors) -> int:
        """Replace or add items of a finalized (even current) version in place.

        Item refresh: new items and items with new triples get vectors solved against the
        version's own user vectors, without a new version. The call is atomic for readers in
        any process (each search sees all of this call's rows or none) and a crash leaves the
        version as it was before the call.

        Parameters
        ----------
        version : int
            A finalized version.
        ids : sequence of str
            External item ids; a repeated id keeps its last vector.
        vectors : array_like, shape (len(ids), dim)
            Model-space item vectors. For ``dot`` through ``L2``/``COSINE`` each norm must not
            exceed the version's ``max_norm`` (the reduction's M; ``ValueError`` otherwise).

        Returns
        -------
        int
            Number of distinct ids written.
        """
        spec = self._published_spec(version)
        ids = check_ids(ids)
        stored, norms = spec.reduction.items(vectors) if ids else (None, None)
        if not ids:
            return 0
        if stored.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids but {stored.shape[0]} vectors")
        last = {i: r for r, i in enumerate(ids)}  # last write wins
        if len(last) != len(ids):
            rows = np.fromiter(last.values(), dtype=np.int64, count=len(last))
            ids, stored, norms = list(last), stored[rows], norms[rows]
        self._replace(spec, ids, np.ascontiguousarray(stored), norms)
        return len(ids)

    def get_vectors(self, version: int, ids: Sequence[str], missing: str = "raise") -> np.ndarray:
        """Model-space vectors of ``ids`` in version ``version``.

        Parameters
        ----------
        missing : {"raise", "nan"}
            An unknown id raises ``KeyError``, or (``"nan"``) gets a row of NaN.

        Returns
        -------
        numpy.ndarray, shape (len(ids), dim), float32
        """
        spec = self._published_spec(version)
        ids = check_ids(ids)
        if missing not in ("raise", "nan"):
            raise ValueError(f"missing must be 'raise' or 'nan', got {missing!r}")
        found = self._get(spec.version, list(dict.fromkeys(ids))) if ids else {}
        red = spec.reduction
        out = np.full((len(ids), spec.dim), np.nan, dtype=np.float32)
        absent = []
        for row, i in enumerate(ids):
            hit = found.get(i)
            if hit is None:
                absent.append(i)
            else:
                out[row] = red.restore_items(hit[0], np.array([hit[1]]))[0]
        if absent and missing == "raise":
            raise KeyError(f"{len(absent)} id(s) not in version {spec.version}: {absent[:5]}")
        return out

    def search(self, version: int | None, query, k: int, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """Top-k items for one model-space query vector.

        Parameters
        ----------
        version : int or None
            Model version; ``None`` reads the current version once.
        query : array_like, shape (dim,)
        k : int
            Positive; fewer results come back when the version has fewer items.
        exclude : iterable of str
            Item ids to leave out (e.g. items the user has already seen).

        Returns
        -------
        list of (item_id, score)
            Best first; scores are model scores.
        """
        q = np.asarray(query)
        if q.ndim != 1:
            raise ValueError(f"query must be one vector, got shape {q.shape}; use search_batch")
        return self.search_batch(version, q[None, :], k, None if not exclude else [exclude])[0]

    def search_batch(
        self, version: int | None, queries, k: int, exclude: Sequence[Iterable[str]] | None = None
    ) -> list[list[tuple[str, float]]]:
        """Top-k items for each of a batch of model-space queries (one index call).

        Parameters
        ----------
        version : int or None
            Model version; ``None`` reads the current version once.
        queries : array_like, shape (q, dim)
        k : int
        exclude : sequence of iterables of str, optional
            ``exclude[j]`` are the ids to leave out for query ``j``.

        Returns
        -------
        list of list of (item_id, score)
        """
        k = check_k(k)
        if version is None:
            version = self.current_version()
            if version is None:
                raise VersionNotFoundError(f"collection {self.collection!r} has no current version")
        spec = self._published_spec(version)
        stored_q, qnorms = spec.reduction.queries(queries)
        if exclude is None:
            excl = [frozenset()] * stored_q.shape[0]
        else:
            if isinstance(exclude, (str, bytes)) or len(exclude) != stored_q.shape[0]:
                raise ValueError("exclude must be a sequence with one collection of ids per query")
            excl = [frozenset(e) for e in exclude]
        if stored_q.shape[0] == 0:
            return []
        # Over-fetch by the size of the exclusion set so that k survive the filter.
        fetch = k + max(len(e) for e in excl)
        if (self.direct_exact_share and fetch >= 1000 and spec.index_type not in self.exact_index_types
                and fetch * self.direct_exact_share >= self._cached_count(spec)):
            exact = self._exact_fallback(spec, stored_q, fetch)
            if exact is not None:
                ids, raw, kind = exact
                return [self._rank(spec, row_ids, row_raw, kind, qnorms[j], excl[j], k)
                        for j, (row_ids, row_raw) in enumerate(zip(ids, raw, strict=False))]
        ids, raw, kind = self._search(spec, stored_q, fetch)
        results = [self._rank(spec, row_ids, row_raw, kind, qnorms[j], excl[j], k)
                   for j, (row_ids, row_raw) in enumerate(zip(ids, raw, strict=False))]
        short = [j for j, r in enumerate(results) if len(r) < k and len(set(ids[j])) < fetch]
        if short:
            # The index returned fewer than asked: complete unless it returned every item.
            count = self._cached_count(spec)
            short = [j for j in short if len(set(ids[j])) < count]
        if short:
            exact = self._exact_fallback(spec, stored_q[short], fetch)
            if exact is not None:
                ex_ids, ex_raw, ex_kind = exact
                for n, j in enumerate(short):
                    results[j] = self._rank(spec, ex_ids[n], ex_raw[n], ex_kind, qnorms[j], excl[j], k)
        return results

    def _rank(self, spec, row_ids, row_raw, kind, qnorm, excluded, k) -> list[tuple[str, float]]:
        """Model scores of one query's raw hits, excluded and repeated ids dropped, best k."""
        scores = spec.reduction.scores(np.asarray(row_raw, dtype=np.float64)[None, :], kind,
                                       np.asarray([qnorm]))[0]
        pairs, taken = [], set()
        for i, s in zip(row_ids, scores, strict=False):
            if i not in excluded and i not in taken:
                taken.add(i)
                pairs.append((i, float(s)))
        # The conversion is monotone; a stable re-sort only repairs float ties.
        pairs.sort(key=lambda p: -p[1])
        return pairs[:k]

    def _cached_count(self, spec: VersionSpec) -> int:
        key = (spec.version, spec.created_at)  # a number re-created after a crash is another key
        n = self._counts_cache.get(key)
        if n is None:
            n = self._counts_cache[key] = int(self._count(spec.version))
        return n

    def _exact_fallback(self, spec, queries, k):
        try:
            return self._exact_search(spec, queries, k)
        except NotImplementedError:
            if not self._warned_no_exact:
                self._warned_no_exact = True
                log.warning("%s: the index returned fewer than k items and this backend has no "
                            "exact-search hook (_exact_search or _iter_stored); answers are short",
                            self.name)
            return None

    @property
    def has_exact_fallback(self) -> bool:
        """True when short ANN answers are completed by an exact scan (see :meth:`_exact_search`)."""
        cls = type(self)
        return (cls._exact_search is not VectorStore._exact_search
                or cls._iter_stored is not VectorStore._iter_stored)

    def adopt_version(self, spec: "VersionSpec | dict") -> VersionSpec:
        """Trust ``spec`` for its version: from now on this object searches and reads that
        version without consulting the store's own finalized marker.

        The caller read ``spec`` from the model registry (the authority on complete versions;
        the publisher stores :meth:`version_info` there), so a store that lost its own
        bookkeeping — Milvus forgets collection properties when its server restarts — keeps
        serving what the registry says is published.
        """
        if isinstance(spec, dict):
            spec = VersionSpec(**spec)
        if not isinstance(spec, VersionSpec):
            raise TypeError(f"spec must be a VersionSpec or its dict, got {type(spec).__name__}")
        self._adopted[check_version(spec.version)] = spec
        return spec

    def make_current(self, version: int) -> None:
        """Atomically make a finalized version the one ``current_version`` returns."""
        spec = self._published_spec(version)
        self._set_current(spec.version)

    def current_version(self) -> int | None:
        """The current version, or ``None`` before any version was made current."""
        return self._current()

    def list_versions(self) -> list[int]:
        """Finalized versions in the store, ascending."""
        return sorted(self._versions())

    def stored_versions(self) -> list[int]:
        """Every version with anything stored, finalized or not (a killed writer's leftovers
        included), ascending. The publisher removes those its registry does not keep."""
        return sorted(set(self._stored_versions()))

    def drop_version(self, version: int) -> None:
        """Delete a version (not the current one), finalized or not; unknown versions raise."""
        version = check_version(version)
        if version == self.current_version():
            raise ValueError(f"version {version} is current; make another version current first")
        self._adopted.pop(version, None)
        self._drop(version)

    def purge_leftovers(self) -> list[str]:
        """Remove partial writes of killed writers that belong to no version number
        (temporary files, trash); returns what was removed. Call it only while no other
        writer is publishing (the publisher holds ``mcrecall.train.lock.publisher_lock``)."""
        return self._purge_leftovers()

    def version_info(self, version: int) -> VersionSpec:
        """The :class:`VersionSpec` a finalized version was created with."""
        return self._published_spec(version)

    def count(self, version: int) -> int:
        """Number of items in a finalized version."""
        return self._count(self._published_spec(version).version)

    def close(self) -> None:  # noqa: B027  (a no-op default: a backend without resources keeps it)
        """Release connections and cached indexes."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"{type(self).__name__}(collection={self.collection!r}, uri={self.uri!r}, "
                f"data_dir={str(self.data_dir)!r})")

    # ------------------------------------------------------------------ helpers
    def _resolve_index_type(self, index_type: str) -> str:
        if not isinstance(index_type, str):
            raise ValueError(f"index_type must be a string, got {index_type!r}")
        it = index_type.upper()
        if it == "AUTOINDEX":
            it = self.auto_index_type
        if it not in self.index_types:
            raise ValueError(
                f"unknown index type {index_type!r} for backend {self.name!r}; "
                f"expected one of {', '.join(self.index_types + ('AUTOINDEX',))}"
            )
        return it

    def _building_spec(self, version: int) -> VersionSpec:
        spec = self._pending_spec(version)
        if spec is None:
            if version in self._versions():
                raise ValueError(f"version {version} is finalized and immutable; create a new version")
            raise VersionNotFoundError(f"version {version} was not created (call create_version first)")
        return spec

    def _published_spec(self, version) -> VersionSpec:
        version = check_version(version)
        spec = self._adopted.get(version) or self._spec(version)
        if spec is None:
            raise VersionNotFoundError(
                f"version {version} of collection {self.collection!r} does not exist or is not finalized"
            )
        return spec

    # ------------------------------------------------------------------ backend primitives
    @abc.abstractmethod
    def _create(self, spec: VersionSpec) -> None:
        """Create (replacing a stale non-current one) the empty collection of ``spec``."""

    @abc.abstractmethod
    def _pending_spec(self, version: int) -> VersionSpec | None:
        """Spec of a version created but not yet finalized (by this object), else None."""

    @abc.abstractmethod
    def _add(self, version: int, ids: list[str], stored: np.ndarray, norms: np.ndarray) -> None:
        """Write one batch of already-reduced vectors."""

    def _replace(self, spec: VersionSpec, ids: list[str], stored: np.ndarray, norms: np.ndarray) -> None:
        """Replace/add already-reduced rows of a finalized version, atomically for readers."""
        raise NotImplementedError(f"the {self.name} backend cannot replace items of a published version")

    @abc.abstractmethod
    def _finalize(self, version: int) -> int:
        """Publish a pending version; return its item count."""

    @abc.abstractmethod
    def _spec(self, version: int) -> VersionSpec | None:
        """Spec of a finalized version, or None if there is none."""

    @abc.abstractmethod
    def _search(self, spec: VersionSpec, queries: np.ndarray, k: int) -> tuple[list[list[str]], list[Any], str]:
        """Raw top-k: (ids per query, raw values per query, raw kind for metric.scores)."""

    @abc.abstractmethod
    def _get(self, version: int, ids: list[str]) -> dict[str, tuple[np.ndarray, float]]:
        """Stored vector and model norm of each id found."""

    @abc.abstractmethod
    def _set_current(self, version: int) -> None: ...

    @abc.abstractmethod
    def _current(self) -> int | None: ...

    @abc.abstractmethod
    def _versions(self) -> list[int]: ...

    @abc.abstractmethod
    def _drop(self, version: int) -> None: ...

    @abc.abstractmethod
    def _count(self, version: int) -> int: ...

    # -- optional hooks (defaults keep older backends working) --------------------------------
    def _exact_search(self, spec: VersionSpec, queries: np.ndarray, k: int) -> tuple[list[list[str]], list[Any], str]:
        """Exact top-k over every vector of the version: same contract as :meth:`_search`.

        Called when an approximate index answered a query with fewer than k items. The
        default scans what :meth:`_iter_stored` yields with numpy (``mcrecall.plugins.metric.exact_top_k``);
        a backend overrides either this method (e.g. a brute-force search of its own) or
        :meth:`_iter_stored`. Without both, short answers stay short (logged once).
        """
        chunks = self._iter_stored(spec.version)
        largest = spec.metric != "L2"
        best_ids: list[list[str]] = [[] for _ in range(len(queries))]
        best_raw = np.zeros((len(queries), 0))
        kind = "ip"
        for chunk_ids, chunk_stored in chunks:
            chunk_ids = list(chunk_ids)
            if not chunk_ids:
                continue
            labels, raw, kind = exact_top_k(spec.metric, queries, np.asarray(chunk_stored), k)
            cand_raw = np.concatenate([best_raw, raw.astype(np.float64)], axis=1)
            order = top_k(cand_raw, k, largest)
            new_ids = []
            for j in range(len(queries)):
                cand = best_ids[j] + [chunk_ids[c] for c in labels[j]]
                new_ids.append([cand[o] for o in order[j]])
            best_ids, best_raw = new_ids, np.take_along_axis(cand_raw, order, axis=1)
        return best_ids, list(best_raw), kind

    def _iter_stored(self, version: int) -> Iterable[tuple[list[str], np.ndarray]]:
        """Yield ``(ids, stored vectors)`` chunks covering every item of a finalized version
        (the reduced vectors the index holds). Optional: used by the default
        :meth:`_exact_search`."""
        raise NotImplementedError

    def _stored_versions(self) -> list[int]:
        """Versions with anything stored, finalized or not. Default: the finalized ones; a
        backend whose unfinalized versions persist (Milvus collections) lists them too."""
        return self._versions()

    def _purge_leftovers(self) -> list[str]:
        """Remove partial writes that belong to no version number; default: nothing to do."""
        return []

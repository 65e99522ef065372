r"""Item refresh: give new and changed items vectors in the CURRENT version, without retraining.

``mcrecall refresh`` (once) and ``mcrecall refresh --every 2s`` (loop). One cycle, under the
publisher lock (:mod:`mcrecall.train.lock`), so it lands entirely in version N before a publication of
N+1 flips the pointer, or runs after it against N+1:

1. N = the current version; S = the store seq N's items are up to date with (N's
   ``store_seq``, or the seq of N's last refresh).
2. The items whose triples changed after S — from the triple store's per-item change log, so
   the cost is O(changed items), never a pass over all items or triples.
3. Each item's triples through the by-item index (O(its triples)), joined with N's OWN user
   vectors (users.lmdb, version N). Users without a vector in N are left out: a fold-in vector
   would be computed against N's items and is not what N's training saw; they count once N+1 is
   trained. An item left with nothing to learn from keeps its old vector (or stays unknown).
4. :func:`mcrecall.train.foldin.fold_in_item`: the objective's own closed-form item step with N's λ
   (squared/implicit, dot/cosine). ``bce`` has no closed form: such versions are not refreshed.
5. ``VectorStore.replace_items(N, ...)`` — one atomic step per cycle for readers. For ``dot``
   through L2/COSINE the reduction needs ‖b‖ ≤ M (N's ``max_norm``, published with headroom):
   a longer vector is scaled down to M (counted as ``clipped``), which keeps its direction and
   the index exact.
6. ``refresh/<N>`` in users.lmdb: seq, generation (+1: the serve client drops its cached item
   vectors of N), counts. A kill before this step only makes the next cycle redo the same items.

A cycle with no changed items writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from mcrecall.core.crashpoints import REFRESH as CRASH_HOOK
from mcrecall.core.crashpoints import crash_point as _crash_point
from mcrecall.train.foldin import fold_in_item
from mcrecall.train.lock import PublisherBusyError, publisher_lock
from mcrecall.train.model_log import ModelLogError, model_log_from_config
from mcrecall.train.objectives import OBJECTIVES
from mcrecall.train.versions import ModelRegistry

CRASH_ENV = CRASH_HOOK.env  # MCR_REFRESH_CRASH_AT (core/crashpoints.py)
CRASH_POINTS = ("locked", "solved", "items", "recorded")
CRASH_EXIT_CODE = CRASH_HOOK.exit_code  # 87
_CLIP = 1.0 - 1e-6  # stay just inside M (the reduction checks ‖b‖ ≤ M with float slack)


def crash_point(name: str) -> None:
    """Exit at once (status 87) if ``MCR_REFRESH_CRASH_AT`` names this step (tests only)."""
    _crash_point(name, CRASH_HOOK)


@dataclass
class RefreshResult:
    """What one cycle did.

    status : ``refreshed`` | ``unchanged`` (no changed items: nothing written) | ``no_version``
        | ``busy`` (publisher lock held) | ``unsupported`` (objective without an item step)
    """

    status: str
    version: int | None = None
    changed: int = 0  # items whose triples changed since the last refresh
    updated: int = 0  # items given a vector
    skipped: int = 0  # changed items with nothing to learn from in this version
    clipped: int = 0  # vectors scaled down to the version's max_norm
    holder: str = ""  # busy: who holds the publisher lock (train.lock.holder)
    store_seq: int = 0  # store seq the version's items are now up to date with
    seconds: float = 0.0


class Refresher:
    """Item refresh against one data directory; keeps per-version caches between cycles.

    Parameters
    ----------
    cfg : core.config.Config
    registry, vector_store, triple_store : optional open handles to share (one LMDB handle per
        process and path); by default opened here and closed by :meth:`close`.
    """

    def __init__(self, cfg, *, registry=None, vector_store=None, triple_store=None,
                 log: Callable[[str], None] = print):
        self.cfg = cfg
        self.log = log
        self._own = {"registry": registry is None, "vs": vector_store is None}
        self.registry = registry or ModelRegistry(cfg.data_dir,
                                                  map_size=int(cfg.store.map_size_gb * (1 << 30)))
        self._vs = vector_store
        self._ts = triple_store
        self._gram: tuple[int, np.ndarray] | None = None  # (version, Σ a aᵀ over its users)
        self.model_log = model_log_from_config(cfg)  # [replication] publish: cycles go to the log

    @property
    def vs(self):
        if self._vs is None:
            from mcrecall.plugins import vector_store_from_config

            self._vs = vector_store_from_config(self.cfg)
        return self._vs

    @property
    def store(self):
        if self._ts is None:
            from mcrecall.ingest.store import TripleStore

            self._ts = TripleStore(self.cfg.data_dir, readonly=True,
                                   map_size_gb=self.cfg.store.map_size_gb)
        return self._ts

    def close(self) -> None:
        if self.model_log is not None:
            self.model_log.close()
        if self._vs is not None and self._own["vs"]:
            self._vs.close()
            self._vs = None
        if self._own["registry"]:
            self.registry.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ one cycle
    def run_once(self, *, wait: bool = True, timeout_s: float | None = None) -> RefreshResult:
        """One refresh cycle under the publisher lock (``busy`` if it cannot get it)."""
        t0 = time.perf_counter()
        try:
            with publisher_lock(self.cfg.data_dir, wait=wait, timeout_s=timeout_s,
                                role="mcrecall refresh"):
                crash_point("locked")
                res = self._cycle()
        except PublisherBusyError:
            from .lock import holder

            return RefreshResult("busy", holder=holder(self.cfg.data_dir))
        res.seconds = time.perf_counter() - t0
        return res

    def _cycle(self) -> RefreshResult:
        reg = self.registry
        version = reg.current_version()
        if version is None:
            return RefreshResult("no_version")
        meta = reg.metadata(version)
        fm = meta.get("foldin") or {}
        if fm.get("objective") not in OBJECTIVES or not OBJECTIVES[fm["objective"]].item_step:
            return RefreshResult("unsupported", version)
        info = reg.refresh_info(version) or {}
        since = int(info.get("seq", meta.get("store_seq", 0)))
        if not (self.cfg.data_dir / "triples.lmdb" / "data.mdb").exists():
            return RefreshResult("unchanged", version, store_seq=since)
        items, seq_now = self.store.changed_items(since)
        if not items:
            return RefreshResult("unchanged", version, store_seq=since)
        ids, vectors = self.solve(version, meta, items)
        clipped = 0
        if ids:
            spec = self.vs.version_info(version)
            if spec.reduction.augmented:
                vectors, clipped = clip_norms(vectors, spec.max_norm)
        crash_point("solved")
        res = RefreshResult("refreshed", version, changed=len(items), updated=len(ids),
                            skipped=len(items) - len(ids), clipped=clipped, store_seq=seq_now)
        record = {
            "seq": seq_now,
            "generation": int(info.get("generation", 0)) + 1,
            "at_unix": time.time(),
            "items_total": int(info.get("items_total", 0)) + len(ids),
            "last": {k: v for k, v in asdict(res).items() if k not in ("status", "seconds")},
        }
        if self.model_log is not None:
            # on the log (acknowledged) before it is applied here: a failure leaves N as it was
            # and the next cycle redoes the same items; a replica then gets the same cycle
            self.model_log.publish_refresh(version, record, ids, vectors)
        if ids:
            self.vs.replace_items(version, ids, vectors)
        crash_point("items")
        reg.write_refresh(version, record)
        crash_point("recorded")
        return res

    def solve(self, version: int, meta: dict, items: list[str]) -> tuple[list[str], np.ndarray]:
        """Vectors of ``items`` in ``version`` from their triples and the version's users.

        Returns the ids that got a vector and their (n, dim) published-form vectors.
        """
        hist = self.store.item_histories(items)
        priors = item_priors(self.registry, self.store, version, items)  # the hybrid model's parts
        users = list(dict.fromkeys(u for us, _ in hist for u in us))
        U = self.registry.user_vectors(version, users) if users else None
        row = {u: j for j, u in enumerate(users)}
        gram = self._user_gram(version) if meta["foldin"]["objective"] == "implicit" else None
        ids, vecs = [], []
        for k, (item, (us, scores)) in enumerate(zip(items, hist, strict=False)):
            prior = None if priors is None or not priors[k].any() else priors[k]
            known = np.zeros(0, bool)
            if us:
                r = np.fromiter((row[u] for u in us), dtype=np.int64, count=len(us))
                V = U[r]
                known = ~np.isnan(V).any(axis=1)  # users without a vector in this version
            if not known.any() or (gram is not None and not (scores[known] > 0).any()):
                if prior is not None:  # no interactions (yet): its attribute part alone
                    ids.append(item)
                    vecs.append(prior.astype(np.float32))
                continue
            x = fold_in_item(V[known], scores[known], meta, user_gram=gram,
                             **({"prior": prior} if prior is not None else {}))
            if x is None or not np.isfinite(x).all() or not x.any():
                continue
            ids.append(item)
            vecs.append(x)
        dim = int(meta["dim"])
        return ids, (np.stack(vecs) if vecs else np.zeros((0, dim), np.float32))

    def _user_gram(self, version: int) -> np.ndarray:
        """Σ_u a_u a_uᵀ over the version's users (implicit's all-cells term), once per version."""
        if self._gram is None or self._gram[0] != version:
            U = self.registry.user_matrix(version).astype(np.float64)
            self._gram = (version, U.T @ U)
        return self._gram[1]


def item_priors(registry, store, version: int, items: list[str]) -> np.ndarray | None:
    """(len(items), dim) attribute parts of ``items`` (their current tokens x the version's
    token embeddings, train/attributes.py), or None when the version has none."""
    tables = registry.tokens(version, "item")
    if tables is None:
        return None
    from .attributes import build_tokens

    vocab, E = tables
    tm = build_tokens(len(items), store.entity_attributes("item", items), vocab=vocab)
    return tm.parts(E)


def clip_norms(vectors: np.ndarray, max_norm: float) -> tuple[np.ndarray, int]:
    """Scale rows longer than ``max_norm`` down to it (direction kept); (vectors, how many)."""
    v = np.asarray(vectors, dtype=np.float32).copy()
    n = np.linalg.norm(v.astype(np.float64), axis=1)
    over = n > max_norm * _CLIP
    if over.any():
        v[over] *= (max_norm * _CLIP / n[over])[:, None].astype(np.float32)
    return v, int(over.sum())


def refresh_once(cfg, *, wait: bool = True, timeout_s: float | None = None,
                 log: Callable[[str], None] = print) -> RefreshResult:
    """One refresh cycle with handles opened and closed here (``mcrecall refresh``)."""
    with Refresher(cfg, log=log) as r:
        return r.run_once(wait=wait, timeout_s=timeout_s)


def describe(res: RefreshResult) -> str:
    """One log line for a cycle."""
    if res.status == "refreshed":
        extra = f", {res.clipped} clipped to max_norm" if res.clipped else ""
        return (f"refresh: version {res.version}: {res.updated} item(s) updated of {res.changed} "
                f"changed ({res.skipped} without usable triples{extra}), up to store seq "
                f"{res.store_seq}, {res.seconds * 1000:.0f} ms")
    if res.status == "unchanged":
        return f"refresh: version {res.version}: no changed items since store seq {res.store_seq}"
    if res.status == "no_version":
        return "refresh: no model version yet (run `mcrecall train` first)"
    if res.status == "busy":
        who = res.holder or "another process"
        if "(mcrecall refresh)" in who:  # not a publication: one refresher per data dir is enough
            return f"refresh: another refresher holds the publisher lock ({who}); will retry"
        return f"refresh: a publication is in progress ({who}); will retry"
    return (f"refresh: version {res.version} was trained with an objective without a closed-form "
            "item step (bce); items wait for the next training")


# ---------------------------------------------------------------------- command line
def add_refresh_arguments(parser):
    """Options of ``mcrecall refresh``."""
    from mcrecall.train.cli import parse_duration

    parser.add_argument("--every", metavar="DURATION", type=parse_duration, default=None,
                        help="repeat on this period (e.g. 2s, 1m); a cycle without changed items "
                             "writes nothing")
    return parser


def _environmental(e: BaseException) -> bool:
    """An error about the environment (says what to do in its message), not a bug here."""
    from mcrecall.plugins.milvus_store import MilvusStoreLockedError

    return isinstance(e, (MilvusStoreLockedError, OSError)) or type(e).__module__.startswith("lmdb")


def run_refresh(args, cfg) -> int:
    """``mcrecall refresh [--every D]``: 0 done (or stopped by Ctrl-C); 1 no version / busy."""
    import sys
    import traceback

    every = getattr(args, "every", None)
    if not every:
        try:
            res = refresh_once(cfg, wait=True, timeout_s=60.0)
        except ModelLogError as e:  # [replication] publish and Kafka unreachable: N unchanged
            print(f"mcrecall refresh: {e}; the version is unchanged", file=sys.stderr, flush=True)
            return 1
        print(describe(res), flush=True)
        return 0 if res.status in ("refreshed", "unchanged", "unsupported") else 1
    print(f"refresh: every {every:g} s (Ctrl-C stops)", flush=True)
    r = Refresher(cfg)
    last = None
    try:
        while True:
            started = time.monotonic()
            try:
                res = r.run_once(wait=True, timeout_s=every)
                line = describe(res)
                if res.status == "refreshed" or line != last:  # quiet while nothing changes
                    print(line, flush=True)
                last = line
            except ModelLogError as e:  # the log is down: the version is unchanged, retried
                print(f"refresh: {e}; will retry", file=sys.stderr, flush=True)
            except Exception as e:  # the version keeps serving; the next cycle redoes the work
                if _environmental(e):  # a locked Milvus file, a full or read-only disk: one line
                    line = f"refresh: cycle failed: {' '.join(str(e).split())}; will retry"
                    if line != last:
                        print(line, file=sys.stderr, flush=True)
                    last = line
                else:
                    traceback.print_exc()
                    print("refresh: cycle failed; will retry", file=sys.stderr, flush=True)
                r.close()
                r = Refresher(cfg)
            time.sleep(max(0.0, every - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0
    finally:
        r.close()

"""Publication of a model version (DESIGN §4): write N completely, then ONE atomic step.

Order, and what a crash after each step leaves (the previous version C stays current until
step 5, because readers follow only the pointer in users.lmdb):

1. user vectors of N into users.lmdb          -> rows without metadata: invisible, cleaned next run
2. item vectors into ``<collection>_v<N>``     -> unfinalized: invisible, replaced/dropped
3. finalize (index built and loaded)          -> finalized, non-current: dropped next run
4. metadata of N into users.lmdb              -> complete but not current: dropped next run
5. ``current`` := N in users.lmdb             -> THE atomic step: N serves from here on
6. vector store ``make_current(N)`` (Milvus alias) -> reconciled by the next run if missed
7. drop every version except N and C (C is kept for recalls in flight)

``MCR_TRAIN_CRASH_AT=<step name>`` makes the process ``os._exit`` right after that step (for
the crash tests; the name has no ``MCRECALL_`` prefix because the config loader owns those).
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from .versions import ModelRegistry

CRASH_ENV = "MCR_TRAIN_CRASH_AT"
CRASH_POINTS = ("start", "users", "items", "finalize", "metadata", "current", "alias", "dropped")
CRASH_EXIT_CODE = 86
# M of the dot -> L2/COSINE reduction is the largest item norm times this: item refresh
# (train/refresh.py) may add longer vectors later, and any M >= every norm keeps search exact.
NORM_HEADROOM = 1.25


def crash_point(name: str) -> None:
    """Exit abruptly (no cleanup, no flush) if the crash-test hook names this step."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(CRASH_EXIT_CODE)


def next_version(registry: ModelRegistry, vs) -> int:
    """One more than any version number either store has seen (numbers only grow)."""
    seen = [0, registry.current_version() or 0, *registry.stored_versions()]
    try:
        seen += list(vs.list_versions())
        seen.append(vs.current_version() or 0)
    except Exception:  # a store that cannot list is still publishable to
        pass
    return max(seen) + 1


def _drop_vs(vs, version: int, log) -> None:
    try:
        vs.drop_version(version)
    except Exception as e:  # unknown or unfinalized version: nothing to drop, or a later run will
        log(f"  note: could not drop vector-store version {version}: {e}")


def cleanup_stale(registry: ModelRegistry, vs, log: Callable[[str], None] = print) -> None:
    """Remove leftovers of interrupted runs and re-point the vector store at the current version.

    Stale = any version newer than the current one, or without metadata. Complete versions older
    than the current one are left for :func:`drop_old`.
    """
    cur = registry.current_version()
    complete = set(registry.versions())
    for v in registry.stored_versions():
        if v != cur and (cur is None or v > cur or v not in complete):
            log(f"  removing leftover version {v} from users.lmdb")
            registry.drop(v)
    try:
        vs_versions = list(vs.list_versions())
    except Exception:
        vs_versions = []
    if cur is not None:
        try:
            if vs.current_version() != cur and cur in vs_versions:
                log(f"  re-pointing the vector store at the current version {cur}")
                vs.make_current(cur)
        except Exception as e:
            log(f"  note: could not re-point the vector store: {e}")
    for v in vs_versions:
        if v != cur and (cur is None or v > cur or v not in complete):
            log(f"  removing leftover collection of version {v}")
            _drop_vs(vs, v, log)


def drop_old(registry: ModelRegistry, vs, keep: set[int], log=print) -> list[int]:
    """Drop every version not in ``keep`` from both stores."""
    dropped = []
    for v in registry.stored_versions():
        if v not in keep:
            registry.drop(v)
            dropped.append(v)
    try:
        for v in vs.list_versions():
            if v not in keep:
                _drop_vs(vs, v, log)
                dropped.append(v)
    except Exception as e:
        log(f"  note: could not list vector-store versions: {e}")
    return sorted(set(dropped))


def publish(registry: ModelRegistry, vs, *, version: int, user_ids: list[str],
            user_vectors: np.ndarray, item_ids: list[str], item_vectors: np.ndarray, meta: dict,
            metric: str, index_type: str, log: Callable[[str], None] = print) -> int:
    """Write version ``version`` completely, make it current atomically, drop old versions.

    Returns the version number. The item vectors are model-space; the plugin applies the
    metric reduction (``max_norm`` = the largest item norm × NORM_HEADROOM, needed for dot through L2/COSINE).
    """
    previous = registry.current_version()
    crash_point("start")
    registry.write_users(version, user_ids, user_vectors)
    crash_point("users")
    norms = np.linalg.norm(item_vectors.astype(np.float64), axis=1)
    max_norm = float(norms.max()) * NORM_HEADROOM if len(norms) and norms.max() > 0 else 1.0
    vs.create_version(version, dim=int(item_vectors.shape[1]), metric=metric,
                      index_type=index_type, similarity=meta["similarity"], max_norm=max_norm)
    vs.upsert(version, item_ids, item_vectors)
    crash_point("items")
    vs.finalize(version)
    crash_point("finalize")
    meta = dict(meta, version=version, max_norm=max_norm)
    registry.write_metadata(version, meta)
    crash_point("metadata")
    registry.set_current(version)  # the one atomic step
    crash_point("current")
    try:
        vs.make_current(version)
    except Exception as e:  # serving follows users.lmdb; the next run re-points the store
        log(f"  warning: vector store make_current({version}) failed: {e}")
    crash_point("alias")
    keep = {version} | ({previous} if previous is not None else set())
    dropped = drop_old(registry, vs, keep, log)
    if dropped:
        log(f"  dropped old version(s) {dropped}")
    crash_point("dropped")
    return version

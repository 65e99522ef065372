"""Publication of a model version (DESIGN §4): write N completely, then ONE atomic step.

One publisher at a time: every function here runs under the publisher lock
(:func:`mcrecall.train.lock.publisher_lock`, re-entrant; ``mcrecall train`` holds it for its whole run),
so version numbers are allocated without races and the cleanup below can tell a killed
publisher's leftovers from a live publisher's version in flight — a live one holds the lock.

The registry (``users.lmdb``) is the authority on which versions exist; the vector store's
own lists are only searched for leftovers. Order, and what a kill after each step leaves (the
previous version C stays current until step 6, because readers follow only the pointer in
users.lmdb):

0. allocate N (registry, one transaction; recorded in flight)  -> skipped number, record cleaned
1. user vectors of N into users.lmdb          -> rows without metadata: removed next run
2. ``<collection>_v<N>`` created, items upserted -> unfinalized collection / temp files: removed
3. finalize (index built and loaded)          -> finalized, non-current: removed next run
4. check: N has every user and item vector, metadata (with the store's spec) into users.lmdb
                                              -> complete but not current: removed next run
4b. ``[replication] publish``: N to the model log, acknowledged (train/model_log.py)
                                              -> on the log, not current: removed next run here;
                                                 replicas may serve it until the next version
5. ``current`` := N in users.lmdb             -> THE atomic step: N serves from here on
6. vector store ``make_current(N)`` (Milvus alias) -> reconciled by the next run if missed
7. drop every version except N and C (C is kept for recalls in flight), and leftovers

``MCR_TRAIN_CRASH_AT=<step name>`` SIGKILLs the process right after that step (crash tests;
:mod:`mcrecall.core.crashpoints`).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from mcrecall.core.crashpoints import TRAIN as CRASH_HOOK
from mcrecall.core.crashpoints import crash_point

from .lock import publisher_lock
from .model_log import ModelLogError
from .versions import ModelRegistry

CRASH_POINTS = ("start", "users", "created", "items", "finalize", "metadata", "logged", "current",
                "alias", "dropped")
CRASH_ENV = CRASH_HOOK.env  # MCR_TRAIN_CRASH_AT (core/crashpoints.py)
CRASH_EXIT_CODE = CRASH_HOOK.exit_code  # -9: SIGKILL, as subprocess reports it
# M of the dot -> L2/COSINE reduction is the largest item norm times this: item refresh
# (train/refresh.py) may add longer vectors later, and any M >= every norm keeps search exact.
NORM_HEADROOM = 1.25


class IncompleteVersionError(RuntimeError):
    """A version about to be made current lacks user or item vectors (never made current)."""


def _data_dir(registry: ModelRegistry):
    return registry.path.parent


def next_version(registry: ModelRegistry, vs) -> int:
    """Allocate the next version number atomically: above every number the registry ever
    handed out and every version the vector store holds (numbers only grow)."""
    seen = [0]
    try:
        seen += list(vs.stored_versions())
        seen.append(vs.current_version() or 0)
    except Exception:  # a store that cannot list is still publishable to
        pass
    with publisher_lock(_data_dir(registry)):
        return registry.allocate_version(max(seen) + 1)


def _drop_vs(vs, version: int, log) -> None:
    try:
        vs.drop_version(version)
    except Exception as e:  # unknown version: nothing to drop, or a later run will
        log(f"  note: could not drop vector-store version {version}: {e}")


def _stale_inflight(registry: ModelRegistry) -> set[int]:
    """In-flight versions whose publication is over: every one of other processes (the caller
    holds the lock, so their publishers are gone) and this process's own but its newest (an
    earlier run of this process that failed before publishing, e.g. in an ``--every`` loop)."""
    me = (os.getpid(), os.uname().nodename)
    flying = registry.inflight()
    own = [v for v, rec in flying.items() if (rec.get("pid"), rec.get("host")) == me]
    newest = max(own, default=None)
    return {v for v in flying if v != newest}


def cleanup_stale(registry: ModelRegistry, vs, log: Callable[[str], None] = print) -> None:
    """Remove leftovers of killed publishers and re-point the vector store at the current version.

    Stale = any version newer than the current one, or without metadata, that is not in flight
    in this process. Complete versions older than the current one are left for
    :func:`drop_old`. Holds the publisher lock, so no other live publisher has a version in
    flight.
    """
    with publisher_lock(_data_dir(registry)):
        cur = registry.current_version()
        complete = set(registry.versions())
        dead = _stale_inflight(registry)
        mine = set(registry.inflight()) - dead
        for v in dead:
            registry.clear_inflight(v)
        for v in registry.stored_versions():
            if v != cur and v not in mine and (cur is None or v > cur or v not in complete):
                log(f"  removing leftover version {v} from users.lmdb")
                registry.drop(v, in_flight_ok=True)
        try:
            vs_versions = list(vs.stored_versions())
        except Exception as e:
            log(f"  note: could not list vector-store versions: {e}")
            vs_versions = []
        if cur is not None:
            try:
                if vs.current_version() != cur:
                    spec = registry.metadata(cur).get("vector_store")
                    if spec:
                        vs.adopt_version(spec)
                    log(f"  re-pointing the vector store at the current version {cur}")
                    vs.make_current(cur)
            except Exception as e:
                log(f"  note: could not re-point the vector store: {e}")
        for v in vs_versions:
            if v != cur and v not in mine and (cur is None or v > cur or v not in complete):
                log(f"  removing leftover collection of version {v}")
                _drop_vs(vs, v, log)
        try:
            for name in vs.purge_leftovers():
                log(f"  removed leftover {name}")
        except Exception as e:
            log(f"  note: could not remove vector-store leftovers: {e}")


def drop_old(registry: ModelRegistry, vs, keep: set[int], log=print) -> list[int]:
    """Drop every version not in ``keep`` (and not in flight in this process) from both stores."""
    dropped = []
    with publisher_lock(_data_dir(registry)):
        dead = _stale_inflight(registry)
        mine = set(registry.inflight()) - dead
        keep = set(keep) | mine
        for v in dead:
            registry.clear_inflight(v)
        for v in registry.stored_versions():
            if v not in keep:
                registry.drop(v, in_flight_ok=True)
                dropped.append(v)
        try:
            for v in vs.stored_versions():
                if v not in keep:
                    _drop_vs(vs, v, log)
                    dropped.append(v)
        except Exception as e:
            log(f"  note: could not list vector-store versions: {e}")
        try:
            vs.purge_leftovers()
        except Exception as e:
            log(f"  note: could not remove vector-store leftovers: {e}")
    return sorted(set(dropped))


def publish(registry: ModelRegistry, vs, *, version: int, user_ids: list[str],
            user_vectors: np.ndarray, item_ids: list[str], item_vectors: np.ndarray, meta: dict,
            metric: str, index_type: str, log: Callable[[str], None] = print,
            tokens: dict | None = None, model_log=None) -> int:
    """Write version ``version`` completely, make it current atomically, drop old versions.

    ``version`` comes from :func:`next_version`. Returns the version number. The item vectors
    are model-space; the plugin applies the metric reduction (``max_norm`` = the largest item
    norm × NORM_HEADROOM, needed for dot through L2/COSINE). ``tokens``: ``{kind: (vocab,
    embeddings)}`` of the hybrid model (train/attributes.py), stored with the version.

    ``model_log`` (:class:`mcrecall.train.model_log.ModelLog`, ``[replication] publish``): the
    complete version is also written to the model log and acknowledged (acks=all) BEFORE the
    pointer flips; if that fails the version is removed and the previous one keeps serving.

    Raises
    ------
    ValueError
        No user or no item vectors, or ``version`` is already published.
    IncompleteVersionError
        After writing, the version lacks user or item vectors (it is removed, never current).
    """
    if len(user_ids) == 0 or len(item_ids) == 0:
        raise ValueError(f"refusing to publish version {version} with {len(user_ids)} user and "
                         f"{len(item_ids)} item vectors")
    with publisher_lock(_data_dir(registry)):
        previous = registry.current_version()
        if version in registry.versions() or version == previous:
            raise ValueError(f"version {version} is already published; allocate a new number "
                             "with next_version()")
        if version not in registry.inflight():
            registry.mark_inflight(version)  # a caller-chosen number
        try:
            for kind, (vocab, emb) in (tokens or {}).items():
                registry.write_tokens(version, kind, vocab, emb)
            _write_version(registry, vs, version, user_ids, user_vectors, item_ids,
                           item_vectors, meta, metric, index_type)
            if model_log is not None:  # replicas can rebuild N from the log before N serves
                sent = model_log.publish_version(version, registry.metadata(version), user_ids,
                                                 user_vectors, item_ids, item_vectors, tokens=tokens)
                log(f"  model log: version {version} -> {sent['topic']} ({sent['records']} "
                    f"records, {sent['bytes'] / 1e6:.1f} MB, acknowledged)")
            crash_point("logged")
        except BaseException as e:
            _abandon(registry, vs, version, log)
            if isinstance(e, ModelLogError):
                keeps = f"version {previous} keeps serving" if previous else "no version serves yet"
                raise ModelLogError(f"{e}; version {version} was not published, {keeps}") from None
            raise
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
        if model_log is not None:
            model_log.drop_versions(keep)
        crash_point("dropped")
    return version


def _write_version(registry, vs, version, user_ids, user_vectors, item_ids, item_vectors, meta,
                   metric, index_type) -> None:
    crash_point("start")
    registry.write_users(version, user_ids, user_vectors)
    crash_point("users")
    norms = np.linalg.norm(item_vectors.astype(np.float64), axis=1)
    max_norm = float(norms.max()) * NORM_HEADROOM if len(norms) and norms.max() > 0 else 1.0
    vs.create_version(version, dim=int(item_vectors.shape[1]), metric=metric,
                      index_type=index_type, similarity=meta["similarity"], max_norm=max_norm)
    crash_point("created")
    vs.upsert(version, item_ids, item_vectors)
    crash_point("items")
    vs.finalize(version)
    crash_point("finalize")
    # Never current without all its vectors: count what both stores really hold.
    n_users, n_items = registry.n_users(version), vs.count(version)
    want_users, want_items = len(set(map(str, user_ids))), len(set(item_ids))
    if n_users != want_users or n_items != want_items:
        raise IncompleteVersionError(
            f"version {version} holds {n_users}/{want_users} user and {n_items}/{want_items} "
            "item vectors after writing; not making it current")
    spec = json.loads(vs.version_info(version).to_json())
    meta = dict(meta, version=version, max_norm=max_norm, vector_store=spec)
    registry.write_metadata(version, meta)
    crash_point("metadata")


def _abandon(registry, vs, version, log) -> None:
    """Best effort after a failed publication: remove what was written of ``version``."""
    from mcrecall.core.datadir import is_disk_full_error
    from mcrecall.plugins import VersionNotFoundError

    for what, fn in (("users.lmdb", lambda: registry.drop(version, in_flight_ok=True)),
                     ("vector store", lambda: vs.drop_version(version))):
        try:
            fn()
        except VersionNotFoundError:  # it never got there: nothing to remove
            pass
        except Exception as e:
            if is_disk_full_error(e, registry.path):
                log(f"  note: the failed version {version} stays in the {what} until the next "
                    "publication removes it (the disk is full)")
            else:
                log(f"  note: could not remove the failed version {version} from the {what}: {e}")

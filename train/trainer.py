"""One training run: snapshot -> split -> fit (warm) -> evaluate -> gate -> refit -> publish.

``train_once(cfg)`` is the Python entry point behind ``mcrecall train``. Each step is one
function below; the model behind ``[train] objective`` comes from :mod:`mcrecall.train.objectives`
(one :class:`~train.objectives.FactorModel` interface, models registered by objective name).
"""

from __future__ import annotations

import os

# Before torch is imported: with the other core busy, OpenMP's default spin-waiting made steps
# 10-65x slower on these 2-core machines (docs/measurements.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

import numpy as np
import torch

from . import gate
from .attributes import snapshot_tokens
from .cold import cold_evaluation, cold_item_mask
from .distributed import world_size
from .evaluate import evaluate, popularity
from .fit import _log_default, fit_model, resolve_device
from .foldin import NEG_POOL  # noqa: F401  (re-exported)
from .model_log import model_log_from_config
from .objectives import OBJECTIVES, objective_spec, rows_with_data
from .publish import cleanup_stale, next_version, publish
from .report import format_table
from .split import holdout_from_hashes, id_hashes, split_metadata
from .versions import ModelRegistry

# objective -> (figure, direction, tolerance key): "lower" = smaller is better
GATE_METRIC = {name: spec.gate for name, spec in OBJECTIVES.items()}


def gate_refusal(tc, cur, cur_meta, ev, log=_log_default, same: dict | None = None) -> str | None:
    """Why the new model must not replace version ``cur`` (None: it may).

    ``same``: the new model's figures on version ``cur``'s own held-out pairs
    (:func:`mcrecall.train.gate.on_version_pairs`), compared with the figure stored with the
    version, measured on those pairs; without it (a version that recorded no hold-out), this
    run's figure on its own hold-out.

    The gate compares the objective's own held-out figure with the current version's: RMSE for
    ``squared`` (refused when it rises by more than ``[train] max_rmse_regression``), Recall@10
    for the ranking objectives ``implicit`` and ``bce``, whose RMSE is not an estimate of the
    score (refused when it falls by more than ``[train] max_recall_regression``, absolute).
    Versions of another objective or similarity are not compared.
    """
    if cur_meta is None:
        return None
    if (cur_meta.get("objective"), cur_meta.get("similarity")) != (tc.objective, tc.similarity):
        log(f"  note: version {cur} used objective {cur_meta.get('objective')}/"
            f"{cur_meta.get('similarity')}; the gate is not applied across objectives")
        return None
    fig, direction, key = objective_spec(tc.objective).gate
    old = cur_meta.get("evaluation", {}).get("model", {}).get(fig)
    new = (same if same is not None else ev)["model"].get(fig)
    if old is None or new is None:
        return None
    tol = getattr(tc, key)
    worse = new > old + tol if direction == "lower" else new < old - tol
    if not worse:
        return None
    if same is not None:
        return (f"held-out {fig} {new:.4f} on version {cur}'s {same['n_test']:,} held-out pairs is "
                f"worse than version {cur}'s {old:.4f} on the same pairs by more than {key} {tol}")
    return (f"held-out {fig} {new:.4f} is worse than version {cur}'s {old:.4f} by more than {key} "
            f"{tol} (version {cur} recorded no held-out pairs: its figure is from its own hold-out)")


def squared_comparison(snap, tc, train_mask, test_mask, *, user_hash, device: str,
                       log=_log_default) -> dict | None:
    """Held-out figures of the squared-error baseline on the same split: the ``squared``
    objective (dot), the original matrix-completion objective (docs/design.md §9).

    Reported beside a ranking objective's figures in every evaluation table, so that the
    default's advantage (or its absence) is measured on the deployment's own data each run.
    ``[train] compare_squared_sweeps`` sweeps, cold start, same dim and reg; not published.
    """
    n = tc.compare_squared_sweeps
    if tc.objective == "squared" or n == 0 or not test_mask.any():
        return None
    stc = replace(tc, objective="squared", similarity="dot", epochs=n)
    t0 = time.perf_counter()
    m, _, _ = fit_model(snap, stc, device=device, train_mask=train_mask, log=lambda s: None)
    tu, ti, ty = snap.user_idx[train_mask], snap.item_idx[train_mask], snap.score[train_mask]
    up, ip = m.published()
    ev = evaluate(up, ip, m.scale, (tu, ti, ty),
                  (snap.user_idx[test_mask], snap.item_idx[test_mask], snap.score[test_mask]),
                  user_hash=user_hash, max_users=tc.eval_users, device=device, baselines=False,
                  user_has=rows_with_data(tu, ty, len(snap.user_ids), "squared"),
                  item_has=rows_with_data(ti, ty, len(snap.item_ids), "squared"))
    fig = ev["model"]
    fig.update(sweeps=n, seconds=time.perf_counter() - t0)
    log(f"  squared-error baseline: squared objective, {n} sweeps on the same split, "
        f"{fig['seconds']:.2f} s")
    return fig


def refit_all(snap, tc, model, train_mask: np.ndarray, *, device: str, log=_log_default):
    """The model to serve: ``model`` (fitted on the training split) continued on ALL triples.

    The hold-out keeps the evaluation honest, but a model fitted on the split alone never sees
    10 % of the pairs and has no vector for a user or item whose triples all fall in the
    hold-out. After evaluation, ``[train] refit_sweeps`` sweeps (bce: epochs) of the same
    objective over every triple, warm-started from ``model`` (rows it had no data for start at
    random), give every user and item with triples a vector. The evaluation figures still
    describe ``model``; the returned info says what is served.

    Returns
    -------
    (served_model, info) with info ``{"kind": "refit_all" | "evaluated", "sweeps", ...}``.
    """
    if tc.refit_sweeps == 0 or train_mask.all():
        why = "refit_sweeps = 0" if tc.refit_sweeps == 0 else "no held-out triples"
        return model, {"kind": "evaluated", "sweeps": 0, "note": why}
    u, i, y = snap.user_idx[train_mask], snap.item_idx[train_mask], snap.score[train_mask]
    uw, iw = (a.copy() for a in model.published())
    uw[~rows_with_data(u, y, len(snap.user_ids), tc.objective)] = np.nan
    iw[~rows_with_data(i, y, len(snap.item_ids), tc.objective)] = np.nan
    rtc = replace(tc, epochs=tc.refit_sweeps)
    log(f"  refit on all {len(snap)} triples: {tc.refit_sweeps} "
        f"{objective_spec(tc.objective).step}s from the evaluated model")
    served, history, secs = fit_model(snap, rtc, device=device,
                                      train_mask=np.ones(len(snap), bool),
                                      warm=(uw, iw, model.token_tables()),
                                      log=log, scale=model.scale)
    return served, {"kind": "refit_all", "sweeps": tc.refit_sweeps, "n_triples": int(len(snap)),
                    "seconds": secs, "history": history}


def _warm_vectors(cfg, registry, vs, cur, cur_meta, snap, log):
    tc = cfg.train
    fm = (cur_meta or {}).get("foldin", {})
    if not (tc.warm_start and cur is not None and fm.get("objective") == tc.objective
            and fm.get("similarity") == tc.similarity and fm.get("factors") == tc.dim):
        if cur is not None and tc.warm_start:
            log(f"  cold start: version {cur} has another objective/similarity/dim")
        return None, {"from_version": None, "users": 0, "items": 0}
    try:
        uvec = registry.user_vectors(cur, snap.user_ids)
        ivec = np.asarray(vs.get_vectors(cur, snap.item_ids, missing="nan"), dtype=np.float32)
    except Exception as e:  # a broken old version must not block training: start cold
        log(f"  cold start: could not read version {cur}'s vectors ({e})")
        return None, {"from_version": None, "users": 0, "items": 0}
    info = {"from_version": cur, "users": int((~np.isnan(uvec).any(1)).sum()),
            "items": int((~np.isnan(ivec).any(1)).sum())}
    return (uvec, ivec), info


@dataclass
class TrainResult:
    status: str  # published | refused | unchanged | empty
    version: int | None = None


def train_once(cfg, force: bool = False, *, skip_unchanged: bool = False,
               log=_log_default) -> int | None:
    """Train on a snapshot of the triple store and publish a new version.

    Same as :func:`train_run` but returns only the new version number (or None).
    """
    return train_run(cfg, force, skip_unchanged=skip_unchanged, log=log).version


def train_run(cfg, force: bool = False, *, skip_unchanged: bool = False,
              log=_log_default, wait: bool = True) -> TrainResult:
    """:func:`_train_run` holding the publisher lock (train/lock.py) for the whole run: one
    trainer at a time per data dir. ``wait=False`` raises ``PublisherBusyError`` if another
    holds it; otherwise this waits, saying so in ``log``."""
    from .lock import publisher_lock_logged

    if not (cfg.data_dir / "triples.lmdb").exists():  # before the lock file: create nothing
        log(f"train: no triple store at {cfg.data_dir / 'triples.lmdb'}; nothing to train on")
        return TrainResult("empty")
    with publisher_lock_logged(cfg.data_dir, wait=wait, log=log):
        return _train_run(cfg, force, skip_unchanged=skip_unchanged, log=log)


@dataclass
class _Run:
    """What the steps of one run share: the settings, the snapshot and its split."""
    cfg: object
    snap: object
    train: np.ndarray  # bool mask of the training triples; ~train is the hold-out
    user_hash: np.ndarray
    device: str
    log: object
    # the hybrid model (train/cold.py): the held-out cold items (per item) and their triples;
    # None without item attributes
    cold_item: np.ndarray | None = None
    cold: np.ndarray | None = None
    item_tokens: object = None
    user_tokens: object = None

    @property
    def tc(self):
        return self.cfg.train

    @property
    def test(self) -> np.ndarray:
        return ~self.train if self.cold is None else ~self.train & ~self.cold

    def rows_with_data(self, mask: np.ndarray | None = None):
        """(user_has, item_has) for the triples in ``mask`` (default: the training split); a
        user or item with attributes has a vector too (its attribute part)."""
        s, obj = self.snap, self.tc.objective
        m = self.train if mask is None else mask
        uh = rows_with_data(s.user_idx[m], s.score[m], len(s.user_ids), obj)
        ih = rows_with_data(s.item_idx[m], s.score[m], len(s.item_ids), obj)
        if self.user_tokens is not None:
            uh = uh | self.user_tokens.has
        if self.item_tokens is not None:
            ih = ih | self.item_tokens.has
        return uh, ih


def take_snapshot(cfg, cur, cur_meta, *, skip_unchanged: bool, log):
    """Step 1: a consistent snapshot of the triple store, or the TrainResult that ends the run
    (``unchanged`` under ``skip_unchanged``, ``empty``)."""
    from mcrecall.ingest.store import TripleStore  # lazy: keep `import train.trainer` cheap to test

    store = TripleStore(cfg.data_dir, readonly=True, map_size_gb=cfg.store.map_size_gb)
    try:
        snap = store.snapshot()
    finally:
        store.close()
    if skip_unchanged and cur_meta is not None and cur_meta.get("store_seq") == snap.seq:
        log(f"train: store unchanged since version {cur} (seq {snap.seq}); skipping")
        return TrainResult("unchanged", None)
    if len(snap) == 0:
        log("train: the triple store is empty; nothing to train on")
        return TrainResult("empty")
    return snap


def split_snapshot(cfg, snap, *, log) -> _Run:
    """Step 2: the fixed hash hold-out (train/split.py) of the snapshot."""
    tc = cfg.train
    device = resolve_device(tc.device)
    hu, hi = id_hashes(snap.user_ids), id_hashes(snap.item_ids)
    test = holdout_from_hashes(snap.user_idx, snap.item_idx, hu, hi, tc.holdout_fraction)
    item_tokens, user_tokens = snapshot_tokens(snap, tc, "item"), snapshot_tokens(snap, tc, "user")
    cold_item = cold = None
    if item_tokens is not None:  # a hash share of the items with attributes is held out whole
        cold_item = cold_item_mask(hi, item_tokens.has)
        cold = cold_item[snap.item_idx]
        test = test | cold
    log(f"train: {len(snap)} triples ({int((~test).sum())} train / {int(test.sum())} held out), "
        f"{len(snap.user_ids)} users, {len(snap.item_ids)} items, store seq {snap.seq}; "
        f"objective {tc.objective}, similarity {tc.similarity}, dim {tc.dim}, device {device}")
    if item_tokens is not None or user_tokens is not None:
        log(f"  attributes: {0 if item_tokens is None else int(item_tokens.has.sum())} items "
            f"({0 if item_tokens is None else item_tokens.n_tokens} tokens), "
            f"{0 if user_tokens is None else int(user_tokens.has.sum())} users "
            f"({0 if user_tokens is None else user_tokens.n_tokens} tokens); "
            f"{0 if cold_item is None else int(cold_item.sum())} cold items held out")
    return _Run(cfg, snap, ~test, hu, device, log, cold_item, cold, item_tokens, user_tokens)


def fit_step(run: _Run, registry, vs, cur, cur_meta):
    """Step 3: fit on the training split, warm-started from the current version where it has
    the same objective, similarity and dim. Returns (model, history, seconds, warm_info)."""
    warm, warm_info = _warm_vectors(run.cfg, registry, vs, cur, cur_meta, run.snap, run.log)
    if warm_info["from_version"] is not None:
        run.log(f"  warm start from version {cur}: {warm_info['users']} users, "
                f"{warm_info['items']} items")
    model, history, secs = fit_model(run.snap, run.tc, device=run.device, train_mask=run.train,
                                     warm=warm, log=run.log, test_mask=run.test)
    return model, history, secs, warm_info


def evaluate_step(run: _Run, model) -> dict:
    """Step 4: held-out figures of ``model`` beside the baselines (most popular, global mean,
    the squared-error baseline)."""
    s, tr, te = run.snap, run.train, run.test
    user_has, item_has = run.rows_with_data()
    if run.cold_item is not None:  # warm figures: the warm items only, as without attributes
        item_has = item_has & ~run.cold_item
    user_pub, item_pub = model.published()
    t0 = time.perf_counter()
    ev = evaluate(user_pub, item_pub, model.scale, (s.user_idx[tr], s.item_idx[tr], s.score[tr]),
                  (s.user_idx[te], s.item_idx[te], s.score[te]), user_hash=run.user_hash,
                  max_users=run.tc.eval_users, device=run.device, user_has=user_has,
                  item_has=item_has)
    ev["seconds"] = time.perf_counter() - t0
    if run.cold_item is not None:
        cold_fig, idm = cold_evaluation(s, run.tc, run.item_tokens, run.cold_item, tr, user_pub, item_pub,
                                        user_hash=run.user_hash, device=run.device, fit_model=fit_model,
                                        log=run.log)
        if cold_fig is not None:
            ev["cold_items"] = cold_fig
            up0, ip0 = idm.published()
            pu, pi = replace(run, item_tokens=None, user_tokens=None).rows_with_data()
            ev["id_only"] = evaluate(up0, ip0, idm.scale, (s.user_idx[tr], s.item_idx[tr], s.score[tr]),
                                     (s.user_idx[te], s.item_idx[te], s.score[te]), user_hash=run.user_hash,
                                     max_users=run.tc.eval_users, device=run.device, baselines=False,
                                     user_has=pu, item_has=pi & ~run.cold_item)["model"]
    baseline = squared_comparison(s, run.tc, tr, te, user_hash=run.user_hash, device=run.device,
                                  log=run.log)
    if baseline is not None:
        ev["squared"] = baseline
    ev["split"] = split_metadata(run.tc.holdout_fraction)
    return ev


def store_offsets_json(offsets) -> dict:
    """``{(topic, partition): offset}`` as JSON: ``{"<topic>[<partition>]": offset}``."""
    return {f"{t}[{p}]": int(o) for (t, p), o in sorted(offsets.items())}


def version_metadata(run: _Run, version: int, served, served_info: dict, user_has, item_has,
                     item_pub, ev: dict, warm_info: dict, history, train_s: float) -> dict:
    """The metadata a version is published with (DESIGN: versions)."""
    cfg, tc, snap = run.cfg, run.tc, run.snap
    pop = popularity(snap.item_idx, snap.score, len(snap.item_ids))
    top = np.argsort(-pop, kind="stable")[: tc.popular_items]
    top = top[pop[top] > 0]
    now = datetime.now(timezone.utc)
    return {
        "version": version,
        "dim": int(item_pub.shape[1]),
        "factors": tc.dim,
        "similarity": tc.similarity,
        "objective": tc.objective,
        "metric": cfg.index.metric,
        "backend": cfg.index.backend,
        "index_type": cfg.index.index_type,
        "collection": f"{cfg.index.collection}_v{version}",
        "collection_base": cfg.index.collection,
        "created_at": now.isoformat(timespec="seconds"),
        "created_at_unix": now.timestamp(),
        "n_triples": int(len(snap)),
        "n_train": int(run.train.sum()),
        "n_users": int(user_has.sum()),
        "n_items": int(item_has.sum()),
        "store_seq": int(snap.seq),
        # the event offsets the store_seq covers: a replica maps them to its own store's seq
        "store_offsets": store_offsets_json(getattr(snap, "offsets", {})),
        **served.hyperparameters(),
        "score_scale": float(served.scale),
        "epochs": tc.epochs,
        "seed": tc.seed,
        "device": run.device,
        "evaluation": ev,
        "popular_items": [[snap.item_ids[j], float(pop[j])] for j in top],
        "warm_start": warm_info,
        "training": {"seconds": train_s, "history": history,
                     "seconds_per_sweep": _median([h["seconds"] for h in history])},
        "world_size": world_size(),  # ranks of the fits (train/distributed.py)
        "served_model": served_info,
        "train_config": asdict(tc),
        "foldin": served.foldin_section(item_pub, item_has, tc.seed),
    }


def _train_run(cfg, force: bool = False, *, skip_unchanged: bool = False,
               log=_log_default) -> TrainResult:
    """Train on a snapshot of the triple store and publish a new version.

    The steps: :func:`take_snapshot`, :func:`split_snapshot`, :func:`fit_step`,
    :func:`evaluate_step`, :func:`gate_refusal`, :func:`refit_all` (what is served),
    :func:`version_metadata` and :func:`mcrecall.train.publish.publish`.

    Parameters
    ----------
    cfg : core.config.Config
    force : publish even if the objective's held-out figure (RMSE for ``squared``, Recall@10
        for ``implicit`` and ``bce``) is worse than the current version's by more than its
        tolerance (``[train] max_rmse_regression`` / ``max_recall_regression``).
    skip_unchanged : do nothing when the store's seq equals the current version's store_seq
        (``--every``).

    Returns
    -------
    TrainResult: ``published`` (with the version), ``refused`` (:func:`gate_refusal`),
    ``unchanged`` (skip_unchanged and no new triples) or ``empty`` (no triples).
    """
    from mcrecall.plugins import vector_store_from_config

    tc = cfg.train
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    t_start = time.perf_counter()
    if not (cfg.data_dir / "triples.lmdb").exists():  # before the registry: create nothing
        log(f"train: no triple store at {cfg.data_dir / 'triples.lmdb'}; nothing to train on")
        return TrainResult("empty")
    registry = ModelRegistry(cfg.data_dir, map_size=int(cfg.store.map_size_gb * (1 << 30)))
    vs = None
    model_log = model_log_from_config(cfg)
    try:
        cur = registry.current_version()
        cur_meta = registry.metadata(cur) if cur is not None else None
        snap = take_snapshot(cfg, cur, cur_meta, skip_unchanged=skip_unchanged, log=log)
        if isinstance(snap, TrainResult):
            return snap
        run = split_snapshot(cfg, snap, log=log)
        vs = vector_store_from_config(cfg)
        model, history, train_s, warm_info = fit_step(run, registry, vs, cur, cur_meta)
        ev = evaluate_step(run, model)

        same = (gate.on_version_pairs(run, model, registry, cur, cur_meta, log)
                if gate.comparable(tc, cur_meta) else None)
        if same is not None:
            ev["gate"] = same  # the new model on the current version's own held-out pairs
        refusal = gate_refusal(tc, cur, cur_meta, ev, log, same)  # objective's own metric
        if refusal is not None:
            if not force:
                log(f"train: NOT publishing: {refusal} (use --force to publish anyway)")
                log(format_table(ev))
                return TrainResult("refused")
            log(f"  warning: {refusal}; publishing anyway (--force)")

        # serve every user and item with triples (the evaluation above describes `model`)
        served, served_info = refit_all(snap, tc, model, run.train, device=run.device, log=log)
        user_pub, item_pub = served.published()
        user_has, item_has = run.rows_with_data(None if served is model
                                                else np.ones(len(snap), bool))
        if run.user_tokens is not None:  # attribute-only users are served from their tokens
            user_has = replace(run, user_tokens=None).rows_with_data(  # (serve/client.py), now
                None if served is model else np.ones(len(snap), bool))[0]
        version = next_version(registry, vs)
        cleanup_stale(registry, vs, log)
        meta = version_metadata(run, version, served, served_info, user_has, item_has, item_pub,
                                ev, warm_info, history, train_s)
        uid, iid = np.nonzero(user_has)[0], np.nonzero(item_has)[0]
        t_pub = time.perf_counter()
        publish(registry, vs, version=version, user_ids=[snap.user_ids[j] for j in uid],
                user_vectors=user_pub[uid], item_ids=[snap.item_ids[j] for j in iid],
                item_vectors=item_pub[iid], meta=meta, metric=cfg.index.metric,
                index_type=cfg.index.index_type, log=log, tokens=served.token_tables(),
                model_log=model_log)
        registry.write_holdout(version, gate.holdout_keys(run))  # the next run's gate pairs
        pub_s = time.perf_counter() - t_pub
    finally:
        if vs is not None:
            vs.close()
        if model_log is not None:
            model_log.close()
        registry.close()
    log(summary(meta, train_s, pub_s, time.perf_counter() - t_start))
    return TrainResult("published", version)


def _median(xs):
    return float(np.median(xs)) if len(xs) else None


def summary(meta: dict, train_s: float, pub_s: float, total_s: float) -> str:
    ev = meta["evaluation"]
    lines = [
        f"train: published version {meta['version']} ({meta['collection']}, {meta['backend']}, "
        f"{meta['metric']})",
        f"  objective {meta['objective']}  similarity {meta['similarity']}  dim {meta['dim']}  "
        f"users {meta['n_users']}  items {meta['n_items']}  triples {meta['n_triples']}  "
        f"store seq {meta['store_seq']}",
        f"  training {train_s:.2f} s  evaluation {ev.get('seconds', 0):.2f} s  "
        f"publication {pub_s:.2f} s  total {total_s:.2f} s",
        format_table(ev),
    ]
    return "\n".join(lines)

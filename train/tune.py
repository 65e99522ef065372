"""Hyper-parameter search behind ``mcrecall tune``.

Each trial trains the objective on the training split of a store snapshot and scores it on the
fixed hash hold-out (train/split.py) with the figure the publish gate uses for that objective
(``mcrecall.train.objectives.OBJECTIVES`` gate: RMSE for ``squared``, Recall@10 for ``implicit`` and ``bce``).
The search is Optuna's TPE sampler, seeded; trial 0 is the configuration as given, so the best
is never worse than it on the hold-out. Nothing is published: the store is opened read-only and
no other file of the data directory is touched.

Searched (log scale where marked; each range widened to include the configured value):

* every objective: ``dim`` 8-128 (log), ``epochs`` 3-30;
* ``squared``, ``implicit``: ``reg`` 1e-4-1 (log); ``implicit``: ``alpha`` 0.1-100 (log);
* ``bce``: ``reg_bce`` 1e-4-0.1 (log), ``lr`` 0.01-1 (log), ``negatives`` 1-16.

The hold-out figure of the best trial is optimistic: it was chosen on that same hold-out.
"""

from __future__ import annotations

import math
import os
import statistics
import time
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .objectives import objective_spec

# objective -> searched [train] keys: (low, high, kind); kind "log" / "int" / "intlog"
SPACES: dict[str, dict[str, tuple[float, float, str]]] = {
    "squared": {"dim": (8, 128, "intlog"), "epochs": (3, 30, "int"), "reg": (1e-4, 1.0, "log")},
    "implicit": {"dim": (8, 128, "intlog"), "epochs": (3, 30, "int"), "reg": (1e-4, 1.0, "log"),
                 "alpha": (0.1, 100.0, "log")},
    "bce": {"dim": (8, 128, "intlog"), "epochs": (3, 30, "int"), "reg_bce": (1e-4, 0.1, "log"),
            "lr": (0.01, 1.0, "log"), "negatives": (1, 16, "int")},
}
FIGURES = ("recall@10", "ndcg@10", "rmse")


class TuneError(RuntimeError):
    """Nothing to tune on (no store, empty store, no hold-out) or no trial finished."""


class _OutOfBudget(Exception):
    """Raised from the per-epoch log hook when the budget's deadline has passed."""


@dataclass
class TuneResult:
    objective: str
    metric: str  # the figure optimised, e.g. "recall@10"
    direction: str  # "maximize" | "minimize"
    best: dict | None  # {"number", "params", "figures", "seconds"} of the best trial
    default: dict | None  # the same for trial 0 (the configuration as given), if it finished
    trials: list[dict] = field(default_factory=list)  # every trial, in order
    interrupted: bool = False
    out: Path | None = None
    seconds: float = 0.0


def gate_metric(objective: str) -> tuple[str, str]:
    """(figure, Optuna direction) the publish gate judges ``objective`` by."""
    fig, lower_better, _key = objective_spec(objective).gate
    return fig, "minimize" if lower_better == "lower" else "maximize"


def suggest(trial, objective: str, base) -> dict:
    """The [train] overrides of one trial, drawn from :data:`SPACES` (widened to ``base``)."""
    params = {}
    for key, (lo, hi, kind) in SPACES[objective].items():
        cur = getattr(base, key)
        lo, hi = min(lo, cur), max(hi, cur)
        if kind.startswith("int"):
            params[key] = trial.suggest_int(key, int(lo), int(hi), log=kind == "intlog")
        else:
            params[key] = trial.suggest_float(key, max(lo, 1e-12), hi, log=True)
    return params


def _read_snapshot(cfg):
    from mcrecall.ingest.store import TripleStore

    path = cfg.data_dir / "triples.lmdb"
    if not (path / "data.mdb").exists():
        raise TuneError(f"no triple store at {path}; nothing to tune on")
    store = TripleStore(cfg.data_dir, readonly=True, map_size_gb=cfg.store.map_size_gb)
    try:
        return store.snapshot()
    finally:
        store.close()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_header(objective: str, metric: str) -> str:
    keys = list(SPACES[objective])
    cells = "".join(f"{k:>10}" for k in keys) + "".join(
        f"{('*' + f if f == metric else f):>11}" for f in FIGURES)
    return f"{'trial':>5}{cells}{'seconds':>9}  state"


def format_row(row: dict, objective: str) -> str:
    """One line of the trials table (figures "—" for a trial that did not finish)."""
    cells = "".join(f"{_fmt(row['params'].get(k, '')):>10}" for k in SPACES[objective])
    figs = row.get("figures") or {}
    cells += "".join(f"{'—' if figs.get(f) is None else format(figs[f], '.4f'):>11}"
                     for f in FIGURES)
    return f"{row['number']:>5}{cells}{row['seconds']:>9.2f}  {row['state']}"


def tune(cfg, *, budget_s: float, objective: str | None = None, n_trials: int | None = None,
         seed: int | None = None, out: str | os.PathLike | None = None,
         log: Callable[[str], None] = print) -> TuneResult:
    """Search [train] hyper-parameters on the hold-out; write the best as TOML to ``out``.

    Parameters
    ----------
    cfg : core.config.Config; its ``[train]`` section is the starting point (trial 0) and
        supplies every key that is not searched (similarity, device, threads, holdout_fraction...).
    budget_s : wall-clock budget. No trial starts once the time left is shorter than the median
        finished trial; a trial still running at the deadline stops at its next epoch
        (state ``stopped: budget``).
    objective : the objective to tune (default ``[train] objective``).
    n_trials : at most this many trials (None: until the budget).
    seed : seeds the sampler and every trial's training (default ``[train] seed``); the same
        seed and trial count give the same trials.
    out : TOML file written after every improvement (so Ctrl-C keeps the best so far).

    Returns
    -------
    TuneResult

    Raises
    ------
    TuneError : no triples, no held-out triple with a relevant score, or no trial finished.
    ImportError : Optuna is not installed (``pip install 'mcrecall[tune]'``).
    """
    import optuna
    import torch

    from .evaluate import eval_users, evaluate
    from .objectives import rows_with_data
    from .split import holdout_from_hashes, id_hashes
    from .trainer import fit_model, resolve_device

    t_start = time.monotonic()
    deadline = t_start + budget_s
    objective = objective or cfg.train.objective
    seed = cfg.train.seed if seed is None else int(seed)
    base = replace(cfg.train, objective=objective, seed=seed)
    metric, direction = gate_metric(objective)
    if base.threads > 0:
        torch.set_num_threads(base.threads)
    device = resolve_device(base.device)

    snap = _read_snapshot(cfg)
    if len(snap) == 0:
        raise TuneError("the triple store is empty; nothing to tune on")
    hu, hi = id_hashes(snap.user_ids), id_hashes(snap.item_ids)
    test = holdout_from_hashes(snap.user_idx, snap.item_idx, hu, hi, base.holdout_fraction)
    train = ~test
    tr = (snap.user_idx[train], snap.item_idx[train], snap.score[train])
    te = (snap.user_idx[test], snap.item_idx[test], snap.score[test])
    ranked = metric != "rmse"  # Recall@10 needs a relevant held-out triple, RMSE any
    if not test.any() or not train.any() or (ranked and len(eval_users(te[0], te[2], None, 1))
                                             == 0):
        raise TuneError(f"the hold-out ({int(test.sum())} of {len(snap)} triples) has nothing "
                        f"to measure {metric} on; tuning needs more data")
    user_has = rows_with_data(tr[0], tr[2], len(snap.user_ids), objective)
    item_has = rows_with_data(tr[1], tr[2], len(snap.item_ids), objective)
    log(f"tune: {objective} on {int(train.sum())} training / {int(test.sum())} held-out triples "
        f"(store seq {snap.seq}), {metric} on the hold-out, budget {budget_s:g} s"
        + (f", at most {n_trials} trials" if n_trials else "") + f", seed {seed}")

    def guard(_line: str) -> None:  # called once per epoch by the trainer
        if time.monotonic() > deadline:
            raise _OutOfBudget

    def run_trial(trial) -> float:
        params = suggest(trial, objective, base)
        tc = replace(base, **params)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        t0 = time.perf_counter()
        try:
            model, _hist, _secs = fit_model(snap, tc, device=device, train_mask=train, log=guard)
        except _OutOfBudget:
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            trial.set_user_attr("why", "stopped: budget")
            raise optuna.TrialPruned() from None
        except RuntimeError as e:  # a singular solve, out of memory: this trial only, go on
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            trial.set_user_attr("why", f"failed: {' '.join(str(e).split())[:80]}")
            return float("nan")
        up, ip = model.published()
        ev = evaluate(up, ip, model.scale, tr, te, user_hash=hu, max_users=tc.eval_users,
                      device=device, baselines=False, user_has=user_has, item_has=item_has)
        figs = {f: ev["model"].get(f) for f in FIGURES}
        trial.set_user_attr("figures", figs)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        value = figs[metric]
        return float("nan") if value is None else float(value)  # NaN: Optuna marks it failed

    result = TuneResult(objective, metric, direction, None, None, out=Path(out) if out else None)
    durations: list[float] = []

    def on_trial(study, frozen) -> None:
        state = frozen.state.name.lower()
        row = {"number": frozen.number, "params": dict(frozen.params),
               "figures": frozen.user_attrs.get("figures"),
               "seconds": float(frozen.user_attrs.get("seconds", 0.0)),
               "state": frozen.user_attrs.get("why", state)}
        if state == "complete":
            durations.append(row["seconds"])
            if study.best_trial.number == frozen.number:
                row["state"] = "best"
                result.best = row
                if result.out is not None:
                    write_best_toml(result.out, cfg, replace(base, **row["params"]), study_note(
                        result, row, seed, snap.seq))
            if frozen.number == 0:
                result.default = row
        elif state == "fail" and row["figures"] is not None:
            row["state"] = f"failed: {metric} is not a number"
        result.trials.append(row)
        log(format_row(row, objective))
        left = deadline - time.monotonic()
        if durations and left < statistics.median(durations):
            study.stop()  # the next trial would most likely overrun the budget

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our table says it all
    study = optuna.create_study(direction=direction,
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.NopPruner())
    study.enqueue_trial({k: getattr(base, k) for k in SPACES[objective]})  # trial 0: as given
    log(format_header(objective, metric))
    try:
        study.optimize(run_trial, n_trials=n_trials,
                       timeout=max(deadline - time.monotonic(), 1e-3),
                       callbacks=[on_trial], catch=(), gc_after_trial=False)
    except KeyboardInterrupt:
        result.interrupted = True
        log("tune: interrupted; keeping the best finished trial")
    result.seconds = time.monotonic() - t_start
    if result.best is None and not result.interrupted:
        raise TuneError(f"no trial finished within the budget of {budget_s:g} s; "
                        "give a larger --budget")
    return result


def study_note(result: TuneResult, row: dict, seed: int, store_seq: int) -> list[str]:
    """The comment lines at the top of the written TOML."""
    figs = ", ".join(f"{f} {v:.4f}" for f, v in (row["figures"] or {}).items() if v is not None)
    return [f"written by `mcrecall tune`: objective {result.objective}, best of "
            f"{len(result.trials) + 1} trials so far (trial {row['number']}), seed {seed}",
            f"held-out figures at store seq {store_seq}: {figs}",
            "optimistic: chosen on that same hold-out; use with `mcrecall --config <this> train`"]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else
                                                 ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        esc = []
        for ch in v:
            if ch in '"\\':
                esc.append("\\" + ch)
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:  # TOML forbids raw control characters
                esc.append(f"\\u{ord(ch):04X}")
            else:
                esc.append(ch)
        return '"' + "".join(esc) + '"'
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as a TOML scalar")


def toml_text(sections: dict[str, dict], comments: list[str] = ()) -> str:
    """TOML for ``{section: {key: scalar}}`` (the shape of an mcrecall config file)."""
    lines = [f"# {c}" for c in comments]
    for name, values in sections.items():
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def write_best_toml(path: Path, cfg, train_cfg, comments: list[str] = ()) -> None:
    """Write ``train_cfg`` as a full ``[train]`` section, atomically.

    The other sections of the configuration file the run was given (``cfg.source``) are copied
    as written, so ``mcrecall --config <path> train`` trains on the same data directory and
    publishes to the same index; the file keeps that file's permissions (it may hold secrets).
    """
    sections: dict[str, dict] = {}
    src = Path(cfg.source) if cfg.source != "<defaults>" else None
    if src is not None and src.is_file():
        sections = {k: dict(v) for k, v in tomllib.loads(src.read_text("utf-8")).items()
                    if k != "train"}
    sections["train"] = asdict(train_cfg)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    mode = (src.stat().st_mode & 0o777) if src is not None and src.is_file() else 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(toml_text(sections, comments))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

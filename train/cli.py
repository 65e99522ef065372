"""``mcrecall train [--force] [--every DURATION] [--nproc N]`` (wired into mcrecall/cli.py by its owner).

Exit status: 0 published (or, with ``--every``, stopped by Ctrl-C); 1 nothing to train on;
3 not published because the objective's held-out figure regressed (RMSE for ``squared``,
Recall@10 for ``implicit`` and ``bce``; see ``--force``); 75 another trainer
holds the publisher lock and ``--no-wait`` was given.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m`` (positive)."""
    t = str(text).strip().lower()
    if t.startswith("-"):
        raise argparse.ArgumentTypeError(f"duration must be positive, got {text!r}")
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", t)
    if not parts or "".join(n + u for n, u in parts) != t.replace(" ", ""):
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use e.g. 90, 30s, 15m, 2h, 1d or 1h30m")
    secs = sum(float(n) * _UNITS[u] for n, u in parts)
    if secs <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, got {text!r}")
    return secs


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand's options to ``parser``."""
    parser.add_argument("--force", action="store_true",
                        help="publish even if the held-out figure of the objective (RMSE for "
                             "squared, Recall@10 for implicit and bce) is worse than the current "
                             "version's by more than [train] max_rmse_regression / "
                             "max_recall_regression")
    parser.add_argument("--every", metavar="DURATION", type=parse_duration, default=None,
                        help="retrain on this period (e.g. 15m, 1h), skipping a run when the "
                             "store has no new triples since the current version")
    parser.add_argument("--no-wait", action="store_true",
                        help="exit (status 75) instead of waiting when another trainer is "
                             "publishing in the same data dir")
    parser.add_argument("--nproc", metavar="N", type=_positive_int, default=1,
                        help="train on N processes of this host joined by torch.distributed "
                             "(gloo; NCCL with one CUDA device a rank); 1 = in this process. "
                             "Across hosts: torchrun ... -m mcrecall.train.distributed "
                             "(docs/operations.md)")
    return parser


def run_train(args, cfg) -> int:
    """Run ``mcrecall train`` with parsed ``args`` and a loaded config; returns the exit status."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported
    from .trainer import train_run

    force = bool(getattr(args, "force", False))
    every = getattr(args, "every", None)
    wait = not getattr(args, "no_wait", False)
    nproc = int(getattr(args, "nproc", 1) or 1)
    if nproc > 1:  # the same run on N ranks (train/distributed.py); rank 0 publishes
        from .distributed import launch_local

        return launch_local(cfg, nproc, config=getattr(args, "config", None),
                            verbose=getattr(args, "verbose", 0), force=force, every=every, wait=wait)
    from .lock import PublisherBusyError

    if not every:
        try:
            res = train_run(cfg, force=force, wait=wait)
        except PublisherBusyError as e:
            print(f"mcrecall train: {e} (--no-wait)", file=sys.stderr, flush=True)
            return 75
        except Exception as e:
            full = _disk_full_line(cfg, e)
            if full is None:
                raise
            print(f"mcrecall train: {full}", file=sys.stderr, flush=True)
            return 1
        return {"published": 0, "refused": 3, "empty": 1, "unchanged": 0}[res.status]
    print(f"train: retraining every {every:g} s (Ctrl-C stops)", flush=True)
    try:
        train_every(cfg, every, force=force, wait=wait)
    except KeyboardInterrupt:
        return 0
    return 0


def _disk_full_line(cfg, e: BaseException) -> str | None:
    """The one line for a run that failed because the disk is full (None: another failure)."""
    from mcrecall.core.datadir import disk_full_message, is_disk_full_error

    if not is_disk_full_error(e, cfg.data_dir):
        return None
    return disk_full_message(cfg.data_dir, e, "the new version") + " (the current version keeps serving)"


HEARTBEAT_S = 60.0  # a skipping --every loop says it is alive at most this often


def store_state(cfg) -> tuple | None:
    """(store seq, current version, the current version's store_seq): what decides whether a
    period has anything new to train on. None without a triple store."""
    from mcrecall.ingest.store import TripleStore

    from .versions import ModelRegistry

    if not (cfg.data_dir / "triples.lmdb").exists():
        return None
    store = TripleStore(cfg.data_dir, readonly=True, map_size_gb=cfg.store.map_size_gb)
    try:
        seq = store.seq
    finally:
        store.close()
    reg = ModelRegistry(cfg.data_dir, readonly=True)
    try:
        cur = reg.current_version()
        cur_seq = reg.metadata(cur).get("store_seq") if cur is not None else None
    finally:
        reg.close()
    return seq, cur, cur_seq


def train_every(cfg, every: float, *, force: bool = False, wait: bool = True, log=None,
                rounds: int | None = None, after_round=None) -> list[str]:
    """The ``--every`` loop: one :func:`~train.trainer.train_run` a period, except a period with
    nothing new: the store unchanged since the current version (``unchanged``), or neither the
    store nor the current version changed since the last refusal (``skipped``: the same triples
    would be refused again). A skip is logged when it starts, then at most every minute.

    ``rounds`` / ``after_round(i)``: stop after that many periods / a hook after each (tests).
    Returns the status of each period.
    """
    from .lock import PublisherBusyError
    from .trainer import train_run

    def say(msg: str) -> None:
        (log or (lambda m: print(m, flush=True)))(msg)

    statuses: list[str] = []
    refused_at = None  # store_state() of the last refusal
    skip_msg, skip_said = None, 0.0
    i = 0
    while rounds is None or i < rounds:
        started = time.monotonic()
        try:
            state = store_state(cfg)
        except Exception:
            state = None
        msg = None
        if state is not None and refused_at == state:
            msg = (f"train: store (seq {state[0]}) and version {state[1]} unchanged since the "
                   "refusal; skipping until either changes (--force publishes anyway)")
            status = "skipped"
        elif state is not None and state[1] is not None and state[0] == state[2]:
            msg = (f"train: store unchanged since version {state[1]} (seq {state[0]}); "
                   "skipping until new triples arrive")
            status = "unchanged"
        if msg is not None:
            if msg != skip_msg or started - skip_said >= HEARTBEAT_S:
                say(msg if msg != skip_msg else f"{msg} (still)")
                skip_msg, skip_said = msg, started
        else:
            skip_msg = None
            try:
                kw = {} if log is None else {"log": log}
                status = train_run(cfg, force=force, skip_unchanged=True, wait=wait, **kw).status
                refused_at = state if status == "refused" else None
            except PublisherBusyError as e:
                say(f"train: {e}; skipping this round")
                status = "busy"
            except Exception as e:  # a failed run leaves the current version serving; try again
                full = _disk_full_line(cfg, e)
                if full is None:
                    traceback.print_exc()
                print(full or "train: run failed; the current version is unchanged", file=sys.stderr,
                      flush=True)
                status = "failed"
        statuses.append(status)
        if after_round is not None:
            after_round(i)
        i += 1
        if rounds is None or i < rounds:
            time.sleep(max(0.0, every - (time.monotonic() - started)))
    return statuses


def add_tune_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``tune`` subcommand's options to ``parser`` (logic: train/tune.py)."""
    parser.add_argument("--budget", metavar="DURATION", type=parse_duration, default=600.0,
                        help="wall-clock budget, e.g. 90s, 10m, 1h (default 10m)")
    parser.add_argument("--objective", choices=("implicit", "squared", "bce"), default=None,
                        help="objective to tune (default: [train] objective)")
    parser.add_argument("--trials", metavar="N", type=_positive_int, default=None,
                        help="at most N trials (default: as many as the budget allows)")
    parser.add_argument("--seed", metavar="S", type=_seed, default=None,
                        help="seeds the search and the training (default: [train] seed)")
    parser.add_argument("--out", metavar="FILE.toml", default="best.toml",
                        help="where the best settings go, for `mcrecall --config FILE.toml "
                             "train` (default best.toml)")
    return parser


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _seed(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"seed must be an integer in [0, 2**32 - 1], got {text!r}")
    return n


def run_tune(args, cfg) -> int:
    """Run ``mcrecall tune``: 0 best settings written (also after Ctrl-C, if a trial finished);
    1 nothing to tune on or no trial finished; 2 Optuna missing."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported
    try:
        import optuna  # noqa: F401
    except ImportError:
        print("mcrecall tune: needs Optuna: pip install 'mcrecall[tune]'", file=sys.stderr)
        return 2
    from pathlib import Path

    from .tune import TuneError, tune

    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        print(f"mcrecall tune: --out {out}: not a file in an existing directory", file=sys.stderr)
        return 1
    try:
        res = tune(cfg, budget_s=args.budget, objective=args.objective, n_trials=args.trials,
                   seed=args.seed, out=out)
    except TuneError as e:
        print(f"mcrecall tune: {e}", file=sys.stderr)
        return 1
    if res.best is None:
        print("mcrecall tune: interrupted before any trial finished; nothing written",
              file=sys.stderr)
        return 130
    b, d = res.best, res.default
    vs = (f" (trial 0, the configuration as given: {d['figures'][res.metric]:.4f})"
          if d and d is not b else "")
    print(f"tune: {len(res.trials)} trials in {res.seconds:.0f} s; best trial {b['number']} "
          f"{res.metric} {b['figures'][res.metric]:.4f}{vs}\n"
          f"tune: wrote {out}; train with: mcrecall --config {out} train", flush=True)
    return 0

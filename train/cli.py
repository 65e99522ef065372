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
            print(f"mcrecall train: {e}; not waiting (--no-wait)", file=sys.stderr, flush=True)
            return 75
        return {"published": 0, "refused": 3, "empty": 1, "unchanged": 0}[res.status]
    print(f"train: retraining every {every:g} s (Ctrl-C stops)", flush=True)
    try:
        while True:
            started = time.monotonic()
            try:
                train_run(cfg, force=force, skip_unchanged=True, wait=wait)
            except PublisherBusyError as e:
                print(f"train: {e}; skipping this round (--no-wait)", flush=True)
            except Exception:  # a failed run leaves the current version serving; try again
                traceback.print_exc()
                print("train: run failed; the current version is unchanged", file=sys.stderr,
                      flush=True)
            time.sleep(max(0.0, every - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0


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

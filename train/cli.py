"""``mcrecall train [--force] [--every DURATION]`` (wired into mcrecall/cli.py by its owner).

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
    return parser


def run_train(args, cfg) -> int:
    """Run ``mcrecall train`` with parsed ``args`` and a loaded config; returns the exit status."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported
    from .trainer import train_run

    force = bool(getattr(args, "force", False))
    every = getattr(args, "every", None)
    wait = not getattr(args, "no_wait", False)
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

"""``mcrecall evaluate --prequential FILE.jsonl``: the command around train/prequential.py.

The replay itself lives in the train part; this shell module adds the command line and the plot
(mcrecall/plot.py), so that no part imports the application shell.
"""

from __future__ import annotations

import json

from mcrecall.plot import plot_prequential


def add_evaluate_arguments(parser):
    """Options of ``mcrecall evaluate``."""
    parser.add_argument("--prequential", metavar="FILE.jsonl", required=True,
                        help="time-ordered event file (one JSON event per line, DESIGN §1)")
    parser.add_argument("--retrain-every", type=int, default=5000, metavar="N",
                        help="events between two trainings (default 5000)")
    parser.add_argument("--refresh-every", type=int, default=100, metavar="N",
                        help="events between two item refreshes (default 100)")
    parser.add_argument("-k", type=int, default=10, help="recall size (default 10)")
    parser.add_argument("--plot", metavar="PNG", default=None, help="write the Recall@k curve here")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def run_evaluate(args, cfg) -> int:
    """Print the table (and write the plot) of a prequential replay."""
    from mcrecall.train.prequential import prequential, read_events

    for name in ("retrain_every", "refresh_every", "k"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer")
    if args.plot:  # before the replay, as tune checks --out: minutes of work must not be lost
        check_plot_path(args.plot)
    events = read_events(args.prequential)
    if not events:
        raise ValueError(f"{args.prequential}: no events")
    res = prequential(events, cfg.train, retrain_every=args.retrain_every,
                      refresh_every=args.refresh_every, k=args.k,
                      log=lambda s: None if args.json else print(s, flush=True))
    # the table first: a plot that fails after all (disk full, removed folder) loses nothing
    if args.json:
        print(json.dumps(res.to_json(), indent=2, allow_nan=False), flush=True)
    else:
        print(res.table(), flush=True)
    if args.plot:
        try:
            plot_prequential(res.curve, args.plot, k=res.k)
        except OSError as e:
            raise OSError(f"--plot {args.plot}: {e.strerror or e} (the results are above)") from None
        if not args.json:
            print(f"plot: {args.plot}")
    return 0


def check_plot_path(path) -> None:
    """A ``--plot`` path that can be written (an existing, writable folder), or a ValueError."""
    import os
    from pathlib import Path

    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise ValueError(f"--plot {path}: is a directory; give a file name such as curve.png")
    if not folder.is_dir():
        raise ValueError(f"--plot {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ValueError(f"--plot {path}: cannot write there (permissions or a read-only folder)")

"""The ``mcrecall`` command: one subcommand per step of ingest -> train -> publish -> serve.

Each part owns its subcommands (``add_*_arguments`` / ``run_*`` in ``<part>/cli.py``); this module
only parses, loads the configuration and dispatches, importing a part only when it is used.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mcrecall.config import ConfigError, load_config
from mcrecall.logs import setup_logging

# name -> (module, add_arguments, run, help)
COMMANDS = {
    "broker": ("ingest.cli", "add_broker_arguments", "run_broker",
               "run the local development Kafka broker (foreground, 127.0.0.1)"),
    "milvus": ("plugins.cli", "add_milvus_arguments", "run_milvus",
               "run the local Milvus Lite server (foreground, 127.0.0.1)"),
    "produce": ("ingest.cli", "add_produce_arguments", "run_produce",
                "validate events of a JSONL file and send them to the topic"),
    "ingest": ("ingest.cli", "add_ingest_arguments", "run_ingest",
               "run the ingest worker (or --from-file backfill)"),
    "train": ("train.cli", "add_train_arguments", "run_train",
              "train once and publish a new model version (--every repeats)"),
    "refresh": ("train.refresh", "add_refresh_arguments", "run_refresh",
                "give new and changed items vectors in the current version (--every repeats)"),
    "evaluate": ("train.prequential", "add_evaluate_arguments", "run_evaluate",
                 "prequential (streaming) evaluation of a time-ordered event file"),
    "recall": ("serve.cli", "add_recall_arguments", "run_recall", "print a user's top-k items"),
    "triples": ("ingest.cli", "add_triples_arguments", "run_triples",
                "write all triples as CSV user_id,item_id,score"),
    "status": ("mcrecall.status", "add_status_arguments", "run_status",
               "current version, counts, offsets, last evaluation"),
    "demo": ("mcrecall.demo", "add_demo_arguments", "run_demo",
             "the end-to-end demo on embedded defaults"),
}


_OWN_PACKAGES = {"ingest", "train", "serve", "plugins", "mcrecall"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcrecall", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML configuration file (default: embedded defaults)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, add, _run, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        try:
            getattr(importlib.import_module(module), add)(p)
        except (ImportError, AttributeError):
            p.set_defaults(_unavailable=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    module, _add, run, _help = COMMANDS[args.command]
    if getattr(args, "_unavailable", False):
        print(f"mcrecall {args.command}: not built yet", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"mcrecall: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        return int(getattr(importlib.import_module(module), run)(args, cfg) or 0)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, ValueError, FileNotFoundError, PermissionError, ConnectionError) as e:
        print(f"mcrecall {args.command}: {e}", file=sys.stderr)
        return 1
    except (RuntimeError, LookupError) as e:
        # our own error types (locked Milvus file, no model yet, broker missing...) carry a
        # message that says what to do; anything else is a bug and keeps its traceback
        if type(e).__module__.split(".")[0] in _OWN_PACKAGES:
            print(f"mcrecall {args.command}: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())

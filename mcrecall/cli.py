"""The ``mcrecall`` command: one subcommand per step of ingest -> train -> publish -> serve.

Each part owns its subcommands (``add_*_arguments`` / ``run_*`` in ``<part>/cli.py``); this module
only parses, loads the configuration and dispatches, importing a part only when it is used.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import sys

from mcrecall.core.config import ConfigError, load_config
from mcrecall.core.datadir import DataDirError, check_data_dir
from mcrecall.core.logs import redact, redact_in_logs, setup_logging

# name -> (module, add_arguments, run, help)
COMMANDS = {
    "broker": ("mcrecall.ingest.cli", "add_broker_arguments", "run_broker",
               "run the local development Kafka broker (foreground, 127.0.0.1)"),
    "milvus": ("mcrecall.plugins.cli", "add_milvus_arguments", "run_milvus",
               "run the local Milvus Lite server (foreground, 127.0.0.1)"),
    "produce": ("mcrecall.ingest.cli", "add_produce_arguments", "run_produce",
                "validate events of a JSONL file and send them to the topic"),
    "ingest": ("mcrecall.ingest.cli", "add_ingest_arguments", "run_ingest",
               "run the ingest worker (or --from-file backfill)"),
    "train": ("mcrecall.train.cli", "add_train_arguments", "run_train",
              "train once and publish a new model version (--every repeats)"),
    "tune": ("mcrecall.train.cli", "add_tune_arguments", "run_tune",
             "search [train] settings on the hold-out; write the best as TOML (publishes nothing)"),
    "refresh": ("mcrecall.train.refresh", "add_refresh_arguments", "run_refresh",
                "give new and changed items vectors in the current version (--every repeats)"),
    "evaluate": ("mcrecall.evaluate", "add_evaluate_arguments", "run_evaluate",
                 "prequential (streaming) evaluation of a time-ordered event file"),
    "recall": ("mcrecall.serve.cli", "add_recall_arguments", "run_recall", "print a user's top-k items"),
    "serve": ("mcrecall.serve.cli", "add_serve_arguments", "run_serve",
              "serve recall over HTTP (GET/POST /recall, /healthz, /readyz, /metrics)"),
    "replica": ("mcrecall.serve.replica", "add_replica_arguments", "run_replica",
                "run a serving replica: events and the model log from Kafka into this data dir"),
    "snapshot": ("mcrecall.ingest.cli", "add_snapshot_arguments", "run_snapshot",
                 "copy the triple store and its offsets consistently to DIR (a new replica starts from it)"),
    "triples": ("mcrecall.ingest.cli", "add_triples_arguments", "run_triples",
                "write all triples as CSV user_id,item_id,score"),
    "status": ("mcrecall.status", "add_status_arguments", "run_status",
               "current version, counts, offsets, last evaluation"),
    "demo": ("mcrecall.demo", "add_demo_arguments", "run_demo",
             "the end-to-end demo on embedded defaults"),
}


_OWN_PACKAGES = {"ingest", "train", "serve", "plugins", "mcrecall"}

# How each command uses [store] data_dir: "write" creates or changes files there; "read" needs
# it to exist (and works on a read-only one); "status" reports a missing one itself.
DATA_DIR_USE = {"ingest": "write", "train": "write", "milvus": "write", "refresh": "write",
                "replica": "write", "snapshot": "read",
                "recall": "read", "triples": "read", "tune": "read", "status": "status"}


def _check_data_dir(args, cfg) -> None:
    use = DATA_DIR_USE.get(args.command)
    if use is None or (args.command == "milvus" and (getattr(args, "milvus_data_dir", None)
                                                     or getattr(args, "db", None))):
        return
    check_data_dir(cfg.data_dir, write=use == "write", must_exist=use == "read")


def _one_line(e: BaseException) -> str:
    return redact(" ".join(str(e).split()) or type(e).__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcrecall", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML configuration file (default: embedded defaults)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, add, _run, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        # the global options after the subcommand too (`mcrecall status --config x.toml`);
        # SUPPRESS: not given here, the value before the subcommand stands
        p.add_argument("--config", default=argparse.SUPPRESS, help="TOML configuration file")
        p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="more log output")
        try:
            getattr(importlib.import_module(module), add)(p)
        except ImportError as e:  # reported when the command is run, as what it is
            p.add_argument("_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            p.set_defaults(_import_error=e)
    return parser


def import_problem(e: ImportError) -> str:
    """One line saying which module could not be imported and why (not a generic 'unavailable')."""
    name = getattr(e, "name", None)
    what = f"cannot import {name!r}" if name else "an import failed"
    return (f"{what} ({e}); the installation is incomplete or broken - "
            "reinstall the project and its dependencies (`pip install -e .`)")


def stdout_closed() -> bool:
    """True when standard output is a pipe whose reader has gone (``mcrecall triples | head``).

    Tells a closed stdout apart from a broken socket: both raise ``BrokenPipeError``."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _fd, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _quiet_exit_on_closed_stdout() -> int:
    # the reader went away: what we wrote is all it wanted. Point stdout at /dev/null so the
    # interpreter's final flush does not print "Exception ignored ... BrokenPipeError".
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


# options whose value may look like an option to argparse (`--budget -5s`): joined as
# `--budget=-5s`, so that the value's own check says what is wrong with it
_VALUE_OPTIONS = ("--budget", "--every", "--until-idle", "--retrain-every", "--refresh-every",
                  "--trials", "--seed", "-k")


def _join_dash_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a in _VALUE_OPTIONS:
            nxt = next(it, None)
            if nxt is not None and nxt[:1] == "-" and nxt[1:2].isdigit():
                out.append(f"{a}={nxt}")
                continue
            out.append(a)
            if nxt is not None:
                out.append(nxt)
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_dash_values(list(sys.argv[1:] if argv is None else argv)))
    if not args.command:
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    module, _add, run, _help = COMMANDS[args.command]
    if getattr(args, "_import_error", None) is not None:
        print(f"mcrecall {args.command}: {import_problem(args._import_error)}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"mcrecall: configuration error: {_one_line(e)}", file=sys.stderr)
        return 2
    redact_in_logs(cfg.kafka.sasl_password)  # whatever a library logs, the secret is not in it
    try:
        _check_data_dir(args, cfg)
        rc = int(getattr(importlib.import_module(module), run)(args, cfg) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return rc
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError as e:
        if stdout_closed():
            return _quiet_exit_on_closed_stdout()
        print(f"mcrecall {args.command}: {_one_line(e)}", file=sys.stderr)
        return 1
    except ImportError as e:
        print(f"mcrecall {args.command}: {import_problem(e)}", file=sys.stderr)
        return 2
    except (ConfigError, DataDirError, ValueError, OSError) as e:
        # OSError: a path that is not a directory, permissions, a full disk, a refused connection
        print(f"mcrecall {args.command}: {_one_line(e)}", file=sys.stderr)
        return 1
    except (RuntimeError, LookupError) as e:
        # our own error types (locked Milvus file, no model yet, broker missing...) carry a
        # message that says what to do; anything else is a bug and keeps its traceback
        if type(e).__module__.split(".")[0] in _OWN_PACKAGES:
            print(f"mcrecall {args.command}: {_one_line(e)}", file=sys.stderr)
            return 1
        raise
    except Exception as e:
        # LMDB (a damaged or foreign environment) and Kafka client errors (bootstrap failed, auth
        # refused) are about the environment, not a bug here: one line, no traceback
        if type(e).__module__.split(".")[0] in ("lmdb", "kafka"):
            print(f"mcrecall {args.command}: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())

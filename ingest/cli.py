"""Command-line entry points of the ingest part: broker, produce, ingest, triples."""

from __future__ import annotations

import argparse
import csv
import logging
import sys

log = logging.getLogger("mcrecall.ingest")


def add_broker_arguments(p) -> None:
    p.add_argument("--port", type=int, default=None,
                   help="port on 127.0.0.1 (default: the port of [kafka] bootstrap_servers)")


def run_broker(args, cfg) -> int:
    import signal
    import threading

    from mcrecall.ingest.broker import LocalBroker

    port = args.port
    if port is None:
        port = int(cfg.kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with LocalBroker(port=port) as broker:
        print(f"broker listening on {broker.bootstrap_servers} (tansu, memory storage; Ctrl-C stops it)",
              flush=True)
        while not stop.wait(0.5):
            if broker.proc.poll() is not None:
                print(f"broker exited with code {broker.proc.returncode}", file=sys.stderr)
                return 1
    return 0


def add_produce_arguments(p) -> None:
    p.add_argument("file", help="JSONL file, one event per line")
    p.add_argument("--no-validate", action="store_true",
                   help="send invalid lines too (they end in the dead-letter topic)")


def run_produce(args, cfg) -> int:
    from mcrecall.ingest.produce import produce_file

    stats = produce_file(args.file, cfg, validate=not args.no_validate)
    print(f"sent {stats.sent} events to {cfg.kafka.topic}; {stats.invalid} invalid lines not sent")
    return 0 if stats.invalid == 0 else 1


def add_ingest_arguments(p) -> None:
    p.add_argument("--from-file", metavar="F", help="backfill a JSONL file (no broker needed)")
    p.add_argument("--until-idle", metavar="SECONDS", type=float, default=None,
                   help="exit after this many seconds without new events")
    p.add_argument("--max-events", type=int, default=None, help=argparse.SUPPRESS)
    add_metrics_arguments(p)


def add_metrics_arguments(p) -> None:
    """``--metrics-port P`` / ``--metrics-host H`` (ingest; the replica command reuses it)."""
    p.add_argument("--metrics-port", metavar="P", type=int, default=None,
                   help="serve the worker's counters (events, bad events, lag, batches) as "
                        "Prometheus text on http://HOST:P/metrics (0: a free port, printed)")
    p.add_argument("--metrics-host", metavar="HOST", default="127.0.0.1",
                   help="address of --metrics-port (default 127.0.0.1)")


def start_metrics_from_args(args):
    """The worker's metrics server of ``--metrics-port`` (None without it); prints its URL."""
    if getattr(args, "metrics_port", None) is None:
        return None
    from mcrecall.ingest.metrics import start_worker_metrics

    server = start_worker_metrics(args.metrics_port, args.metrics_host)
    print(f"metrics on {server.url}", flush=True)
    return server


def run_ingest(args, cfg) -> int:
    from mcrecall.ingest.store import StoreFullError, TripleStore

    if args.from_file:
        if getattr(args, "metrics_port", None) is not None:
            raise ValueError("--metrics-port serves the Kafka worker's counters; a --from-file "
                             "backfill prints its own at the end")
        from mcrecall.ingest.backfill import backfill_file

        try:
            stats = backfill_file(args.from_file, TripleStore(cfg.data_dir, map_size_gb=cfg.store.map_size_gb))
        except StoreFullError as e:  # the batches before it are stored; a rerun re-applies idempotently
            print(f"mcrecall ingest: {e}", file=sys.stderr)
            return 3
        print(f"backfilled {stats.events} events from {stats.lines} lines in {stats.seconds:.1f}s; "
              f"{stats.rejected} rejected" + (f" -> {stats.rejected_path}" if stats.rejected else ""))
        return 0
    from mcrecall.ingest.kafka_io import KafkaUnavailable
    from mcrecall.ingest.offset_range import OffsetOutOfRangeError
    from mcrecall.ingest.worker import IngestWorker

    metrics_server = start_metrics_from_args(args)
    worker = IngestWorker(cfg, metrics=metrics_server.metrics if metrics_server else None)
    worker.install_signal_handlers()
    try:
        worker.run(until_idle=args.until_idle, max_events=args.max_events)
    except StoreFullError as e:
        print(f"mcrecall ingest: {e}", file=sys.stderr)
        return 3
    except KafkaUnavailable as e:  # --until-idle S and the brokers unreachable that long
        print(f"mcrecall ingest: {e}", file=sys.stderr)
        return 4
    except OffsetOutOfRangeError as e:  # [kafka] offset_reset = "fail"
        print(f"mcrecall ingest: {e}", file=sys.stderr)
        return 5
    finally:
        if metrics_server is not None:
            metrics_server.close()
    return 0


def add_snapshot_arguments(p) -> None:
    p.add_argument("dir", metavar="DIR", help="new directory: DIR/triples.lmdb and DIR/snapshot.json")


def run_snapshot(args, cfg) -> int:
    """``mcrecall snapshot DIR``: one read transaction copies the store (compacted) with the
    offsets it covers; a replica whose [store] data_dir is DIR resumes from those offsets."""
    import json
    from pathlib import Path

    from mcrecall.ingest.store import TripleStore

    dest = Path(args.dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        print(f"mcrecall snapshot: {dest} exists and is not an empty directory", file=sys.stderr)
        return 1
    dest.mkdir(parents=True, exist_ok=True)
    store = TripleStore(cfg.data_dir, readonly=True)
    try:
        info = store.copy_consistent(dest)
    finally:
        store.close()
    offsets = {f"{t}[{p}]": o for (t, p), o in sorted(info["offsets"].items())}
    (dest / "snapshot.json").write_text(json.dumps(
        {"source": str(cfg.data_dir), "seq": info["seq"], "offsets": offsets,
         "counts": info["counts"]}, indent=2) + "\n")
    c = info["counts"]
    print(f"snapshot: {c['n_pairs']} pairs, {c['n_users']} users, {c['n_items']} items at store seq "
          f"{info['seq']} -> {dest / 'triples.lmdb'}; offsets {offsets or 'none'}")
    return 0


def add_triples_arguments(p) -> None:
    pass


def run_triples(args, cfg) -> int:
    from mcrecall.ingest.store import TripleStore

    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["user_id", "item_id", "score"])
    for row in TripleStore(cfg.data_dir, readonly=True).iter_triples():
        w.writerow(row)
    return 0

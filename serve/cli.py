"""``mcrecall recall USER_ID -k K``: print a user's top-k as a table."""

from __future__ import annotations

import argparse
import json
import sys

from mcrecall.serve.client import RecallClient
from mcrecall.serve.types import NoModelError, VersionChurnError


def add_recall_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user_id", help="external user id")
    parser.add_argument("-k", type=int, default=10, help="number of items (default 10)")
    parser.add_argument("--exclude-seen", action="store_true",
                        help="leave out items the user already has triples for")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def format_table(user_id: str, result) -> str:
    """The readable table: rank, item, score, source, version."""
    rows = [(str(r + 1), it.item_id, f"{it.score:.4f}", it.source, str(result.version))
            for r, it in enumerate(result.items)]
    head = ("rank", "item", "score", "source", "version")
    widths = [max(len(h), *(len(row[c]) for row in rows)) if rows else len(h)
              for c, h in enumerate(head)]
    right = (True, False, True, False, True)

    def line(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right, strict=False)).rstrip()

    out = [f"user {user_id}: {len(rows)} item(s) from model version {result.version} "
           f"(source {result.source})", line(head), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def run_recall(args, cfg) -> int:
    client = RecallClient(cfg)
    try:
        result = client.recall_result(args.user_id, args.k, exclude_seen=args.exclude_seen)
    except (NoModelError, VersionChurnError) as e:
        print(f"mcrecall recall: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if args.json:
        print(json.dumps({"user_id": args.user_id, "version": result.version,
                          "items": [it._asdict() for it in result.items]}))
    else:
        print(format_table(args.user_id, result))
    return 0


# ------------------------------------------------------------------------- mcrecall serve
def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8080,
                        help="TCP port (default 8080; 0 picks a free one and prints it)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes sharing the port (default 1); metrics are summed "
                             "over all of them")
    parser.add_argument("--access-log", action="store_true", help="log every request (uvicorn)")


def run_serve(args, cfg) -> int:
    """Serve recall over HTTP until SIGTERM / Ctrl-C (serve/http.py has the routes)."""
    import os
    import shutil
    import tempfile

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if not 1 <= args.workers <= 256:
        raise ValueError(f"--workers must be in 1..256, got {args.workers}")
    import uvicorn

    multiproc_env = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is imported
    metrics_dir = None
    if args.workers > 1:
        # Each worker process counts into files here; /metrics on any of them sums them all.
        # A fresh directory per run: stale files from an earlier run would be summed too.
        metrics_dir = tempfile.mkdtemp(prefix="mcrecall-serve-metrics-")
        os.environ[multiproc_env] = metrics_dir
        if args.config:  # the spawned workers load the same configuration (MCRECALL_* are inherited)
            os.environ["MCRECALL_CONFIG"] = os.path.abspath(args.config)
        app, factory = "mcrecall.serve.http:app_from_environment", True
    else:
        os.environ.pop(multiproc_env, None)  # one process: its own registry
        from mcrecall.serve.http import create_app

        app, factory = create_app(cfg), False
    config = uvicorn.Config(app, factory=factory, host=args.host, port=args.port,
                            workers=args.workers, log_config=None, access_log=args.access_log,
                            lifespan="on", timeout_graceful_shutdown=10, server_header=False)
    try:
        sock = _listen(args.host, args.port)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"mcrecall serve: http://{shown}:{port} ({args.workers} worker"
              f"{'s' if args.workers > 1 else ''}; data {cfg.data_dir}, backend "
              f"{cfg.index.backend}); GET /recall /healthz /readyz /metrics, POST /recall",
              flush=True)
        if args.workers > 1:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=[sock]).run()
            return 0
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
        if not server.started:  # the app failed to start (uvicorn logged why)
            return 1
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _listen(host: str, port: int):
    """A bound TCP socket for uvicorn (and its worker processes); OSError in one line."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock

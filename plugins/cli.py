"""``mcrecall milvus``: run the local Milvus Lite server in the foreground (127.0.0.1)."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from urllib.parse import urlparse

from plugins.milvus_server import DEFAULT_HOST, DEFAULT_PORT, port_open


def add_milvus_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mcrecall milvus`` options to ``parser``."""
    parser.add_argument(
        "--port", type=int, default=None,
        help=f"TCP port (default: the port of [index] uri if it is http://127.0.0.1:P, else {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST,
        help="bind address (default 127.0.0.1; anything else exposes an unauthenticated database)",
    )
    parser.add_argument(
        "--milvus-data-dir", default=None,
        help="Milvus Lite data directory (default <data_dir>/milvus-server)",
    )


def _port_from_config(cfg) -> int:
    uri = getattr(cfg.index, "uri", "") or ""
    if uri.startswith(("http://", "https://", "tcp://")):
        parsed = urlparse(uri)
        if parsed.port:
            return parsed.port
    return DEFAULT_PORT


def run_milvus(args: argparse.Namespace, cfg) -> int:
    """Run a Milvus Lite server in this process until Ctrl-C / SIGTERM; return an exit code.

    In-process (not a child) so that stopping this command always stops the
    server: nothing is left running holding the data-directory lock.
    """
    from milvus_lite.adapter.grpc.server import run_server

    from plugins.milvus_store import MilvusStoreLockedError, check_not_locked

    port = args.port if getattr(args, "port", None) else _port_from_config(cfg)
    host = getattr(args, "host", None) or DEFAULT_HOST
    data_dir = Path(getattr(args, "milvus_data_dir", None) or (cfg.data_dir / "milvus-server"))
    if port_open(host, port):
        print(f"mcrecall milvus: {host}:{port} is already in use (another server running?)")
        return 1
    try:
        check_not_locked(str(data_dir))
    except MilvusStoreLockedError:
        print(f"mcrecall milvus: {data_dir} is locked by another process (a server already running on it?)")
        return 1
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    uri = f"http://{host}:{port}"
    print(f"mcrecall milvus: Milvus Lite server on {uri} (data in {data_dir}, pid {os.getpid()}).")
    print(f'Point every process at it: [index] backend = "milvus", uri = "{uri}" '
          f"(or MCRECALL_INDEX_URI={uri}). Ctrl-C stops it.", flush=True)

    def _terminate(signum, frame):
        raise KeyboardInterrupt  # run_server shuts down gracefully on it

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        run_server(str(data_dir), host=host, port=port)
    except KeyboardInterrupt:
        pass
    except Exception as e:  # e.g. the lock taken in between, or the port
        print(f"mcrecall milvus: {type(e).__name__}: {e}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("mcrecall milvus: stopped", flush=True)
    return 0

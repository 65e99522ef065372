"""``mcrecall milvus``: run the local Milvus Lite server in the foreground (127.0.0.1)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from urllib.parse import urlparse

from mcrecall.plugins.milvus_server import DB_NAME, DEFAULT_HOST, DEFAULT_PORT, port_open


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
        "--db", default=None, metavar="FILE.db",
        help="the Milvus Lite database file to serve (default: the file [index] uri names in file "
             f"mode, else <data_dir>/{DB_NAME}, the file the milvus backend uses by default)",
    )
    parser.add_argument(
        "--milvus-data-dir", default=None,
        help=f"serve <DIR>/{DB_NAME} instead (older default: <data_dir>/milvus-server)",
    )


def default_db_file(cfg) -> Path:
    """The database ``mcrecall milvus`` serves by default: the one file mode uses, so that the
    versions already published there are served (the file [index] uri names, or
    ``<data_dir>/milvus.db``); the older ``<data_dir>/milvus-server/milvus.db`` only when it is
    the one that exists."""
    from mcrecall.plugins.milvus_store import is_server_uri

    uri = getattr(cfg.index, "uri", "") or ""
    if uri and not is_server_uri(uri):
        return Path(uri)
    own = cfg.data_dir / DB_NAME
    older = cfg.data_dir / "milvus-server" / DB_NAME
    return older if older.exists() and not own.exists() else own


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
    from mcrecall.plugins.milvus_server import serve_forever
    from mcrecall.plugins.milvus_store import MilvusStoreLockedError, check_not_locked

    port = args.port if getattr(args, "port", None) else _port_from_config(cfg)
    host = getattr(args, "host", None) or DEFAULT_HOST
    if getattr(args, "db", None):
        db_file = Path(args.db)
    elif getattr(args, "milvus_data_dir", None):
        db_file = Path(args.milvus_data_dir) / DB_NAME
    else:
        db_file = default_db_file(cfg)
    db_file = db_file.absolute()
    if port_open(host, port):
        print(f"mcrecall milvus: {host}:{port} is already in use (another server running?)")
        return 1
    try:
        check_not_locked(str(db_file))
    except MilvusStoreLockedError:
        print(f"mcrecall milvus: {db_file} is locked by another process (a server already running on it?)")
        return 1
    uri = f"http://{host}:{port}"

    def ready():
        print(f"mcrecall milvus: Milvus Lite server on {uri} (database {db_file}, pid {os.getpid()}).")
        print(f'Point every process at it: [index] backend = "milvus", uri = "{uri}" '
              f"(or MCRECALL_INDEX_URI={uri}). Ctrl-C stops it.", flush=True)

    try:
        serve_forever(db_file, host, port, on_ready=ready)
    except KeyboardInterrupt:
        pass
    except Exception as e:  # e.g. the lock taken in between, or the port
        print(f"mcrecall milvus: {e}")
        return 1
    print("mcrecall milvus: stopped", flush=True)
    return 0

"""Run a real Milvus standalone (PyPI ``milvus``, 2.3.x) on loopback until SIGTERM/SIGINT.

Used by tests/fixtures_milvus.py and .ci/run, always inside a private network
namespace (``unshare -n`` + ``ip link set lo up``): even with every component's
ip set to 127.0.0.1, about nine of its ports (19530, 19529, 9091, 53100, ...)
listen on all interfaces.

Usage: ``python tests/milvus_standalone.py BASE_DIR [PORT]``; prints ``ready <uri>``
on stdout once the server answers, then blocks until it is signalled.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


def _bindable(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", int(port)))
            return True
        except OSError:
            return False


def main(argv: list[str]) -> int:
    from milvus import default_server

    base_dir = argv[1]
    port = int(argv[2]) if len(argv) > 2 else 19530
    default_server.set_base_dir(base_dir)
    for component in COMPONENTS:
        default_server.config.set(f"{component}.ip", "127.0.0.1")
    default_server.listen_port = port
    # A restart must reuse every internal port: the sessions in its etcd name them. Wait until
    # the old ones are bindable again (TIME_WAIT) instead of letting it pick neighbours.
    ports_file = Path(base_dir) / "mcrecall-ports.json"
    saved = json.loads(ports_file.read_text()) if ports_file.exists() else {}
    for key, value in saved.items():
        default_server.config.set(key, value)
    deadline = time.monotonic() + 120
    while saved and not all(_bindable(p) for p in saved.values()) and time.monotonic() < deadline:
        time.sleep(1)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    default_server.start()
    items = default_server.config.configurable_items
    ports_file.write_text(json.dumps({k: int(v[1]) for k, v in items.items() if k.endswith("_port")}))
    print(f"ready http://127.0.0.1:{default_server.listen_port}", flush=True)
    try:
        while not done.wait(0.5):
            if default_server.server_proc is None or default_server.server_proc.poll() is not None:
                print("milvus standalone exited", file=sys.stderr, flush=True)
                return 1
    finally:
        proc = default_server.server_proc
        if proc is not None and proc.poll() is None:
            # Its own stop() kills after 1 s; give it time to close its files cleanly.
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except Exception:
                proc.kill()
                proc.wait()
        default_server.server_proc = None
        default_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Run a real Milvus standalone (PyPI ``milvus``, 2.3.x) on loopback until SIGTERM/SIGINT.

Used by tests/fixtures_milvus.py and .ci/run, always inside a private network
namespace (``unshare -n`` + ``ip link set lo up``): even with every component's
ip set to 127.0.0.1, about nine of its ports (19530, 19529, 9091, 53100, ...)
listen on all interfaces.

Usage: ``python tests/milvus_standalone.py BASE_DIR [PORT]``; prints ``ready <uri>``
on stdout once the server answers, then blocks until it is signalled.
"""

from __future__ import annotations

import signal
import sys
import threading

COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


def main(argv: list[str]) -> int:
    from milvus import default_server

    base_dir = argv[1]
    port = int(argv[2]) if len(argv) > 2 else 19530
    default_server.set_base_dir(base_dir)
    for component in COMPONENTS:
        default_server.config.set(f"{component}.ip", "127.0.0.1")
    default_server.listen_port = port
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    default_server.start()
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

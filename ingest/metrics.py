"""Prometheus metrics of the ingest worker: ``mcrecall ingest --metrics-port P`` (DESIGN §10).

The worker (:class:`mcrecall.ingest.worker.IngestWorker`, ``metrics=``) updates one
:class:`WorkerMetrics` as each batch's transaction commits, so the counters move exactly with
what the triple store holds; :func:`start_worker_metrics` serves them as Prometheus text on
``http://HOST:P/metrics`` from a daemon thread. ``mcrecall replica`` runs the same worker and
reuses both, adding its own metrics to ``WorkerMetrics.registry``.

Names (counters since the process started; ``_total`` is added by the exposition):

========================================  ==========================================================
``mcrecall_ingest_events_total``           good events written to the triple store
``mcrecall_ingest_bad_events_total``       bad events (sent to ``<topic>.dlq``, or counted as dlq_failed)
``mcrecall_ingest_dlq_failed_total``       bad events the dead-letter topic did not take (in bad too)
``mcrecall_ingest_batches_total``          write transactions committed
``mcrecall_ingest_changed_pairs_total``    (user, item) pairs whose score changed
``mcrecall_ingest_lag_events``             events behind the partitions' high watermarks (NaN: unknown)
``mcrecall_ingest_last_batch_timestamp_seconds``  Unix time of the last committed batch
========================================  ==========================================================
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

PREFIX = "mcrecall_ingest"


class WorkerMetrics:
    """The worker's counters, in their own registry (several workers in one process each have
    theirs: tests, the replica's two consumers).

    Parameters
    ----------
    registry : prometheus_client.CollectorRegistry, optional
        Where the metrics live (default: a new one).
    prefix : str
        Metric name prefix (default ``mcrecall_ingest``; keep it for the event worker on any
        host, so one dashboard reads primaries and replicas alike).
    """

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = PREFIX):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(f"{prefix}_events", "good events written to the triple store",
                              registry=r)
        self.bad_events = Counter(f"{prefix}_bad_events", "bad events (dead-lettered to "
                                  "<topic>.dlq, or counted as dlq_failed)", registry=r)
        self.dlq_failed = Counter(f"{prefix}_dlq_failed", "bad events the dead-letter topic did "
                                  "not take (counted in bad_events too)", registry=r)
        self.batches = Counter(f"{prefix}_batches", "write transactions committed (events and "
                               "their offsets together)", registry=r)
        self.changed_pairs = Counter(f"{prefix}_changed_pairs", "(user, item) pairs whose "
                                     "score changed", registry=r)
        self.lag = Gauge(f"{prefix}_lag_events", "events behind the assigned partitions' high "
                         "watermarks (NaN until known)", registry=r)
        self.lag.set(math.nan)
        self.last_batch = Gauge(f"{prefix}_last_batch_timestamp_seconds", "Unix time the last "
                                "batch was committed (0: none yet)", registry=r)

    def batch_committed(self, *, events: int, bad_events: int, dlq_failed: int,
                        changed_pairs: int) -> None:
        """One write transaction committed with these counts (the worker calls it)."""
        self.events.inc(events)
        self.bad_events.inc(bad_events)
        self.dlq_failed.inc(dlq_failed)
        self.batches.inc()
        self.changed_pairs.inc(changed_pairs)
        self.last_batch.set(time.time())

    def set_lag(self, lag: int | None) -> None:
        self.lag.set(math.nan if lag is None else float(lag))


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint (:func:`start_worker_metrics`)."""

    metrics: WorkerMetrics
    host: str
    port: int
    _server: object
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_worker_metrics(port: int, host: str = "127.0.0.1", *,
                         metrics: WorkerMetrics | None = None) -> MetricsServer:
    """Serve ``metrics`` (default: a new :class:`WorkerMetrics`) as Prometheus text on
    ``http://host:port/metrics`` from a daemon thread.

    Parameters
    ----------
    port : int
        0..65535 (0 picks a free port: ``MetricsServer.port`` says which).
    host : str
        Address to listen on (default loopback; ``0.0.0.0`` for a scraper on another host).

    Raises
    ------
    ValueError
        A port out of range.
    OSError
        The port is taken (one line naming host and port).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"--metrics-port must be an integer in 0..65535, got {port!r}")
    metrics = metrics if metrics is not None else WorkerMetrics()
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as e:
        raise OSError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
    return MetricsServer(metrics, host, server.server_port, server, thread)

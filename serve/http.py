"""``mcrecall serve``: recall over HTTP, with health, readiness and Prometheus metrics (DESIGN §10).

An ASGI application (Starlette) served by uvicorn. It is a thin shell around one
:class:`~mcrecall.serve.client.RecallClient` per process, so an answer over HTTP is exactly what
the Python client returns (the same ids, order, scores and sources; the same single version per
request):

* ``GET /recall?user_id=U&k=10&exclude_seen=false`` -> ``{"version": N, "items": [{"item_id",
  "score", "source"}, ...]}``
* ``POST /recall`` with ``{"user_ids": [...], "k": 10, "exclude_seen": false}`` ->
  ``{"version": N, "results": [[...], ...]}`` (one list per user, in the order asked, all from
  version N: :meth:`RecallClient.recall_many`)
* ``GET /healthz`` -> 200 while the process answers
* ``GET /readyz`` -> 200 with the current version; 503 with the reason when there is none, or on
  a replica whose lag exceeds ``[serve] max_lag_s``
* ``GET /metrics`` -> Prometheus text

Bad input is a 400 ``{"error": ..., "parameter": ...}`` naming the parameter, never a 500: ids
are data (any UTF-8 text of 1..128 bytes, quotes, newlines and NUL included, percent-encoded in
a query string), so the checks are the client's own (:mod:`mcrecall.serve.validate`). No model
yet, the vector store down, or versions churning is a 503 (retry later, or elsewhere).

With ``--workers N`` > 1 (``serve/cli.py``) every worker process runs this app; the counters and
the histogram are then kept in prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
a temporary directory the parent creates), so ``/metrics`` on any worker shows the sums over all
of them; the gauges (version, replica lag) are read live by whichever worker answers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, Callable
from urllib.parse import unquote_to_bytes

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcrecall.core.config import Config, load_config
from mcrecall.core.ids import MAX_ID_BYTES
from mcrecall.serve.client import RecallClient
from mcrecall.serve.types import (
    SOURCE_FOLD_IN,
    SOURCE_MODEL,
    SOURCE_POPULAR,
    NoModelError,
    VectorStoreUnavailableError,
    VersionChurnError,
)
from mcrecall.serve.validate import check_id, check_k

log = logging.getLogger("mcrecall.serve.http")

#: environment variable prometheus_client reads for its multiprocess mode
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: metric names (DESIGN §10: contracts)
METRIC_REQUESTS = "mcrecall_recall_requests"  # exposed as mcrecall_recall_requests_total
METRIC_ERRORS = "mcrecall_recall_errors"  # exposed as mcrecall_recall_errors_total
METRIC_SECONDS = "mcrecall_recall_seconds"
METRIC_VERSION = "mcrecall_model_version"
METRIC_READY = "mcrecall_ready"
METRIC_REPLICA = "mcrecall_replica"  # _lag_versions, _lag_events, _lag_seconds, _newest_version
SOURCES = (SOURCE_MODEL, SOURCE_FOLD_IN, SOURCE_POPULAR)
# sub-millisecond searches up to a slow Milvus: the buckets must resolve both ends
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 10.0)
GET_PARAMS = ("user_id", "k", "exclude_seen")
POST_KEYS = ("user_ids", "k", "exclude_seen")
DEFAULT_K = 10
_K_TEXT = re.compile(r"[+-]?[0-9]+")
_REPLICA_TTL_S = 1.0  # replica_status() is asked at most this often (readyz, metrics)


class BadRequest(ValueError):
    """Bad input: a 400 naming ``parameter``."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter


# ---------------------------------------------------------------------------------- replica lag
def replica_status(cfg: Config) -> dict | None:
    """This host's replica status, or None on a primary.

    Asks :func:`mcrecall.serve.replica.replica_status` (``mcrecall replica``'s module) where it
    is installed; without that module every host is a primary. Keys of the dict: ``role``,
    ``current_version``, ``newest_version``, ``lag_versions``, ``lag_events``, ``lag_s``.
    """
    try:
        from mcrecall.serve.replica import replica_status as status
    except ModuleNotFoundError as e:
        if e.name in ("mcrecall.serve.replica", "mcrecall.serve"):
            return None
        raise  # the module is there but one of ITS imports is missing: say so
    return status(cfg)


class _ReplicaCache:
    """replica_status() at most once per ``ttl_s`` (it may read LMDB and ask Kafka)."""

    def __init__(self, cfg: Config, fn: Callable[[Config], dict | None], ttl_s: float = _REPLICA_TTL_S):
        self.cfg, self.fn, self.ttl_s = cfg, fn, ttl_s
        self._lock = threading.Lock()
        self._at = -1e9
        self._value: tuple[dict | None, str | None] = (None, None)

    def get(self) -> tuple[dict | None, str | None]:
        """(status or None, error text or None)."""
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self.ttl_s:
                try:
                    self._value = (self.fn(self.cfg), None)
                except Exception as e:  # reported by /readyz as the reason, not a crash
                    log.warning("replica_status_failed", extra={"error": str(e)[:300]})
                    self._value = (None, f"replica status unavailable: {type(e).__name__}: {e}")
                self._at = now
            return self._value


# ---------------------------------------------------------------------------------- metrics
class _LiveGauges:
    """Gauges read when scraped (so they are right whichever worker process answers)."""

    def __init__(self, state: "ServeState"):
        self.state = state

    def describe(self):  # registering must not read LMDB or ask replica_status()
        return []

    def collect(self):
        try:
            version = self.state.client.version
        except Exception:  # an unreadable registry: no version gauge, not ready
            version = None
        rs, err = self.state.replica.get()
        ready, _ = self.state.readiness(version, rs, err)
        g = GaugeMetricFamily(METRIC_READY, "1 when GET /readyz answers 200, else 0")
        g.add_metric([], 1.0 if ready else 0.0)
        yield g
        if version is not None:
            g = GaugeMetricFamily(METRIC_VERSION, "the model version recalls are answered from")
            g.add_metric([], float(version))
            yield g
        if rs:
            for key, name, doc in (
                    ("lag_versions", "lag_versions", "versions on the model log not yet current here"),
                    ("lag_events", "lag_events", "events on the topic not yet in this host's triple store"),
                    ("lag_s", "lag_seconds", "seconds this replica is behind the primary"),
                    ("newest_version", "newest_version", "the newest version on the model log")):
                value = rs.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    g = GaugeMetricFamily(f"{METRIC_REPLICA}_{name}", doc)
                    g.add_metric([], float(value))
                    yield g


class ServeMetrics:
    """The counters and the latency histogram of one app (its own registry)."""

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(METRIC_REQUESTS, "user recalls answered, by source (a POST of n "
                                "users counts n)", ["source"], registry=registry)
        self.errors = Counter(METRIC_ERRORS, "recall requests answered with an error, by reason",
                              ["reason"], registry=registry)
        self.seconds = Histogram(METRIC_SECONDS, "time to answer a recall request (GET one user, "
                                 "POST a batch), seconds", ["method"], buckets=LATENCY_BUCKETS,
                                 registry=registry)
        self._by_source = {s: self.requests.labels(s) for s in SOURCES}
        for reason in ("bad_request", "no_model", "unavailable", "internal"):
            self.errors.labels(reason)
        self._get = self.seconds.labels("GET")
        self._post = self.seconds.labels("POST")

    def counted(self, source: str, n: int = 1) -> None:
        c = self._by_source.get(source)
        (c if c is not None else self.requests.labels(source)).inc(n)

    def timed(self, method: str, seconds: float) -> None:
        (self._get if method == "GET" else self._post).observe(seconds)


# ---------------------------------------------------------------------------------- state
class ServeState:
    """What the routes share: the client, the metrics, the readiness rule."""

    def __init__(self, cfg: Config, client: RecallClient | None = None,
                 replica_fn: Callable[[Config], dict | None] = replica_status):
        self.cfg = cfg
        self.own_client = client is None
        self.client = client if client is not None else RecallClient(cfg)
        self.max_batch = cfg.serve.max_batch_users
        # JSON-escaped ids can be 6 bytes per byte (\u0000): room for a full batch of them
        self.max_body = self.max_batch * (6 * MAX_ID_BYTES + 8) + 4096
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.replica = _ReplicaCache(cfg, replica_fn)
        self.registry = CollectorRegistry()
        self.metrics = ServeMetrics(self.registry)
        self.live = _LiveGauges(self)
        self.registry.register(self.live)

    def readiness(self, version: int | None, rs: dict | None, err: str | None) -> tuple[bool, str]:
        """(ready, reason): a current version, and on a replica a lag within max_lag_s."""
        if err:
            return False, err
        if version is None:
            return False, (f"no model version is current in {self.cfg.data_dir}/users.lmdb "
                           "(nothing published yet, or a replica still bootstrapping)")
        if rs:
            lag = rs.get("lag_s")
            limit = self.cfg.serve.max_lag_s
            if isinstance(lag, (int, float)) and lag > limit:
                return False, (f"replica lag {lag:.1f} s exceeds [serve] max_lag_s = {limit:g} s")
        return True, "ready"

    def exposition(self) -> bytes:
        if self.multiprocess:  # sums over every worker's files, plus this worker's live gauges
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            reg.register(self.live)
            return generate_latest(reg)
        return generate_latest(self.registry)

    def close(self) -> None:
        if self.own_client:
            self.client.close()


# ---------------------------------------------------------------------------------- responses
def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _error(status: int, message: str, parameter: str | None = None) -> Response:
    body = {"error": message}
    if parameter is not None:
        body["parameter"] = parameter
    return _json(body, status)


def _items(result) -> list[dict]:
    # float(): a numpy float32 score becomes the same float the Python client hands out
    return [{"item_id": i, "score": float(s), "source": src} for i, s, src in result.items]


# ---------------------------------------------------------------------------------- parsing
def _query(raw: bytes) -> dict[str, str]:
    """The query string as {name: value}: each value percent-decoded as strict UTF-8, each
    name known and given once."""
    fields = [f for f in raw.split(b"&") if f] if raw else []
    if len(fields) > 2 * len(GET_PARAMS):
        raise BadRequest("query", f"too many query parameters (known: {', '.join(GET_PARAMS)})")
    out: dict[str, str] = {}
    for field in fields:
        name_b, _, value_b = field.partition(b"=")
        # bytes in, bytes out: "%xx" and raw bytes alike, then ONE strict UTF-8 decode
        name_b = unquote_to_bytes(name_b.replace(b"+", b" "))
        value_b = unquote_to_bytes(value_b.replace(b"+", b" "))
        try:
            name = name_b.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("query", "a query parameter name is not valid UTF-8") from None
        if name not in GET_PARAMS:
            raise BadRequest(name[:60], f"unknown query parameter {name[:60]!r} "
                                        f"(known: {', '.join(GET_PARAMS)})")
        if name in out:
            raise BadRequest(name, f"{name} is given more than once")
        try:
            out[name] = value_b.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(name, f"{name} is not valid UTF-8 once percent-decoded") from None
    return out


def _k_from_text(text: str, max_k: int) -> int:
    if not _K_TEXT.fullmatch(text):
        raise BadRequest("k", f"k must be a positive integer, got {text[:40]!r}")
    if len(text.lstrip("+-0")) > 12:  # no int() of a huge digit string
        raise BadRequest("k", f"k={text[:40]}... is larger than the allowed maximum {max_k} "
                              "([serve] max_k)" if not text.startswith("-") else
                         f"k must be a positive integer, got {text[:40]}...")
    return _checked_k(int(text), max_k)


def _checked_k(value, max_k: int) -> int:
    try:
        return check_k(value, max_k)
    except (TypeError, ValueError) as e:
        raise BadRequest("k", str(e)) from None


def _flag_from_text(text: str, name: str) -> bool:
    low = text.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    raise BadRequest(name, f"{name} must be true or false, got {text[:40]!r}")


def _checked_id(value, name: str) -> str:
    try:
        return check_id(value, name)
    except (TypeError, ValueError) as e:
        raise BadRequest(name.split("[")[0], str(e)) from None


def parse_get(raw_query: bytes, max_k: int) -> tuple[str, int, bool]:
    """(user_id, k, exclude_seen) of ``GET /recall``; :class:`BadRequest` otherwise."""
    q = _query(raw_query)
    if "user_id" not in q:
        raise BadRequest("user_id", "user_id is required (GET /recall?user_id=U&k=10)")
    uid = _checked_id(q["user_id"], "user_id")
    k = _k_from_text(q["k"], max_k) if "k" in q else _checked_k(DEFAULT_K, max_k)
    exclude = _flag_from_text(q["exclude_seen"], "exclude_seen") if "exclude_seen" in q else False
    return uid, k, exclude


def _loads(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        try:  # orjson refuses integers beyond 64 bits: valid JSON, and an id may be one
            return json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequest("body", f"the body is not valid JSON: {e}") from None


def parse_post(body: bytes, max_k: int, max_batch: int) -> tuple[list[str], int, bool]:
    """(user_ids, k, exclude_seen) of ``POST /recall``; :class:`BadRequest` otherwise."""
    if not body.strip():
        raise BadRequest("body", 'the body is empty: send {"user_ids": [...], "k": 10}')
    doc = _loads(body)
    if not isinstance(doc, dict):
        raise BadRequest("body", f"the body must be a JSON object, got {type(doc).__name__}")
    unknown = [key for key in doc if key not in POST_KEYS]
    if unknown:
        raise BadRequest(str(unknown[0])[:60], f"unknown key {str(unknown[0])[:60]!r} in the body "
                                               f"(known: {', '.join(POST_KEYS)})")
    if "user_ids" not in doc:
        raise BadRequest("user_ids", "user_ids is required (a list of ids)")
    ids = doc["user_ids"]
    if isinstance(ids, list) and any(type(v) is float for v in ids):
        # orjson reads an integer beyond 64 bits as a float; an id may be such an integer
        ids = json.loads(body).get("user_ids")
    if not isinstance(ids, list):
        raise BadRequest("user_ids", f"user_ids must be a list of ids, got {type(ids).__name__}")
    if len(ids) > max_batch:
        raise BadRequest("user_ids", f"user_ids has {len(ids)} ids; at most {max_batch} a request "
                                     "([serve] max_batch_users)")
    uids = [_checked_id(v, f"user_ids[{j}]") for j, v in enumerate(ids)]
    k = _checked_k(doc.get("k", DEFAULT_K), max_k)
    exclude = doc.get("exclude_seen", False)
    if not isinstance(exclude, bool):
        raise BadRequest("exclude_seen", f"exclude_seen must be true or false, got {exclude!r:.40}")
    return uids, k, exclude


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest("body", f"the body is {declared} bytes; at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest("body", f"the body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------- the app
def create_app(cfg: Config, client: RecallClient | None = None, *,
               replica_fn: Callable[[Config], dict | None] = replica_status) -> Starlette:
    """The ASGI app serving recalls of ``cfg``'s data dir.

    Parameters
    ----------
    cfg : core.config.Config
    client : RecallClient, optional
        Share a client (and its LMDB handles) the process already has; by default the app
        opens its own, closed at shutdown.
    replica_fn : callable, optional
        ``cfg -> dict | None``, the replica status (default :func:`replica_status`).
    """
    state = ServeState(cfg, client, replica_fn)
    max_k = cfg.serve.max_k

    async def answer(method: str, t0: float, work: Callable[[], Response]) -> Response:
        try:
            return await run_in_threadpool(work)
        except NoModelError as e:
            state.metrics.errors.labels("no_model").inc()
            return _error(503, str(e))
        except (VectorStoreUnavailableError, VersionChurnError) as e:
            state.metrics.errors.labels("unavailable").inc()
            return _error(503, str(e))
        except OSError as e:  # the data dir unreadable (permissions, a missing mount...)
            state.metrics.errors.labels("unavailable").inc()
            log.warning("recall_unavailable", extra={"error": str(e)[:300]})
            return _error(503, f"cannot read the data directory {cfg.data_dir}: {e}")
        except Exception as e:  # a bug or a broken store, never bad input (checked before)
            state.metrics.errors.labels("internal").inc()
            log.exception("recall_failed", extra={"error": str(e)[:300]})
            return _error(500, f"internal error ({type(e).__name__}); see the server's log")
        finally:
            state.metrics.timed(method, time.perf_counter() - t0)

    async def recall_get(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            uid, k, exclude = parse_get(request.scope.get("query_string", b""), max_k)
        except BadRequest as e:
            state.metrics.errors.labels("bad_request").inc()
            return _error(400, str(e), e.parameter)

        def work() -> Response:
            res = state.client.recall_result(uid, k, exclude)
            state.metrics.counted(res.source)
            return _json({"version": res.version, "items": _items(res)})

        return await answer("GET", t0, work)

    async def recall_post(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            uids, k, exclude = parse_post(await _read_body(request, state.max_body), max_k,
                                          state.max_batch)
        except BadRequest as e:
            state.metrics.errors.labels("bad_request").inc()
            return _error(400, str(e), e.parameter)

        def work() -> Response:
            batch = state.client.recall_many(uids, k, exclude)
            counts: dict[str, int] = {}
            for r in batch.results:
                counts[r.source] = counts.get(r.source, 0) + 1
            for source, n in counts.items():
                state.metrics.counted(source, n)
            return _json({"version": batch.version, "results": [_items(r) for r in batch.results]})

        return await answer("POST", t0, work)

    async def healthz(request: Request) -> Response:
        return _json({"status": "alive"})

    async def readyz(request: Request) -> Response:
        def check() -> Response:
            try:
                version = state.client.version
            except Exception as e:
                return _json({"status": "not ready", "version": None,
                              "reason": f"cannot read {cfg.data_dir}/users.lmdb: {e}"}, 503)
            rs, err = state.replica.get()
            ready, reason = state.readiness(version, rs, err)
            body = {"status": "ready" if ready else "not ready", "version": version,
                    "role": (rs or {}).get("role", "primary") if not err else "unknown"}
            if rs:
                body.update({key: rs.get(key) for key in ("current_version", "newest_version",
                                                          "lag_versions", "lag_events", "lag_s")})
                body["max_lag_s"] = cfg.serve.max_lag_s
            if not ready:
                body["reason"] = reason
            return _json(body, 200 if ready else 503)

        return await run_in_threadpool(check)

    async def metrics(request: Request) -> Response:
        text = await run_in_threadpool(state.exposition)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    @asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(state.close)

    app = Starlette(
        routes=[Route("/recall", recall_get, methods=["GET"]),
                Route("/recall", recall_post, methods=["POST"]),
                Route("/healthz", healthz, methods=["GET"]),
                Route("/readyz", readyz, methods=["GET"]),
                Route("/metrics", metrics, methods=["GET"])],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.serve = state
    return app


def app_from_environment() -> Starlette:
    """The app of the configuration in the environment (``$MCRECALL_CONFIG`` and the
    ``MCRECALL_*`` variables): what each ``--workers`` process builds (uvicorn ``factory``)."""
    return create_app(load_config())

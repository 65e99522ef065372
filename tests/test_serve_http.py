"""``mcrecall serve``: recall over HTTP against a real uvicorn server on 127.0.0.1, real LMDB and
the ``exact`` backend, on versions published from known vectors (so every expected answer is
either the Python client's own or a brute-force computation here)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from mcrecall.core.config import load_config
from mcrecall.ingest.store import TripleStore
from mcrecall.plugins import vector_store_from_config
from mcrecall.plugins.testing import HOSTILE_IDS
from mcrecall.serve import RecallClient
from mcrecall.serve.http import create_app
from mcrecall.serve.testing import publish_vectors
from mcrecall.train.versions import ModelRegistry

ROOT = Path(__file__).resolve().parents[1]
DIM = 8
N_ITEMS = 300
USERS = list(HOSTILE_IDS) + [f"u{j}" for j in range(20)]
ITEMS = list(HOSTILE_IDS) + [f"i{j}" for j in range(N_ITEMS - len(HOSTILE_IDS))]


class Env:
    """A data dir with a writable registry, a vector store, a triple store and one client."""

    def __init__(self, tmp_path, serve_cfg=None):
        self.cfg = load_config(environ={}).with_overrides(
            store={"data_dir": str(tmp_path / "data")},
            index={"backend": "exact", "metric": "IP", "index_type": "FLAT"},
            serve={"max_k": 50, **(serve_cfg or {})})
        self.registry = ModelRegistry(self.cfg.data_dir)
        self.vs = vector_store_from_config(self.cfg)
        self.triples = TripleStore(self.cfg.data_dir)
        # one LMDB handle per path and process: the server's client shares the writer's
        self.client = RecallClient(self.cfg, registry=self.registry, triple_store=self.triples)
        self.rng = np.random.default_rng(11)
        self.vectors: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def draw(self):
        return (self.rng.normal(size=(len(USERS), DIM)).astype(np.float32),
                self.rng.normal(size=(N_ITEMS, DIM)).astype(np.float32))

    def publish(self, U=None, V=None, version=None, users=USERS) -> int:
        if U is None:
            U, V = self.draw()
        v = publish_vectors(self.registry, self.vs, user_ids=list(users), user_vectors=U[:len(users)],
                            item_ids=ITEMS, item_vectors=V, store_seq=self.triples.seq,
                            version=version)
        self.vectors[v] = (U, V)
        return v

    def top(self, version: int, user: str, k: int) -> list[str]:
        U, V = self.vectors[version]
        s = V.astype(np.float64) @ U[USERS.index(user)].astype(np.float64)
        return [ITEMS[j] for j in np.argsort(-s, kind="stable")[:k]]

    def close(self):
        self.client.close()
        self.vs.close()


class Server:
    """uvicorn serving ``app`` on 127.0.0.1 (a port of its own) in a thread."""

    def __init__(self, app):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def close(self):
        self.http.close()
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


@pytest.fixture
def served(env):
    s = Server(create_app(env.cfg, env.client))
    yield s
    s.close()


def as_json(result) -> dict:
    """What the HTTP API must answer for a client RecallResult."""
    return {"version": result.version,
            "items": [{"item_id": i, "score": float(s), "source": src} for i, s, src in result.items]}


def metric_samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels...): value} of a Prometheus exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


# ------------------------------------------------------------------------------- equals the client
def test_get_equals_the_client_for_hostile_ids(env, served):
    v = env.publish()
    # a fold-in user (triples after the version), a user with seen items, a user without a vector
    env.triples.put_scores([USERS[3]] * 5, ITEMS[:5], [1, 2, 3, 4, 1])
    env.triples.put_scores(["cold\x00user"], [ITEMS[7]], [2])
    sources = set()
    for user in USERS + ["cold\x00user", "never seen 'x'"]:
        for k, exclude in ((10, False), (7, True)):
            want = as_json(env.client.recall_result(user, k, exclude))
            r = served.http.get("/recall", params={"user_id": user, "k": k,
                                                   "exclude_seen": str(exclude).lower()})
            assert r.status_code == 200, (user, r.text)
            assert r.headers["content-type"] == "application/json"
            assert r.json() == want, user  # ids, order, scores (exactly) and sources
            assert r.json()["version"] == v
            sources |= {it["source"] for it in want["items"]}
        # the id percent-encoded by hand (every byte), and k at its default of 10
        r = served.http.get(f"/recall?user_id={quote(user, safe='')}")
        assert r.json() == as_json(env.client.recall_result(user, 10)), user
    assert sources == {"model", "fold_in", "popular"}
    # an id shaped like a query string is one id
    r = served.http.get("/recall?user_id=" + quote("u1&k=3", safe=""))
    assert r.status_code == 200 and r.json() == as_json(env.client.recall_result("u1&k=3", 10))
    # an id that is an integer is its decimal string (DESIGN §1)
    env.triples.put_scores(["42"], [ITEMS[1]], [3])
    assert served.http.get("/recall?user_id=42").json() == as_json(env.client.recall_result(42))


def test_post_answers_in_the_order_asked_from_one_version(env, served):
    v = env.publish()
    asked = [USERS[5], "nobody", USERS[0], 42, USERS[5], *HOSTILE_IDS[::3]]
    r = served.http.post("/recall", json={"user_ids": asked, "k": 4, "exclude_seen": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"version", "results"} and body["version"] == v
    assert body["results"] == [as_json(env.client.recall_result(u, 4))["items"] for u in asked]
    assert served.http.post("/recall", json={"user_ids": []}).json() == {"version": v, "results": []}
    # defaults: k 10, exclude_seen false; a big integer id (beyond 64 bits) is valid JSON and an id
    big = 123456789012345678901234567890
    r = served.http.post("/recall", content=f'{{"user_ids": [{big}, "u1"]}}')
    assert r.status_code == 200, r.text
    assert r.json()["results"] == [as_json(env.client.recall_result(str(big)))["items"],
                                   as_json(env.client.recall_result("u1"))["items"]]


# ------------------------------------------------------------------------------- bad input
BAD_GET = [
    ("", "user_id"),
    ("k=5", "user_id"),
    ("user_id=", "user_id"),
    ("user_id=" + "x" * 129, "user_id"),
    ("user_id=" + quote("é" * 65), "user_id"),  # 130 UTF-8 bytes
    ("user_id=%FF%FE", "user_id"),  # not UTF-8 once decoded
    ("user_id=a&user_id=b", "user_id"),
    ("user_id=u1&k=abc", "k"),
    ("user_id=u1&k=", "k"),
    ("user_id=u1&k=1.5", "k"),
    ("user_id=u1&k=1e3", "k"),
    ("user_id=u1&k=0", "k"),
    ("user_id=u1&k=-3", "k"),
    ("user_id=u1&k=51", "k"),  # > [serve] max_k
    ("user_id=u1&k=" + "9" * 5000, "k"),
    ("user_id=u1&exclude_seen=yes", "exclude_seen"),
    ("user_id=u1&exclude_seen=1", "exclude_seen"),
    ("user_id=u1&exclude_seen=", "exclude_seen"),
    ("user_id=u1&exclude=true", "exclude"),  # a typo is not silently ignored
    ("user_id=u1&" + "&".join(f"p{j}=1" for j in range(50)), "query"),
]
BAD_POST = [
    (b"", "body"),
    (b"{", "body"),
    (b"not json", "body"),
    (b'{"user_ids": ["a"]} trailing', "body"),
    (b"[1, 2]", "body"),
    (b'"u1"', "body"),
    (b"{}", "user_ids"),
    (b'{"user_ids": "u1"}', "user_ids"),
    (b'{"user_ids": {"u1": 1}}', "user_ids"),
    (b'{"user_ids": null}', "user_ids"),
    (b'{"user_ids": ["u1", ""]}', "user_ids"),
    (b'{"user_ids": ["u1", 1.5]}', "user_ids"),
    (b'{"user_ids": ["u1", -4]}', "user_ids"),
    (b'{"user_ids": [true]}', "user_ids"),
    (b'{"user_ids": [null]}', "user_ids"),
    (b'{"user_ids": [["u1"]]}', "user_ids"),
    (('{"user_ids": ["' + "x" * 129 + '"]}').encode(), "user_ids"),
    (b'{"user_ids": ["u1"], "k": "10"}', "k"),
    (b'{"user_ids": ["u1"], "k": 2.5}', "k"),
    (b'{"user_ids": ["u1"], "k": true}', "k"),
    (b'{"user_ids": ["u1"], "k": 0}', "k"),
    (b'{"user_ids": ["u1"], "k": 51}', "k"),
    (b'{"user_ids": ["u1"], "k": null}', "k"),
    (b'{"user_ids": ["u1"], "exclude_seen": "true"}', "exclude_seen"),
    (b'{"user_ids": ["u1"], "exclude_seen": 1}', "exclude_seen"),
    (b'{"user_ids": ["u1"], "exclude_seen": null}', "exclude_seen"),
    (b'{"user_ids": ["u1"], "users": []}', "users"),
]


def test_every_bad_input_is_a_400_naming_the_parameter(env, served):
    env.publish()
    for query, param in BAD_GET:
        r = served.http.get("/recall?" + query)
        assert r.status_code == 400, (query[:80], r.status_code, r.text)
        body = r.json()
        assert body["parameter"] == param and param in body["error"], (query[:80], body)
        assert "\n" not in body["error"] and len(body["error"]) < 300, body
    for raw, param in BAD_POST:
        r = served.http.post("/recall", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (raw[:80], r.status_code, r.text)
        body = r.json()
        assert body["parameter"] == param and param in body["error"], (raw[:80], body)
    # too many users in one request, and a body past its limit
    many = {"user_ids": [f"u{j}" for j in range(env.cfg.serve.max_batch_users + 1)]}
    r = served.http.post("/recall", json=many)
    assert r.status_code == 400 and "max_batch_users" in r.json()["error"]
    r = served.http.post("/recall", content=b" " * (served_limit(env) + 10))
    assert r.status_code == 400 and r.json()["parameter"] == "body"
    # unknown paths and methods are JSON errors too, never a 500
    assert served.http.get("/nope").status_code == 404 and "error" in served.http.get("/nope").json()
    assert served.http.delete("/recall").status_code == 405
    # the server is fine afterwards, and counted every one of them as a bad request
    assert served.http.get("/recall?user_id=u1").status_code == 200
    m = metric_samples(served.http.get("/metrics").text)
    assert m[("mcrecall_recall_errors_total", ("reason", "bad_request"))] == len(BAD_GET) + len(BAD_POST) + 2
    assert m[("mcrecall_recall_errors_total", ("reason", "internal"))] == 0


def served_limit(env) -> int:
    from mcrecall.serve.http import ServeState

    return ServeState(env.cfg, env.client).max_body


# ------------------------------------------------------------------------------- health, readiness
def test_readyz_is_503_until_a_version_is_current(env, served):
    assert served.http.get("/healthz").json() == {"status": "alive"}
    r = served.http.get("/readyz")
    assert r.status_code == 503 and r.json()["version"] is None
    assert "no model version" in r.json()["reason"]
    r = served.http.get("/recall?user_id=u1")
    assert r.status_code == 503 and "mcrecall train" in r.json()["error"]
    r = served.http.post("/recall", json={"user_ids": ["u1"]})
    assert r.status_code == 503
    v = env.publish()
    r = served.http.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "version": v, "role": "primary"}
    m = metric_samples(served.http.get("/metrics").text)
    assert m[("mcrecall_recall_errors_total", ("reason", "no_model"))] == 2
    assert m[("mcrecall_model_version",)] == v and m[("mcrecall_ready",)] == 1


def test_readyz_on_a_replica_follows_its_lag(env):
    env.publish()
    status = {"role": "replica", "current_version": 1, "newest_version": 1, "lag_versions": 0,
              "lag_events": 12, "lag_s": 3.5}

    def replica_fn(cfg):
        if isinstance(status.get("boom"), Exception):
            raise status["boom"]
        return dict(status)

    cfg = env.cfg.with_overrides(serve={"max_lag_s": 30})
    s = Server(create_app(cfg, env.client, replica_fn=replica_fn))
    try:
        r = s.http.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json()["role"] == "replica" and r.json()["lag_s"] == 3.5
        assert r.json()["lag_events"] == 12 and r.json()["max_lag_s"] == 30
        m = metric_samples(s.http.get("/metrics").text)
        assert m[("mcrecall_replica_lag_seconds",)] == 3.5
        assert m[("mcrecall_replica_lag_events",)] == 12
        assert m[("mcrecall_replica_lag_versions",)] == 0
        status.update(lag_s=45.0, lag_versions=2, newest_version=3)
        time.sleep(1.1)  # replica_status() is asked at most once a second
        r = s.http.get("/readyz")
        assert r.status_code == 503 and "max_lag_s" in r.json()["reason"], r.text
        assert r.json()["version"] == 1 and r.json()["newest_version"] == 3
        assert s.http.get("/recall?user_id=u1").status_code == 200  # it still answers
        m = metric_samples(s.http.get("/metrics").text)
        assert m[("mcrecall_ready",)] == 0 and m[("mcrecall_replica_lag_versions",)] == 2
        status["boom"] = RuntimeError("model log unreadable")
        time.sleep(1.1)
        r = s.http.get("/readyz")
        assert r.status_code == 503 and "model log unreadable" in r.json()["reason"]
    finally:
        s.close()


def test_without_the_replica_module_every_host_is_a_primary(env):
    from mcrecall.serve.http import replica_status

    try:
        import mcrecall.serve.replica  # noqa: F401
    except ModuleNotFoundError:
        assert replica_status(env.cfg) is None
    else:  # the replica part is there: on a data dir that is not a replica's, still a primary
        assert replica_status(env.cfg) is None or replica_status(env.cfg).get("role") != "replica"


# ------------------------------------------------------------------------------- metrics
def test_metrics_parse_and_count_recalls_by_source(env, served):
    v = env.publish(users=USERS[:-3])  # the last three users have no vector: popular
    env.triples.put_scores([USERS[0]], [ITEMS[2]], [4])  # fold-in
    n_model, n_popular = 0, 0
    for u in USERS[1:6]:
        assert served.http.get("/recall", params={"user_id": u}).json()["items"][0]["source"] == "model"
        n_model += 1
    for u in USERS[-3:]:
        assert served.http.get("/recall", params={"user_id": u}).json()["items"][0]["source"] == "popular"
        n_popular += 1
    assert served.http.get("/recall", params={"user_id": USERS[0]}).json()["items"][0]["source"] == "fold_in"
    r = served.http.post("/recall", json={"user_ids": [USERS[1], USERS[-1], USERS[0], USERS[2]]})
    assert r.status_code == 200
    r = served.http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = metric_samples(r.text)
    assert m[("mcrecall_recall_requests_total", ("source", "model"))] == n_model + 2
    assert m[("mcrecall_recall_requests_total", ("source", "popular"))] == n_popular + 1
    assert m[("mcrecall_recall_requests_total", ("source", "fold_in"))] == 2
    assert m[("mcrecall_recall_seconds_count", ("method", "GET"))] == n_model + n_popular + 1
    assert m[("mcrecall_recall_seconds_count", ("method", "POST"))] == 1
    assert 0 < m[("mcrecall_recall_seconds_sum", ("method", "GET"))] < 30
    assert m[("mcrecall_recall_seconds_bucket", ("le", "+Inf"), ("method", "GET"))] == n_model + n_popular + 1
    assert m[("mcrecall_model_version",)] == v
    assert ("mcrecall_replica_lag_seconds",) not in m  # a primary has no lag


# ------------------------------------------------------------------------------- swap under load
def test_a_version_swap_under_load_gives_no_error_and_no_mixed_answer(env, served):
    k = 5
    first = env.publish()
    drawn = [env.draw() for _ in range(6)]  # the next versions' vectors, known in advance
    versions = {first: env.vectors[first]}
    for j, (U, V) in enumerate(drawn):
        versions[first + 1 + j] = (U, V)
    env.vectors.update(versions)
    expected = {v: {u: env.top(v, u, k) for u in USERS[::4]} for v in versions}
    stop = threading.Event()
    failures, seen_versions, answers = [], set(), [0]
    lock = threading.Lock()

    def check(version, user, items):
        want = expected.get(version, {}).get(user)
        if want is None or [it["item_id"] for it in items] != want:
            failures.append(("mixed or wrong", version, user))

    def load(j):
        users = list(expected[first])
        with httpx.Client(base_url=served.url, timeout=30) as http:
            i = j
            while not stop.is_set():
                try:
                    if i % 3 == 0:
                        batch = users[i % len(users):] + users[:i % len(users)]
                        r = http.post("/recall", json={"user_ids": batch, "k": k})
                        body = r.json()
                        if r.status_code != 200:
                            failures.append((r.status_code, r.text[:200]))
                            continue
                        for u, items in zip(batch, body["results"], strict=True):
                            check(body["version"], u, items)
                    else:
                        u = users[i % len(users)]
                        r = http.get("/recall", params={"user_id": u, "k": k})
                        if r.status_code != 200:
                            failures.append((r.status_code, r.text[:200]))
                            continue
                        body = r.json()
                        check(body["version"], u, body["items"])
                except httpx.HTTPError as e:
                    failures.append(repr(e))
                    continue
                with lock:
                    seen_versions.add(body["version"])
                    answers[0] += 1
                i += 1

    threads = [threading.Thread(target=load, args=(j,), daemon=True) for j in range(6)]
    for t in threads:
        t.start()
    try:
        for j, (U, V) in enumerate(drawn):  # each publication drops the version before last
            time.sleep(0.3)
            env.publish(U, V, version=first + 1 + j)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    m = metric_samples(served.http.get("/metrics").text)
    assert sum(m[("mcrecall_recall_errors_total", ("reason", r))]
               for r in ("bad_request", "no_model", "unavailable", "internal")) == 0
    assert len(seen_versions) >= 4 and answers[0] > 100, (seen_versions, answers)
    assert env.registry.versions()[-1] == first + len(drawn)


# ------------------------------------------------------------------------------- the command line
def _start(args, env, tmp_path):
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "mcrecall", *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = (tmp_path / "serve.log").read_text()
        m = re.search(r"mcrecall serve: (http://127\.0\.0\.1:\d+)", text)
        if m:
            return proc, m.group(1), log
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {text[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("serve did not start: " + (tmp_path / "serve.log").read_text()[-3000:])


def _wait_ready(url: str, timeout: float = 120) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(url + "/readyz", timeout=10)
            if r.status_code == 200:
                return r
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "serve never became ready"
        time.sleep(0.3)


def test_serve_with_two_workers_sums_the_metrics_of_both(env, tmp_path):
    v = env.publish()
    expected = {u: as_json(env.client.recall_result(u, 6)) for u in USERS[:10]}
    cfg_file = tmp_path / "mcrecall.toml"
    cfg_file.write_text(f'[store]\ndata_dir = {json.dumps(str(env.cfg.data_dir))}\n'
                        '[index]\nbackend = "exact"\nmetric = "IP"\nindex_type = "FLAT"\n')
    run_env = {k: x for k, x in os.environ.items() if not k.startswith(("MCRECALL_", "PROMETHEUS_"))}
    run_env.update(PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path))
    proc, url, log = _start(["--config", str(cfg_file), "serve", "--port", "0", "--workers", "2"],
                            run_env, tmp_path)
    try:
        assert _wait_ready(url).json()["version"] == v
        n = 0
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(3):
                for u, want in expected.items():
                    r = http.get("/recall", params={"user_id": u, "k": 6})
                    assert r.status_code == 200 and r.json() == want, r.text
                    n += 1
            # several scrapes (each answered by either worker) show the same sum of both
            for _ in range(6):
                m = metric_samples(http.get("/metrics").text)
                assert m[("mcrecall_recall_requests_total", ("source", "model"))] == n
                assert m[("mcrecall_recall_seconds_count", ("method", "GET"))] == n
                assert m[("mcrecall_model_version",)] == v
        (mdir,) = tmp_path.glob("mcrecall-serve-metrics-*")  # the multiprocess directory
        assert len(list(mdir.glob("counter_*.db"))) == 2, "one file per worker process"
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        log.close()
    assert rc == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert not list(tmp_path.glob("mcrecall-serve-metrics-*")), "left its metrics directory"
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_serve_on_a_taken_port_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        e = dict(os.environ, PYTHONPATH=str(ROOT), MCRECALL_STORE_DATA_DIR=str(tmp_path / "d"))
        p = subprocess.run([sys.executable, "-m", "mcrecall", "serve", "--port", str(port)], env=e,
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 1, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("mcrecall serve:")]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], p.stderr[-2000:]


# ------------------------------------------------------------------------------- ingest --metrics-port
@pytest.mark.kafka
@pytest.mark.usefixtures("kafka_client")
def test_ingest_metrics_port_serves_counters_matching_the_events(kafka_bootstrap, kafka_topic, tmp_path):
    from eventlib import random_events

    from mcrecall.ingest.produce import produce_lines

    good = random_events(400, 30, 40, seed=3)
    bad = [b"not json", b'{"user_id": "u1"}', b'{"user_id": "u1", "item_id": "i1", "action": "buy"}']
    cfg = load_config(environ={}).with_overrides(
        kafka={"bootstrap_servers": kafka_bootstrap, "topic": kafka_topic, "group_id": f"g-{kafka_topic}"},
        store={"data_dir": str(tmp_path / "data")})
    produce_lines(good + bad, cfg, validate=False)
    run_env = {k: x for k, x in os.environ.items() if not k.startswith("MCRECALL_") or k == "MCRECALL_KAFKA_CLIENT"}
    run_env.update(PYTHONPATH=str(ROOT), MCRECALL_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
                   MCRECALL_KAFKA_TOPIC=kafka_topic, MCRECALL_KAFKA_GROUP_ID=f"g-{kafka_topic}",
                   MCRECALL_STORE_DATA_DIR=str(tmp_path / "data"))
    log = open(tmp_path / "ingest.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "mcrecall", "ingest", "--metrics-port", "0"],
                            env=run_env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            m = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", (tmp_path / "ingest.log").read_text())
            url = m and m.group(1)
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "ingest.log").read_text()
            time.sleep(0.1)
        total = len(good) + len(bad)
        while True:
            m = metric_samples(httpx.get(url, timeout=10).text)
            done = m[("mcrecall_ingest_events_total",)] + m[("mcrecall_ingest_bad_events_total",)]
            lag = m[("mcrecall_ingest_lag_events",)]
            if done >= total and lag == 0:
                break
            assert time.monotonic() < deadline, (m, (tmp_path / "ingest.log").read_text()[-2000:])
            time.sleep(0.3)
        assert m[("mcrecall_ingest_events_total",)] == len(good)
        assert m[("mcrecall_ingest_bad_events_total",)] == len(bad)
        assert m[("mcrecall_ingest_dlq_failed_total",)] == 0
        assert m[("mcrecall_ingest_batches_total",)] >= 1
        assert m[("mcrecall_ingest_last_batch_timestamp_seconds",)] > time.time() - 300
        store = TripleStore(cfg.data_dir, readonly=True)
        counts = store.counts()
        assert counts["events"] == len(good) and counts["bad_events"] == len(bad), counts
        assert 0 < m[("mcrecall_ingest_changed_pairs_total",)] <= len(good)
        store.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        log.close()
    assert rc == 0, (tmp_path / "ingest.log").read_text()[-3000:]


def test_ingest_metrics_port_errors_are_one_line(tmp_path):
    from mcrecall.ingest.metrics import start_worker_metrics

    with pytest.raises(ValueError, match="metrics-port"):
        start_worker_metrics(70000)
    server = start_worker_metrics(0)
    try:
        with pytest.raises(OSError, match=f"127.0.0.1:{server.port}"):
            start_worker_metrics(server.port)
        m = metric_samples(httpx.get(server.url, timeout=10).text)
        assert m[("mcrecall_ingest_events_total",)] == 0
        assert np.isnan(m[("mcrecall_ingest_lag_events",)])
    finally:
        server.close()


def test_ingest_metrics_port_with_a_backfill_is_one_line(tmp_path):
    events = tmp_path / "e.jsonl"
    events.write_text('{"user_id": "u1", "item_id": "i1", "action": "click"}\n')
    e = dict(os.environ, PYTHONPATH=str(ROOT), MCRECALL_STORE_DATA_DIR=str(tmp_path / "d"))
    p = subprocess.run([sys.executable, "-m", "mcrecall", "ingest", "--from-file", str(events),
                        "--metrics-port", "0"], env=e, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("mcrecall ingest:")]
    assert len(lines) == 1 and "--metrics-port" in lines[0], p.stderr

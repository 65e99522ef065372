"""Serving replicas fed by Kafka (issue 18 §1, §2, §5): the model log and ``mcrecall replica``.

Real parts only: the local Kafka-protocol broker (fixtures_kafka), real LMDB stores, the real
trainer and refresher on the primary, ``mcrecall replica`` as a subprocess (so it can be
SIGKILLed), and RecallClient on both data dirs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from mcrecall.core.config import load_config
from mcrecall.ingest.kafka_io import ensure_topic
from mcrecall.ingest.produce import produce_lines
from mcrecall.ingest.store import TripleStore
from mcrecall.ingest.worker import IngestWorker
from mcrecall.serve.client import RecallClient
from mcrecall.serve.replica import replica_status
from mcrecall.train import model_log as ml
from mcrecall.train.versions import ModelRegistry

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[1]
QUIET = {"log": lambda *_: None}


# ---------------------------------------------------------------------- hosts
class Host:
    """One data dir with its configuration (a TOML file, for subprocesses) and its config."""

    def __init__(self, tmp: Path, name: str, bootstrap: str, topic: str, backend: str, *,
                 publish: bool = False, data_dir: Path | None = None, **extra):
        self.name = name
        self.data_dir = data_dir or tmp / name
        self.sections = {
            "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "group_id": f"{name}-{topic}",
                      "session_timeout_ms": 6000},
            "store": {"data_dir": str(self.data_dir)},
            "index": {"backend": backend, "metric": "IP", "index_type": "AUTOINDEX"},
            "train": {"objective": "implicit", "dim": 8, "epochs": 4, "reg": 0.1, "alpha": 5.0,
                      "threads": 1, "seed": 0, "holdout_fraction": 0.1},
            "replication": {"publish": publish, "topic": f"{topic}.models", "timeout_s": 5.0},
        }
        for sec, vals in extra.items():
            self.sections.setdefault(sec, {}).update(vals)
        self.cfg = load_config(environ={}).with_overrides(**self.sections)
        self.toml = tmp / f"{name}.toml"
        self.toml.write_text(_toml(self.sections))
        self.proc: subprocess.Popen | None = None
        self.log_path = tmp / f"{name}.log"

    # -- the replica process
    def start_replica(self, env: dict | None = None, args: tuple = ()) -> subprocess.Popen:
        e = dict(os.environ)
        e.pop("MCRECALL_CONFIG", None)
        e["PYTHONPATH"] = str(ROOT)
        e.update(env or {})
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "mcrecall", "--config", str(self.toml), "replica",
                                      *args], env=e, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        return self.proc

    def stop(self, sig=signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        rc, self.proc = self.proc.returncode, None
        return rc

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> dict | None:
        return replica_status(self.cfg)

    def wait_current(self, version: int, timeout: float = 60.0, events: int | None = None) -> float:
        """Seconds until this replica serves ``version`` (and holds ``events`` events)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            st = self.status()
            if st and st["current_version"] == version and (events is None or store_events(self) == events):
                return time.monotonic() - t0
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"replica exited {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"replica not at version {version} after {timeout} s: {self.status()}\n"
                             f"{self.log_text()[-3000:]}")


def _toml(sections: dict) -> str:
    out = []
    for sec, vals in sections.items():
        out.append(f"[{sec}]")
        for k, v in vals.items():
            out.append(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}")
    return "\n".join(out) + "\n"


def store_events(host: Host) -> int:
    if not (host.data_dir / "triples.lmdb" / "data.mdb").exists():
        return -1
    s = TripleStore(host.data_dir, readonly=True)
    try:
        return s.counts()["events"]
    finally:
        s.close()


def triples_of(host: Host) -> dict:
    s = TripleStore(host.data_dir, readonly=True)
    try:
        return {(u, i): sc for u, i, sc in s.iter_triples()}
    finally:
        s.close()


def events(n_users: int, n_items: int, n: int, seed: int, extra_items=()) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        u, i = f"u{rng.randrange(n_users)}", f"i{rng.randrange(n_items)}"
        out.append(json.dumps({"user_id": u, "item_id": i,
                               "action": rng.choice(["click", "like", "impression"])}).encode())
    for item in extra_items:  # a new item liked by a few users
        for u in rng.sample(range(n_users), 5):
            out.append(json.dumps({"user_id": f"u{u}", "item_id": item, "action": "like"}).encode())
    return out


def ingest(host: Host) -> int:
    return IngestWorker(host.cfg, progress_every_s=60).run(until_idle=1.5).events


def train(host: Host) -> int:
    from mcrecall.train.trainer import train_run

    res = train_run(host.cfg, force=True, **QUIET)
    assert res.status == "published", res
    return res.version


def assert_same(primary: Host, replica: Host, users, k: int = 10) -> int:
    """Every user's recall equal on both hosts (ids, order, sources; scores within 1e-4),
    with and without exclude_seen; returns the version."""
    with RecallClient(primary.cfg) as a, RecallClient(replica.cfg) as b:
        assert a.version == b.version
        for u in users:
            for ex in (False, True):
                ra, rb = a.recall_result(u, k, ex), b.recall_result(u, k, ex)
                assert ra.version == rb.version, u
                assert [(x.item_id, x.source) for x in ra.items] == [(x.item_id, x.source) for x in rb.items], (u, ex)
                np.testing.assert_allclose([x.score for x in ra.items], [x.score for x in rb.items],
                                           atol=1e-4, rtol=0)
        return a.version


@pytest.fixture
def world(tmp_path, kafka_bootstrap):
    topic = f"rep-{uuid.uuid4().hex[:8]}"
    ensure_topic(kafka_bootstrap, topic, partitions=3)
    hosts = []

    def make(name, backend="exact", **kw):
        h = Host(tmp_path, name, kafka_bootstrap, topic, backend, **kw)
        hosts.append(h)
        return h

    yield {"topic": topic, "bootstrap": kafka_bootstrap, "make": make, "tmp": tmp_path}
    for h in hosts:
        h.stop(signal.SIGKILL)


N_USERS, N_ITEMS = 60, 40
USERS = [f"u{j}" for j in range(N_USERS)] + ["nobody"]


# ---------------------------------------------------------------------- tests
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["exact", "faiss", "hnswlib"])
def test_replica_equals_primary_first_version_refresh_second_version(world, backend):
    if backend != "exact":
        pytest.importorskip(backend)
    _equal_through_versions(world, backend)


@pytest.mark.slow
@pytest.mark.milvus
def test_replica_adopts_the_shared_milvus_collection(world, milvus_uri, milvus_collection):
    """Milvus on a shared server (`mcrecall milvus`): the replica adopts each version's collection
    by its spec (no index of its own) and answers like the primary."""
    _equal_through_versions(world, "milvus", index={"uri": milvus_uri, "collection": milvus_collection})


def _equal_through_versions(world, backend, **extra):
    primary = world["make"]("primary", backend, publish=True, **extra)
    replica = world["make"]("replica", backend, **extra)
    lines = events(N_USERS, N_ITEMS, 800, seed=1)
    produce_lines(lines, primary.cfg)
    assert ingest(primary) == len(lines)
    v1 = train(primary)
    replica.start_replica()  # an empty data dir bootstraps from the log alone
    replica.wait_current(v1, events=store_events(primary))
    assert triples_of(replica) == triples_of(primary)
    assert assert_same(primary, replica, USERS) == v1

    # a refresh cycle: a new item, recallable on the replica within seconds
    more = events(N_USERS, N_ITEMS, 50, seed=2, extra_items=["fresh"])
    produce_lines(more, primary.cfg)
    ingest(primary)
    from mcrecall.train.refresh import refresh_once

    res = refresh_once(primary.cfg, **QUIET)
    assert res.status == "refreshed" and res.updated >= 1
    t0 = time.monotonic()
    reg = ModelRegistry(replica.data_dir, readonly=True)
    try:
        while reg.refresh_generation(v1) < 1 or store_events(replica) != store_events(primary):
            assert time.monotonic() - t0 < 15, replica.status()
            time.sleep(0.1)
    finally:
        reg.close()
    with RecallClient(replica.cfg) as c:
        assert c.score("u0", ["fresh"])[0] is not None  # the replica knows the new item
    assert assert_same(primary, replica, USERS) == v1

    v2 = train(primary)
    replica.wait_current(v2)
    assert assert_same(primary, replica, USERS) == v2
    reg = ModelRegistry(replica.data_dir, readonly=True)
    try:
        assert reg.versions() == [v1, v2]  # the previous version kept, like the primary
        with ModelRegistry(primary.data_dir, readonly=True) as reg_p:
            np.testing.assert_array_equal(reg.user_matrix(v2), reg_p.user_matrix(v2))
    finally:
        reg.close()
    st = replica.status()
    assert st["role"] == "replica" and st["newest_version"] == v2 and st["lag_versions"] == 0
    assert replica.stop() == 0


def _status_json(host: Host) -> dict:
    out = subprocess.run([sys.executable, "-m", "mcrecall", "--config", str(host.toml), "status", "--json"],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_corrupt_version_is_never_current_and_status_reports(world):
    primary = world["make"]("primary", publish=True)
    replica = world["make"]("replica")
    produce_lines(events(N_USERS, N_ITEMS, 300, seed=3), primary.cfg)
    ingest(primary)
    v1 = train(primary)
    replica.start_replica()
    replica.wait_current(v1, events=store_events(primary))
    # a version on the log with one chunk's bytes changed after its checksum was taken
    reg = ModelRegistry(primary.data_dir, readonly=True)
    meta = dict(reg.metadata(v1), version=v1 + 10)
    U = reg.user_matrix(v1)
    reg.close()
    recs, end = ml.version_records(v1 + 10, meta, [f"u{j}" for j in range(len(U))], U,
                                   [f"i{j}" for j in range(N_ITEMS)], np.ones((N_ITEMS, U.shape[1]), np.float32))
    k, v = recs[1]
    recs[1] = (k, v[:-3] + bytes(b ^ 0xFF for b in v[-3:]))
    log = ml.ModelLog(primary.cfg)
    topic = ml.version_topic(primary.cfg.model_log_topic, v1 + 10)
    log._ensure_topics([(topic, {})], time.monotonic() + 10)
    log._send_all(topic, recs, time.monotonic() + 10)
    log._send_all(primary.cfg.model_log_topic, [ml.control_record(v1 + 10, topic, end, 0)], time.monotonic() + 10)
    log.close()
    t0 = time.monotonic()
    while str(v1 + 10) not in (replica.status() or {}).get("bad_versions", {}):
        assert time.monotonic() - t0 < 20, replica.status()
        time.sleep(0.1)
    st = replica.status()
    assert st["current_version"] == v1 and "checksum" in st["bad_versions"][str(v1 + 10)]
    assert "replica_version_corrupt" in replica.log_text()
    assert assert_same(primary, replica, USERS) == v1
    shown = _status_json(replica)
    assert shown["role"] == "replica" and shown["replica"]["current_version"] == v1
    # the newest on the log is refused: the replica is as up to date as it can be (bad_versions says why)
    assert shown["replica"]["newest_version"] == v1 + 10 and shown["replica"]["lag_versions"] == 0
    text = subprocess.run([sys.executable, "-m", "mcrecall", "--config", str(replica.toml), "status"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert "role: replica" in text and f"version {v1 + 10} NOT made current" in text, text
    assert _status_json(primary)["role"] == "primary"
    # the next good version still becomes current
    v2 = train(primary)
    replica.wait_current(v2)
    assert assert_same(primary, replica, USERS) == v2
    # the primary keeps the current and the previous version on the log; others are deleted
    from mcrecall.ingest.kafka_io import admin_client

    admin = admin_client(world["bootstrap"])
    try:
        prefix = primary.cfg.model_log_topic + ".v"
        assert sorted(t for t in admin.list_topics() if t.startswith(prefix)) == sorted(
            ml.version_topic(primary.cfg.model_log_topic, v) for v in (v1, v2))
    finally:
        admin.close()


def test_two_replicas_and_a_replica_from_a_snapshot(world):
    primary = world["make"]("primary", publish=True)
    r1, r2 = world["make"]("r1"), world["make"]("r2")
    produce_lines(events(N_USERS, N_ITEMS, 400, seed=4), primary.cfg)
    ingest(primary)
    v1 = train(primary)
    r1.start_replica()
    r2.start_replica()
    r1.wait_current(v1, events=store_events(primary))
    r2.wait_current(v1, events=store_events(primary))
    assert assert_same(primary, r1, USERS) == v1
    assert assert_same(primary, r2, USERS) == v1
    # a new host from r1's snapshot: its store starts at r1's offsets, then catches up
    snap_dir = world["tmp"] / "snap"
    out = subprocess.run([sys.executable, "-m", "mcrecall", "--config", str(r1.toml), "snapshot", str(snap_dir)],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads((snap_dir / "snapshot.json").read_text())
    assert info["offsets"] and sum(info["offsets"].values()) == store_events(primary)
    produce_lines(events(N_USERS, N_ITEMS, 100, seed=5), primary.cfg)  # after the snapshot
    ingest(primary)
    r3 = world["make"]("r3", data_dir=snap_dir)
    r3.start_replica()
    r3.wait_current(v1, events=store_events(primary))
    assert triples_of(r3) == triples_of(primary)
    # the snapshot's replica answers as the primary, fold-in of the events after v1 included
    assert assert_same(primary, r3, USERS) == v1


def test_replica_serves_the_hybrid_model_like_the_primary(world):
    """A version of the hybrid model (attributes): its token tables travel in the log, so users
    served from their attributes (and fold-in with an attribute part) answer the same."""
    from mcrecall.train.versions import ModelRegistry

    primary = world["make"]("hprimary", publish=True)
    rep = world["make"]("hrep")
    lines = events(N_USERS, N_ITEMS, 500, seed=7)
    lines += [json.dumps({"item_id": f"i{j}", "attributes": {"genre": f"g{j % 4}", "tags": ["a", f"t{j % 3}"]},
                          "ts": 1}).encode() for j in range(N_ITEMS + 1)]  # i{N_ITEMS}: attributes only
    lines += [json.dumps({"user_id": u, "attributes": {"likes": f"g{k % 4}"}, "ts": 1}).encode()
              for k, u in enumerate([f"u{j}" for j in range(N_USERS)] + ["newbie", "newbie2"])]
    produce_lines(lines, primary.cfg)
    ingest(primary)
    v1 = train(primary)
    pr = ModelRegistry(primary.data_dir, readonly=True)
    try:
        tables = {side: pr.tokens(v1, side) for side in ("item", "user")}
    finally:
        pr.close()
    assert tables["item"] is not None and tables["user"] is not None, "the hybrid model was not trained"
    rep.start_replica()
    rep.wait_current(v1, events=store_events(primary))
    rr = ModelRegistry(rep.data_dir, readonly=True)
    try:
        for side, (vocab, emb) in tables.items():
            got = rr.tokens(v1, side)
            assert got is not None and list(got[0]) == list(vocab), side
            np.testing.assert_array_equal(got[1], emb)
    finally:
        rr.close()
    assert assert_same(primary, rep, USERS + ["newbie", "newbie2"]) == v1
    with RecallClient(rep.cfg) as c:
        assert c.recall_result("newbie", 5).items[0].source == "attributes"


def test_replica_metrics_port_serves_worker_counters_and_its_version(world):
    """`mcrecall replica --metrics-port P`: the event worker's counters and the replica's gauges."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from mcrecall.ingest.broker import free_port

    primary = world["make"]("mprimary", publish=True)
    rep = world["make"]("mrep")
    produce_lines(events(N_USERS, N_ITEMS, 300, seed=6), primary.cfg)
    ingest(primary)
    v1 = train(primary)
    port = free_port()
    rep.start_replica(args=("--metrics-port", str(port)))
    rep.wait_current(v1, events=store_events(primary))
    deadline = time.monotonic() + 20
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        values = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}
        if values.get("mcrecall_model_version") == v1 and values.get("mcrecall_replica_lag_versions") == 0:
            break
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.5)
    assert values["mcrecall_ingest_events_total"] == store_events(primary)
    assert values["mcrecall_replica_newest_version"] == v1


def test_kafka_down_replica_keeps_serving(tmp_path):
    from mcrecall.ingest.broker import LocalBroker

    broker = LocalBroker(log_file=tmp_path / "broker.log")
    broker.__enter__()
    try:
        topic = "rep-down"
        ensure_topic(broker.bootstrap_servers, topic, partitions=2)
        primary = Host(tmp_path, "primary", broker.bootstrap_servers, topic, "exact", publish=True)
        replica = Host(tmp_path, "replica", broker.bootstrap_servers, topic, "exact")
        produce_lines(events(N_USERS, N_ITEMS, 300, seed=6), primary.cfg)
        ingest(primary)
        v1 = train(primary)
        replica.start_replica()
        replica.wait_current(v1, events=store_events(primary))
        t0 = time.monotonic()
        while replica.status()["lag_s"] != 0.0:
            assert time.monotonic() - t0 < 15, replica.status()
            time.sleep(0.2)
    finally:
        broker.__exit__(None, None, None)
    try:
        t0 = time.monotonic()
        while replica.status()["lag_s"] < 2.0:  # lag grows while Kafka is away
            assert time.monotonic() - t0 < 30, replica.status()
            time.sleep(0.2)
        st = replica.status()
        assert st["current_version"] == v1 and st["running"] and not st["kafka_reachable"]
        assert replica.proc.poll() is None
        assert assert_same(primary, replica, USERS) == v1
    finally:
        replica.stop(signal.SIGKILL)


def test_publication_fails_cleanly_when_kafka_is_unreachable(world):
    from mcrecall.core.net import free_port

    primary = world["make"]("primary", publish=False)
    produce_lines(events(N_USERS, N_ITEMS, 200, seed=7), primary.cfg)
    ingest(primary)
    v1 = train(primary)  # published without the log
    dead = Host(world["tmp"], "primary-dead", f"127.0.0.1:{free_port()}", world["topic"], "exact",
                publish=True, data_dir=primary.data_dir, replication={"timeout_s": 2.0})
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "mcrecall", "--config", str(dead.toml), "train", "--force"],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=120)
    assert out.returncode == 1, (out.stdout, out.stderr)
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "model log" in err[0] and f"version {v1} keeps serving" in err[0], out.stderr
    assert "Traceback" not in out.stderr
    assert time.monotonic() - t0 < 90
    reg = ModelRegistry(primary.data_dir, readonly=True)
    try:
        assert reg.current_version() == v1 and reg.versions() == [v1]
    finally:
        reg.close()
    with RecallClient(primary.cfg) as c:
        assert c.version == v1 and c.recall("u1", 5)
    # a refresh cycle fails the same way: nothing applied, the next cycle redoes it
    produce_lines(events(N_USERS, N_ITEMS, 50, seed=9, extra_items=["late"]), primary.cfg)
    ingest(primary)
    out = subprocess.run([sys.executable, "-m", "mcrecall", "--config", str(dead.toml), "refresh"],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=120)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(err) == 1 and "model log" in err[0], (out.stdout, out.stderr)
    with ModelRegistry(primary.data_dir, readonly=True) as reg:
        assert reg.refresh_generation(v1) == 0
    with RecallClient(primary.cfg) as c:
        assert c.score("u1", ["late"]) == [None]


@pytest.mark.slow
def test_sigkill_during_bootstrap_and_version_transfer(world):
    """Kill the replica at random moments and at every named step; restart; the result is the
    same store and the same answers as the primary."""
    primary = world["make"]("primary", publish=True)
    replica = world["make"]("replica")
    n_users, n_items = 3000, 300  # several chunks per version
    lines = events(n_users, n_items, 12_000, seed=8)
    produce_lines(lines, primary.cfg)
    ingest(primary)
    v1 = train(primary)
    rng = random.Random(8)

    def kill_at_random(version, times, longest, **kw):
        for _ in range(times):  # SIGKILL at a random moment (startup, staging, applying...)
            replica.start_replica()
            try:
                replica.wait_current(version, timeout=rng.uniform(0.5, longest), **kw)
                return
            except AssertionError:
                replica.stop(signal.SIGKILL)
        replica.start_replica()
        replica.wait_current(version, timeout=120, **kw)

    kill_at_random(v1, 5, 8.0, events=store_events(primary))
    users = [f"u{j}" for j in range(0, n_users, 37)] + ["nobody"]
    assert triples_of(replica) == triples_of(primary)
    assert assert_same(primary, replica, users) == v1
    replica.stop()
    # version 2 with a SIGKILL at each named step of the transfer, then random kills
    v2 = train(primary)
    from mcrecall.serve.replica import CRASH_ENV, CRASH_POINTS

    for point in CRASH_POINTS:
        replica.start_replica({CRASH_ENV: point})
        replica.proc.wait(60)
        assert replica.proc.returncode == -signal.SIGKILL, (point, replica.log_text()[-2000:])
        replica.proc = None
        assert replica.status()["current_version"] in (v1, v2)
    kill_at_random(v2, 3, 6.0)
    reg_p, reg_r = ModelRegistry(primary.data_dir, readonly=True), ModelRegistry(replica.data_dir, readonly=True)
    try:
        np.testing.assert_array_equal(reg_p.user_matrix(v2), reg_r.user_matrix(v2))
        assert reg_r.versions() == [v1, v2]
    finally:
        reg_p.close()
        reg_r.close()
    assert assert_same(primary, replica, users) == v2


def test_model_log_records_round_trip_and_chunk_limit():
    rng = np.random.default_rng(0)
    ids = [f"user-{j}" for j in range(5000)] + ["quote\"nl\n\x00é"]
    U = rng.normal(size=(len(ids), 64)).astype(np.float32)
    items = [f"i{j}" for j in range(10)]
    recs, end = ml.version_records(3, {"dim": 64}, ids, U, items, U[:10])
    assert len(recs) > 4 and end["n_users"] == len(ids) and end["n_items"] == 10
    assert all(len(v) < ml.CHUNK_BYTES + 4096 for _, v in recs)
    got, digests = [], []
    for _, v in recs[1:-1]:
        h, p = ml.decode_record(v)
        digests.append(ml.chunk_digest(p))
        if h["kind"] == "users":
            i, x = ml.decode_chunk(h, p)
            got += i
            np.testing.assert_array_equal(x, U[len(got) - len(i):len(got)])
    assert got == ids and ml.combined_checksum(digests) == end["checksum"]
    h, p = ml.decode_record(recs[1][1])
    with pytest.raises(ml.ModelLogFormatError, match="checksum"):
        ml.decode_chunk(h, p[:-1] + bytes([p[-1] ^ 1]))
    with pytest.raises(ml.ModelLogFormatError):
        ml.decode_record(b"\x80\x04pickle")


def test_replication_config_keys(tmp_path):
    from mcrecall.core.config import ConfigError

    cfg = load_config(environ={"MCRECALL_REPLICATION_PUBLISH": "true", "MCRECALL_KAFKA_TOPIC": "ev"})
    assert cfg.replication.publish is True and cfg.model_log_topic == "ev.models"
    assert load_config(environ={"MCRECALL_REPLICATION_TOPIC": "m"}).model_log_topic == "m"
    for bad in ({"MCRECALL_REPLICATION_TOPIC": "bad topic"}, {"MCRECALL_REPLICATION_PUBLISH": "maybe"},
                {"MCRECALL_REPLICATION_TIMEOUT_S": "0"}, {"MCRECALL_REPLICATION_TOPIC": "mcrecall.events"},
                {"MCRECALL_REPLICATION_COLOR": "x"}):
        with pytest.raises(ConfigError):
            load_config(environ=bad)
    primary = load_config(environ={}).with_overrides(store={"data_dir": str(tmp_path)})
    assert replica_status(primary) is None  # no users.lmdb
    ModelRegistry(tmp_path).close()
    assert replica_status(primary) is None  # a primary's users.lmdb

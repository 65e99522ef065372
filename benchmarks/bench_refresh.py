"""Item refresh cost and freshness latency (issue: fresh items).

    python benchmarks/bench_refresh.py [--items 100000] [--changed 1000] [--backends ...]
                                       [--latency-runs 5] [--out benchmarks/results/refresh.md]

1. Refresh cycle: a version of ``--items`` items (implicit, dim 32, 20k users) is published
   (timed: the full publication a retrain pays — the baseline); then each cycle ``--changed``
   items (half brand-new, half existing) get 20 new triples each and ONE ``Refresher.run_once``
   solves and upserts them. The first cycle also reads the version's user Gram matrix and loads
   the version; cycles 2-4 are the steady state of ``refresh --every``. Also: search latency
   (p50 of 200 top-10 queries) before and after the cycles (file backends scan the refreshed
   items beside the index).
2. Freshness latency: a broker (tansu), the ingest worker and ``mcrecall refresh --every 1s``
   run as processes (exact backend, a trained implicit model); a brand-new item gets 60 positive
   events (click + like + collect) from the 20 users nearest to a target user (with 8 users ×
   2 events it reached rank ~50 of 10,000, not the top 10); the time from its first triple being stored to it
   appearing in the
   target user's ``recall(user, 100)`` (median and max over ``--latency-runs`` items), and the
   rank it had then (rank <= 10: in the top 10).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcrecall.core.config import load_config
from mcrecall.ingest.store import TripleStore
from mcrecall.plugins import open_vector_store
from mcrecall.serve.testing import publish_vectors
from mcrecall.train.refresh import Refresher
from mcrecall.train.versions import ModelRegistry

DIM, USERS, TRIPLES_PER_ITEM = 32, 20_000, 20
INDEX = {"exact": "FLAT", "faiss": "HNSW", "hnswlib": "HNSW", "milvus": "HNSW"}


def _search_p50(vs, version, queries) -> float:
    ts = []
    for q in queries:
        t = time.perf_counter()
        vs.search(version, q, 10)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def bench_cycle(backend: str, n_items: int, changed: int, cycles: int, rng) -> dict:
    d = tempfile.mkdtemp(prefix=f"bench-refresh-{backend}-")
    try:
        uri = str(Path(d) / "milvus.db") if backend == "milvus" else ""
        cfg = load_config(environ={}).with_overrides(
            store={"data_dir": d}, index={"backend": backend, "uri": uri, "index_type": INDEX[backend]})
        users = [f"u{k}" for k in range(USERS)]
        items = [f"i{k}" for k in range(n_items)]
        uv = (rng.normal(size=(USERS, DIM)) / 4).astype(np.float32)
        iv = (rng.normal(size=(n_items, DIM)) / 4).astype(np.float32)
        store = TripleStore(d)
        store.put_scores(["seed"], ["i0"], [1])
        reg = ModelRegistry(d)
        vs = open_vector_store(backend, data_dir=d, uri=uri)
        t = time.perf_counter()
        version = publish_vectors(reg, vs, user_ids=users, user_vectors=uv, item_ids=items,
                                  item_vectors=iv, index_type=INDEX[backend], store_seq=store.seq)
        publish_s = time.perf_counter() - t
        queries = uv[:200]
        before = _search_p50(vs, version, queries)
        times, updated = [], []
        with Refresher(cfg, registry=reg, vector_store=vs, triple_store=store,
                       log=lambda s: None) as r:
            for c in range(cycles):
                new = [f"new{c}-{k}" for k in range(changed // 2)]
                old = rng.choice(items, changed - len(new), replace=False).tolist()
                its = [i for i in new + old for _ in range(TRIPLES_PER_ITEM)]
                us = rng.choice(users, len(its)).tolist()
                store.put_scores(us, its, rng.integers(1, 5, len(its)).tolist())
                res = r.run_once()
                assert res.status == "refreshed", res
                times.append(res.seconds)
                updated.append(res.updated)
            after = _search_p50(vs, version, queries)
            count = vs.count(version)
        vs.close()
        reg.close()
        return {"backend": f"{backend} {INDEX[backend]}", "items": n_items, "changed": changed,
                "publish_s": publish_s, "first_s": times[0],
                "steady_s": statistics.median(times[1:]) if len(times) > 1 else times[0],
                "updated": updated[-1], "count": count, "search_before_ms": before,
                "search_after_ms": after}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def bench_latency(runs: int, rng) -> dict:
    from mcrecall.ingest.broker import LocalBroker
    from mcrecall.ingest.kafka_io import ensure_topic
    from mcrecall.ingest.produce import make_producer, produce_lines
    from mcrecall.serve import RecallClient

    d = tempfile.mkdtemp(prefix="bench-fresh-latency-")
    procs = []
    broker = LocalBroker().start()
    try:
        cfg = load_config(environ={}).with_overrides(
            store={"data_dir": d}, index={"backend": "exact", "index_type": "FLAT"},
            kafka={"bootstrap_servers": broker.bootstrap_servers, "session_timeout_ms": 6000})
        ensure_topic(broker.bootstrap_servers, cfg.kafka.topic, cfg.kafka.partitions)
        # a trained implicit model (scores of a new item are only meaningful against one)
        from mcrecall.train.synthetic import make_synthetic
        from mcrecall.train.testing import fill_store
        from mcrecall.train.trainer import train_run

        n_users, n_items = 4_000, 10_000
        data = make_synthetic(n_users=n_users, n_items=n_items, n_triples=120_000, seed=1)
        fill_store(d, data)
        tcfg = cfg.with_overrides(train={"objective": "implicit", "dim": DIM, "epochs": 5})
        assert train_run(tcfg, log=lambda s: None).status == "published"
        store = TripleStore(d)
        reg = ModelRegistry(d, readonly=True)
        users = [u for u in data.user_ids if reg.user_vector(1, u) is not None]
        uv = reg.user_vectors(1, users)
        n_users = len(users)
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]),
                   MCRECALL_STORE_DATA_DIR=d, MCRECALL_INDEX_BACKEND="exact",
                   MCRECALL_INDEX_INDEX_TYPE="FLAT",
                   MCRECALL_KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
                   MCRECALL_KAFKA_SESSION_TIMEOUT_MS="6000")
        for cmd in (["ingest"], ["refresh", "--every", "1s"]):
            procs.append(subprocess.Popen([sys.executable, "-m", "mcrecall", *cmd], env=env,
                                          stdout=open(Path(d) / f"{cmd[0]}.log", "ab"),
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        producer = make_producer(broker.bootstrap_servers)
        client = RecallClient(cfg)
        time.sleep(3.0)  # worker joins its group, refresher starts
        out = []
        for run in range(runs):
            target = int(rng.integers(n_users))
            sims = uv @ uv[target] / np.linalg.norm(uv, axis=1)
            fans = [int(j) for j in np.argsort(-sims)[1:21]]
            item = f"fresh-{run}"
            lines = [json.dumps({"user_id": users[f], "item_id": item, "action": a}).encode()
                     for f in fans for a in ("click", "like", "collect")]
            t0 = time.monotonic()
            produce_lines(lines, cfg, validate=True, producer=producer)
            while store.item_seq(item) == 0:
                if time.monotonic() - t0 > 30:
                    raise RuntimeError("the worker did not store the events")
                time.sleep(0.005)
            t_stored = time.monotonic()
            rank = None
            while rank is None:
                top = [r.item_id for r in client.recall(users[target], 100)]
                rank = top.index(item) + 1 if item in top else None
                if rank is None and time.monotonic() - t_stored > 30:
                    log = (Path(d) / "refresh.log").read_text()[-2000:]
                    raise RuntimeError(f"{item} not in the top 100 within 30 s; refresh.log:\n{log}")
                time.sleep(0.01)
            out.append((t_stored - t0, time.monotonic() - t_stored, rank))
            time.sleep(0.3)
        producer.close()
        client.close()
        return {"runs": runs, "produce_to_stored_s": statistics.median(a for a, _, _ in out),
                "stored_to_recalled_s": statistics.median(b for _, b, _ in out),
                "stored_to_recalled_max_s": max(b for _, b, _ in out),
                "ranks": [r for _, _, r in out]}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--changed", type=int, default=1000)
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--backends", nargs="+", default=["exact", "faiss", "hnswlib", "milvus"])
    ap.add_argument("--latency-runs", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for b in args.backends:
        print(f"refresh cycle: {b} ...", flush=True)
        rows.append(bench_cycle(b, args.items, args.changed, args.cycles, rng))
    lines = [
        f"## Refresh cycle: {args.changed:,} changed items ({TRIPLES_PER_ITEM} triples each, half new) "
        f"in a version of {args.items:,} items, dim {DIM}, {USERS:,} users",
        "",
        "| backend | full publication (baseline) | first cycle | steady cycle (median of "
        f"{args.cycles - 1}) | cycle / publication | items after | search p50 before → after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['publish_s']:.2f} s | {r['first_s']:.3f} s | "
                     f"{r['steady_s']:.3f} s | {r['steady_s'] / r['publish_s']:.3f} | {r['count']:,} | "
                     f"{r['search_before_ms']:.2f} → {r['search_after_ms']:.2f} ms |")
    if args.latency_runs:
        print("freshness latency ...", flush=True)
        lat = bench_latency(args.latency_runs, rng)
        lines += ["", "## Freshness latency: worker + `mcrecall refresh --every 1s` (exact backend, "
                  "trained implicit model: 10,000 items, 4,000 users, dim 32)", "",
                  "| runs | produce → stored (median) | stored → recalled (median) | max | "
                  "rank when first recalled (of 10,000) |",
                  "| ---: | ---: | ---: | ---: | --- |",
                  f"| {lat['runs']} | {lat['produce_to_stored_s']:.2f} s | "
                  f"{lat['stored_to_recalled_s']:.2f} s | {lat['stored_to_recalled_max_s']:.2f} s | "
                  f"{', '.join(map(str, lat['ranks']))} |"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

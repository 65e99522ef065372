"""Recall latency and throughput of the serve client next to its parts, measured in the same run.

For each backend and item count a version is published from synthetic clustered vectors (no
training: ``mcrecall.serve.testing.publish_vectors`` through the real publisher), with a triple store
holding one fold-in user with 100 triples. Then, interleaved in each repeat:

* bare KV lookup      ``ModelRegistry.user_vector(version, user)``
* bare search         ``VectorStore.search(version, user_vector, k)`` (the plugin call)
* recall              ``RecallClient.recall(user, k)`` (pointer, triple-store seq check, KV,
                      search, results) — its ratio to the bare search is the client's overhead
* recalls/s and searches/s with 1 and with ``--threads`` threads
* fold-in of a user with 100 triples: the solve alone, a recall after a new triple (fold-in
  recomputed, item vectors cached), and the first recall of a version (item vectors fetched)

Each figure is the median over ``--repeats``. Prints a markdown table and writes
``benchmarks/results/serve.md`` whole: this run's section (``--append`` keeps the earlier runs),
``bench_first_foldin.py``'s section, and a summary against the targets computed from every
table (``--render`` rewrites the summary without measuring).

    python benchmarks/bench_serve.py --items 100000 --backends exact faiss hnswlib milvus
    python benchmarks/bench_serve.py --items 1000000 --backends faiss hnswlib exact --append
    python benchmarks/bench_serve.py --http        # recall over HTTP next to the in-process client

``--http`` measures, in one run on one published faiss version (``--items``, default 100,000):
the in-process client (1, 8 and 64 threads calling ``RecallClient.recall``) and ``mcrecall
serve`` in its own process (``--http-workers``, default 1 and 2 worker processes) under 1, 8
and 64 concurrent HTTP clients (one asyncio load generator, a keep-alive connection per
client, aiohttp; one httpx row for comparison). It writes ``benchmarks/results/serve_http.md``
whole (``--render`` with ``--http`` rewrites its summary).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss/torch: docs/measurements.md

import argparse
import itertools
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from mcrecall.core.config import load_config
from mcrecall.ingest.store import TripleStore
from mcrecall.plugins import vector_store_from_config
from mcrecall.plugins.testing import clustered_vectors, queries_like
from mcrecall.serve import RecallClient
from mcrecall.serve.testing import publish_vectors
from mcrecall.train.foldin import fold_in
from mcrecall.train.versions import ModelRegistry

RESULTS = Path(__file__).resolve().parent / "results" / "serve.md"
HTTP_RESULTS = RESULTS.with_name("serve_http.md")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resultsfile import add_run, machine_note, marked, num, parse_tables, run_sections, span, table_md, write_file  # noqa: E402


def timed_calls(fn, args: list, seconds: float, max_calls: int) -> np.ndarray:
    """Per-call latencies (s) of fn(a) cycling over args, until max_calls or seconds."""
    out = []
    end = time.perf_counter() + seconds
    for a in itertools.cycle(args):
        t0 = time.perf_counter()
        fn(a)
        t1 = time.perf_counter()
        out.append(t1 - t0)
        if len(out) >= max_calls or t1 > end:
            break
    return np.asarray(out)


def _run_threads(work, threads: int, seconds: float, stop: threading.Event) -> float:
    """Run ``work(j)`` on ``threads`` threads for ``seconds``, then set ``stop``; wall seconds."""
    ts = [threading.Thread(target=work, args=(j,)) for j in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


def throughput(fn, args: list, threads: int, seconds: float) -> float:
    """Calls per second of ``threads`` threads calling fn in a loop for ``seconds``."""
    stop = threading.Event()
    counts = [0] * threads

    def work(j):
        i, n = j, 0
        while not stop.is_set():
            fn(args[i % len(args)])
            i += threads
            n += 1
        counts[j] = n

    wall = _run_threads(work, threads, seconds, stop)  # counts are final once it returns
    return sum(counts) / wall


def build(backend: str, n_items: int, args, tmp: Path, milvus_uri: str):
    """Publish one version; returns (cfg, registry, vs, version, user_ids, U, item_ids, build_s)."""
    index_type = "FLAT" if backend == "exact" else args.index_type
    if backend.startswith("milvus"):  # the default configuration (Lite builds FLAT/IVF_FLAT only)
        index_type = args.milvus_index_type
    if backend == "milvus_real":
        milvus_uri = args.milvus_real_uri
    cfg = load_config(environ={}).with_overrides(
        store={"data_dir": str(tmp / f"{backend}-{n_items}")},
        index={"backend": backend.split("_")[0], "metric": args.metric, "index_type": index_type,
               "uri": milvus_uri if backend.startswith("milvus") else "", "hnsw_m": args.hnsw_m,
               "ef_construction": args.ef_construction, "ef_search": args.ef_search,
               "collection": f"bench_{backend}_{n_items}", "timeout_s": 60.0})
    V = clustered_vectors(n_items, args.dim, n_clusters=max(10, n_items // 1000), seed=1)
    U = queries_like(V, args.users, seed=2)
    user_ids = [f"u{j}" for j in range(args.users)]
    item_ids = [f"i{j}" for j in range(n_items)]
    registry = ModelRegistry(cfg.data_dir)
    vs = vector_store_from_config(cfg)
    ts = TripleStore(cfg.data_dir)
    ts.put_scores(["warm"], ["i0"], [1])  # a triple store exists: every recall checks user_seq
    t0 = time.perf_counter()
    version = publish_vectors(registry, vs, user_ids=user_ids, user_vectors=U, item_ids=item_ids,
                              item_vectors=V, metric=args.metric, index_type=index_type,
                              objective="implicit", store_seq=ts.seq)
    build_s = time.perf_counter() - t0
    # the fold-in user: 100 triples after the version was trained
    rng = np.random.default_rng(3)
    items = [item_ids[j] for j in rng.choice(n_items, 100, replace=False)]
    ts.put_scores(["fresh"] * 100, items, rng.integers(1, 5, 100).tolist())
    return cfg, registry, vs, version, user_ids, U, item_ids, build_s, ts


def bench_one(backend: str, n_items: int, args, tmp: Path, milvus_uri: str) -> dict:
    cfg, registry, vs, version, user_ids, U, item_ids, build_s, ts = build(
        backend, n_items, args, tmp, milvus_uri)
    client = RecallClient(cfg, registry=registry, vector_store=vs)
    k = args.k
    rng = np.random.default_rng(4)
    sample = rng.choice(len(user_ids), 256, replace=False)
    uids = [user_ids[j] for j in sample]
    vecs = [registry.user_vector(version, u) for u in uids]
    pairs = list(zip(uids, vecs, strict=False))
    kv = lambda u: registry.user_vector(version, u)  # noqa: E731
    search = lambda p: vs.search(version, p[1], k)  # noqa: E731
    # the parts composed by hand: KV lookup, then search (what recall cannot do with less)
    kv_search = lambda p: vs.search(version, registry.user_vector(version, p[0]), k)  # noqa: E731
    rec = lambda p: client.recall(p[0], k)  # noqa: E731
    # warm up: index loaded, caches filled, code paths hot
    for p in pairs[:32]:
        search(p), rec(p)
    assert [r.item_id for r in client.recall(uids[0], k)] == [i for i, _ in search(pairs[0])]
    # fold-in: first (item vectors fetched from the store), then recomputed per new triple
    client._items.clear()
    client._foldins.clear()
    t0 = time.perf_counter()
    first = client.recall_result("fresh", k)
    foldin_first = time.perf_counter() - t0
    assert first.source == "fold_in"
    hist, scores = ts.user_history("fresh")
    V_hist = vs.get_vectors(version, hist)
    meta = registry.metadata(version)

    def foldin_recall(_):
        client._foldins.clear()  # as after a new triple: solve again, item vectors cached
        return client.recall("fresh", k)

    per_call = args.seconds
    max_calls = args.max_calls
    reps = {key: [] for key in ("kv50", "ks50", "s50", "s99", "r50", "r99", "s_qps1", "r_qps1", "s_qpsn",
                                "r_qpsn", "f_solve", "f_recall")}
    for _ in range(args.repeats):
        lat = timed_calls(kv, uids, per_call / 4, max_calls * 4)
        reps["kv50"].append(np.percentile(lat, 50))
        s = timed_calls(search, pairs, per_call, max_calls)
        reps["ks50"].append(np.percentile(timed_calls(kv_search, pairs, per_call / 2, max_calls), 50))
        r = timed_calls(rec, pairs, per_call, max_calls)
        reps["s50"].append(np.percentile(s, 50))
        reps["s99"].append(np.percentile(s, 99))
        reps["r50"].append(np.percentile(r, 50))
        reps["r99"].append(np.percentile(r, 99))
        reps["s_qps1"].append(throughput(search, pairs, 1, per_call))
        reps["r_qps1"].append(throughput(rec, pairs, 1, per_call))
        reps["s_qpsn"].append(throughput(search, pairs, args.threads, per_call))
        reps["r_qpsn"].append(throughput(rec, pairs, args.threads, per_call))
        f = timed_calls(lambda _: fold_in(V_hist, scores, meta), [0], per_call / 4, 2000)
        reps["f_solve"].append(np.percentile(f, 50))
        f = timed_calls(foldin_recall, [0], per_call / 2, 2000)
        reps["f_recall"].append(np.percentile(f, 50))
    out = {key: statistics.median(v) for key, v in reps.items()}
    out.update(backend=backend, items=n_items, build_s=build_s, foldin_first=foldin_first,
               index=cfg.index.index_type if backend != "exact" else "FLAT")
    resolved = vs.version_info(version).index_type
    if resolved != out["index"]:  # AUTOINDEX: what it resolved to for this version
        out["index"] = f"{out['index']} ({resolved})"
    client.close()
    vs.close()
    registry.close()
    return out


def own(r: dict) -> str:
    """recall − (KV + search), µs; within the noise of a millisecond-scale search it reads ≈ 0."""
    us = (r["r50"] - r["ks50"]) * 1e6
    noise = 0.02 * r["ks50"] * 1e6
    return f"{us:.0f}" if us >= 0 or -us < noise * 0.5 else f"≈0 ({us:.0f}, noise)"


def table(rows: list[dict], args) -> str:
    ms = lambda s: f"{s * 1e3:.3f}"  # noqa: E731
    head = (f"| backend | index | items | KV p50 µs | search p50 / p99 ms | KV+search p50 ms | "
            f"recall p50 / p99 ms | recall ÷ search | client's own µs | search/s 1 thr | "
            f"recall/s 1 thr | search/s {args.threads} thr | recall/s {args.threads} thr | "
            f"build s |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['index']} | {r['items']:,} | {r['kv50'] * 1e6:.1f} | "
            f"{ms(r['s50'])} / {ms(r['s99'])} | {ms(r['ks50'])} | "
            f"{ms(r['r50'])} / {ms(r['r99'])} | {r['r50'] / r['s50']:.3f} | "
            f"{own(r)} | {r['s_qps1']:,.0f} | {r['r_qps1']:,.0f} | "
            f"{r['s_qpsn']:,.0f} | {r['r_qpsn']:,.0f} | {r['build_s']:.1f} |")
    lines += ["", "Fold-in of a user with 100 triples (dim %d, implicit objective):" % args.dim, "",
              "| backend | items | solve p50 ms | recall after a new triple p50 ms | "
              "first recall in a version ms |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['items']:,} | {ms(r['f_solve'])} | "
                     f"{ms(r['f_recall'])} | {ms(r['foldin_first'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, nargs="+", default=[100_000])
    ap.add_argument("--backends", nargs="+", default=["exact", "faiss", "hnswlib", "milvus"])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0, help="cap per latency/throughput figure")
    ap.add_argument("--max-calls", type=int, default=3000)
    ap.add_argument("--metric", default="IP")
    ap.add_argument("--index-type", default="HNSW", help="faiss/hnswlib/milvus (exact: FLAT)")
    ap.add_argument("--milvus-index-type", default="AUTOINDEX", help="milvus and milvus_real")
    ap.add_argument("--milvus-real-uri", default=os.environ.get("MCRECALL_BENCH_MILVUS_URI", ""),
                    help="backend milvus_real: a real Milvus server (tests/milvus_standalone.py, "
                         "in a private network namespace)")
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef-search", type=int, default=128)
    ap.add_argument("--skip-milvus-above", type=int, default=2_000_000,
                    help="skip milvus above this many items (build time)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--append", action="store_true", help="add to --out instead of replacing it")
    ap.add_argument("--render", action="store_true",
                    help="rewrite --out's summary from its run sections, measure nothing")
    ap.add_argument("--http", action="store_true",
                    help="recall over HTTP (mcrecall serve) next to the in-process client; "
                         "writes benchmarks/results/serve_http.md")
    ap.add_argument("--http-clients", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--http-workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--http-out", type=Path, default=HTTP_RESULTS)
    args = ap.parse_args(argv)
    if args.http:
        if args.render:
            print(render_http(args.http_out))
            return 0
        return main_http(args)
    if args.render:
        print(render(args.out))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    server = None
    milvus_uri = ""
    rows, notes = [], []
    try:
        for n_items in args.items:
            for backend in args.backends:
                if backend.startswith("milvus") and n_items > args.skip_milvus_above:
                    notes.append(f"{backend} at {n_items:,} items skipped (--skip-milvus-above)")
                    continue
                if backend == "milvus" and server is None:
                    from mcrecall.plugins.milvus_server import MilvusLiteServer

                    server = MilvusLiteServer(tmp / "milvus")
                    milvus_uri = server.start(timeout=120) or server.uri
                t0 = time.perf_counter()
                row = bench_one(backend, n_items, args, tmp, milvus_uri)
                rows.append(row)
                print(f"# {backend} {n_items:,}: done in {time.perf_counter() - t0:.0f}s "
                      f"(build {row['build_s']:.0f}s)", file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.stop()
    text = table(rows, args)
    header = (f"## {', '.join(f'{n:,}' for n in args.items)} items, dim {args.dim}, k {args.k}, "
              f"metric {args.metric}, {args.users:,} users\n\n"
              f"{machine_note()}; "
              f"HNSW M {args.hnsw_m}, efConstruction {args.ef_construction}, "
              f"efSearch {args.ef_search}; medians of {args.repeats} repeats, each figure capped "
              f"at {args.seconds:g} s / {args.max_calls} calls; {args.threads} threads for the "
              "multi-thread columns. `recall ÷ search`: recall p50 over the bare plugin search "
              "p50 (1.00 = nothing added); `client's own`: recall p50 minus the hand-composed "
              "KV lookup + search p50, i.e. what the client adds beyond reading the KV store "
              "(pointer and user_seq reads, validation, result objects).\n")
    section = header + "\n" + text + "\n" + "".join(f"\n- {n}" for n in notes) + "\n"
    print(section)
    # without --append this run replaces the earlier runs, not bench_first_foldin.py's section,
    # which stays last
    first = [s for s in run_sections(args.out) if s.startswith(FIRST_FOLDIN)]
    runs = [s for s in add_run(args.out, section, append=args.append)
            if not s.startswith(FIRST_FOLDIN)] + first
    render(args.out, runs)
    return 0


# --- the results file: the summary is computed from the run tables ---------------------------

TITLE = "serve: recall latency and throughput"
INTRO = ("Written whole by `benchmarks/bench_serve.py` (one section per run) and "
         "`benchmarks/bench_first_foldin.py` (its own section). The client's figures sit next to "
         "the bare vector-store search and the bare KV lookup measured in the same run; shared "
         "machines make single figures move between runs, ratios less so.")
FIRST_FOLDIN = "## First fold-in after a version loads"
CLIENT_TARGET = 1.20  # recall p50 / bare search p50
P99_TARGET_MS = 5.0  # recall p99 with faiss or hnswlib at 1M items
FOLDIN_TARGET_MS = 5.0


def _tables(runs: list[str], column: str) -> list[dict]:
    return [dict(r) for s in runs for t in parse_tables(s) if column in t.header for r in t.dicts()]


def _pair(cell: str) -> tuple[float | None, float | None]:
    a, _, b = cell.partition("/")
    return num(a), num(b)


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def summary(runs: list[str]) -> str:
    main = _tables(runs, "recall ÷ search")
    if not main:
        return ""
    for r in main:
        r["n"] = num(r["items"])
        r["search"], r["search99"] = _pair(r["search p50 / p99 ms"])
        r["recall"], r["recall99"] = _pair(r["recall p50 / p99 ms"])
        r["ratio"] = r["recall"] / r["search"] if r["search"] else None
    main.sort(key=lambda r: r["n"])
    threads = next((h for h in main[0] if h.startswith("recall/s ") and "1 thr" not in h), None)
    rows = [[r["backend"], r["items"], r["search p50 / p99 ms"], r["recall p50 / p99 ms"],
             f"{r['ratio']:.2f}" if r["ratio"] else "—",
             f"{r['recall/s 1 thr']} / {r[threads]}" if threads else r["recall/s 1 thr"]]
            for r in main]
    table = table_md(["backend", "items", "search p50 / p99 ms", "recall p50 / p99 ms",
                      "recall ÷ search", f"recalls/s 1 thread / {threads.split()[1] if threads else '?'} threads"],
                     rows, "lrrrrr")
    said = []
    over = [r for r in main if r["ratio"] and r["ratio"] > CLIENT_TARGET]
    own = [num(r["client's own µs"]) for r in main if num(r.get("client's own µs", "")) is not None]
    said.append(f"- Client overhead (target: recall within {CLIENT_TARGET:.2f}× the bare search): "
                f"recall ÷ search {span([r['ratio'] for r in main], '{:.2f}')}; the client's own "
                f"share {span(own, '{:.0f}')} µs a recall. "
                + ("Met everywhere." if not over else "Over the target only where the search "
                   "itself is that fast: " + ", ".join(
                       f"{r['backend']} at {r['items']} items ({r['ratio']:.2f}×, search "
                       f"{_ms(r['search'])} ms)" for r in over) + "."))
    big = [r for r in main if r["backend"] in ("faiss", "hnswlib") and r["n"] >= 1_000_000]
    if big:
        worst = max(r["recall99"] for r in big)
        said.append("- Recall p99 at 1,000,000 items with faiss/hnswlib: "
                    + ", ".join(f"{r['backend']} {_ms(r['recall99'])} ms" for r in big)
                    + f" (target < {P99_TARGET_MS:g} ms: {'met' if worst < P99_TARGET_MS else 'NOT met'}).")
    fold = _tables(runs, "solve p50 ms")
    if fold:
        solve = [num(r["solve p50 ms"]) for r in fold]
        after = [num(r["recall after a new triple p50 ms"]) for r in fold
                 if r["backend"] in ("faiss", "hnswlib")]
        said.append(f"- Fold-in of a user with 100 triples: solve {span(solve, '{:.3g}')} ms; a "
                    f"recall after the user's new triple with faiss/hnswlib {span(after, '{:.3g}')} ms "
                    f"(target < {FOLDIN_TARGET_MS:g} ms: "
                    f"{'met' if after and max(after) < FOLDIN_TARGET_MS else 'NOT met'}).")
    first = _tables(runs, "first fold-in recall ms")
    if first:
        by_n: dict[float, list[float]] = {}
        for r in first:
            by_n.setdefault(num(r["items"]), []).append(num(r["first fold-in recall ms"]))
        said.append("- The first fold-in recall after a version loads (`bench_first_foldin.py`, "
                    "exact backend, so bound by exact search): "
                    + ", ".join(f"{span(v, '{:.3g}')} ms at {int(n):,} items"
                                for n, v in sorted(by_n.items())) + ".")
    return marked("serve", table + "\n\n" + "\n".join(said))


def render(path: Path, runs: list[str] | None = None) -> str:
    runs = run_sections(path) if runs is None else runs
    return write_file(path, TITLE, INTRO, summary(runs), runs)


# --- recall over HTTP (--http) ---------------------------------------------------------------
HTTP_TITLE = "serve over HTTP: `mcrecall serve` next to the in-process client"
HTTP_INTRO = ("Written whole by `benchmarks/bench_serve.py --http` (`--render` rewrites the summary). "
              "One published faiss version; in each run the in-process client "
              "(`RecallClient.recall` from 1, 8 and 64 threads) and `mcrecall serve` (its own "
              "process; GET /recall over keep-alive connections from one asyncio aiohttp load "
              "generator in the bench process) are measured on the same version, the same users "
              "and the same machine. The load generator shares the CPUs with the server, as a "
              "client on the same host would; `HTTP overhead` is HTTP p50 minus the in-process "
              "p50 at the same concurrency; `server CPU µs/recall` is the CPU time (user + system) "
              "of the serving process(es) per request, or of the in-process client per call, "
              "which a busy shared machine disturbs far less than latency. One row per server uses "
              "httpx (async) as the "
              "client instead, at 1 client: the client library's own cost, against the same server.")
HTTP_OVERHEAD_TARGET_MS = 1.0  # at 1 client
HTTP_P99_TARGET_MS = 10.0  # at 8 clients


def thread_load(fn, args: list, threads: int, seconds: float) -> tuple[float, np.ndarray]:
    """(calls/s, per-call latencies) of ``threads`` threads calling fn in a loop."""
    stop = threading.Event()
    lats: list[list[float]] = [[] for _ in range(threads)]

    def work(j):
        i, mine, clock = j, lats[j], time.perf_counter
        while not stop.is_set():
            t0 = clock()
            fn(args[i % len(args)])
            mine.append(clock() - t0)
            i += threads

    wall = _run_threads(work, threads, seconds, stop)
    all_lats = np.concatenate([np.asarray(x) for x in lats])
    return len(all_lats) / wall, all_lats


def http_load(url: str, users: list[str], k: int, clients: int, seconds: float,
              library: str = "aiohttp") -> tuple[float, np.ndarray, int]:
    """(requests/s, per-request latencies, failures) of ``clients`` concurrent keep-alive
    clients (one asyncio load generator; ``library`` aiohttp or httpx)."""
    import asyncio

    async def run_aiohttp():
        import aiohttp

        conn = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(url, connector=conn) as http:
            async def get(path, params=None):
                async with http.get(path, params=params) as r:
                    await r.read()
                    return r.status

            return await drive(get)

    async def run_httpx():
        import httpx

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
            async def get(path, params=None):
                return (await http.get(path, params=params)).status_code

            return await drive(get)

    async def drive(get):
        lats: list[float] = []
        failures = [0]
        # warm: one connection per client opened before the clock starts
        await asyncio.gather(*(get("/healthz") for _ in range(clients)))
        stop_at = time.perf_counter() + seconds

        async def one(j):
            i = j
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                status = await get("/recall", {"user_id": users[i % len(users)], "k": str(k)})
                lats.append(time.perf_counter() - t0)
                failures[0] += status != 200
                i += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(one(j) for j in range(clients)))
        return len(lats) / (time.perf_counter() - t0), np.asarray(lats), failures[0]

    return asyncio.run(run_aiohttp() if library == "aiohttp" else run_httpx())


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its child processes."""
    tick = os.sysconf("SC_CLK_TCK")
    pids, total = [pid], 0.0
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:  # ppid
                pids.append(int(p))
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _start_server(cfg, workers: int, tmp: Path):
    """``mcrecall serve`` on a free port in its own process; (process, url)."""
    import json
    import re
    import subprocess

    i = cfg.index
    conf = tmp / f"serve-{workers}.toml"
    conf.write_text(
        f"[store]\ndata_dir = {json.dumps(str(cfg.data_dir))}\n"
        f"[index]\nbackend = {json.dumps(i.backend)}\nmetric = {json.dumps(i.metric)}\n"
        f"index_type = {json.dumps(i.index_type)}\ncollection = {json.dumps(i.collection)}\n"
        f"hnsw_m = {i.hnsw_m}\nef_construction = {i.ef_construction}\nef_search = {i.ef_search}\n"
        f"timeout_s = {i.timeout_s}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCRECALL_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    log = open(tmp / f"serve-{workers}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "mcrecall", "--config", str(conf), "serve",
                             "--port", "0", "--workers", str(workers)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    import httpx

    while True:
        m = re.search(r"mcrecall serve: (http://\S+:\d+)", (tmp / f"serve-{workers}.log").read_text())
        if m:
            try:
                if httpx.get(m.group(1) + "/readyz", timeout=5).status_code == 200:
                    return proc, m.group(1)
            except httpx.HTTPError:
                pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("mcrecall serve did not start: "
                             + (tmp / f"serve-{workers}.log").read_text()[-2000:])
        time.sleep(0.2)


def main_http(args) -> int:
    import signal

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-http-"))
    n_items = args.items[0]
    t_start = time.perf_counter()
    cfg, registry, vs, version, user_ids, U, item_ids, build_s, ts = build("faiss", n_items, args, tmp, "")
    client = RecallClient(cfg, registry=registry, vector_store=vs)
    rng = np.random.default_rng(4)
    uids = [user_ids[j] for j in rng.choice(len(user_ids), 512, replace=False)]
    for u in uids[:64]:
        client.recall(u, args.k)  # warm: index loaded, code paths hot
    rows: dict[tuple, dict] = {}
    for _rep in range(args.repeats):
        for c in args.http_clients:
            cpu0 = time.process_time()
            rps, lat = thread_load(lambda u: client.recall(u, args.k), uids, c, args.seconds)
            cpu = (time.process_time() - cpu0) / len(lat)
            rows.setdefault(("in-process client", c), {"rps": [], "p50": [], "p99": [], "fail": 0,
                                                       "cpu": []})
            r = rows[("in-process client", c)]
            r["cpu"].append(cpu)
            r["rps"].append(rps)
            r["p50"].append(np.percentile(lat, 50))
            r["p99"].append(np.percentile(lat, 99))
    client.close()
    for workers in args.http_workers:
        proc, url = _start_server(cfg, workers, tmp)
        try:
            http_load(url, uids, args.k, 8, 1.0)  # warm every worker
            # the answer over HTTP is the in-process client's
            import httpx

            got = httpx.get(url + "/recall", params={"user_id": uids[0], "k": args.k}).json()
            c2 = RecallClient(cfg, registry=registry, vector_store=vs)
            want = [it.item_id for it in c2.recall(uids[0], args.k)]
            c2.close()
            assert [it["item_id"] for it in got["items"]] == want, (got, want)
            for _rep in range(args.repeats):
                for c in args.http_clients:
                    cpu0 = _cpu_s(proc.pid)
                    rps, lat, fail = http_load(url, uids, args.k, c, args.seconds)
                    cpu = (_cpu_s(proc.pid) - cpu0) / len(lat)
                    key = (f"HTTP, {workers} worker{'s' if workers > 1 else ''}", c)
                    r = rows.setdefault(key, {"rps": [], "p50": [], "p99": [], "fail": 0, "cpu": []})
                    r["cpu"].append(cpu)
                    r["rps"].append(rps)
                    r["p50"].append(np.percentile(lat, 50))
                    r["p99"].append(np.percentile(lat, 99))
                    r["fail"] += fail
                if workers == args.http_workers[0]:  # the client library's share, same server
                    cpu0 = _cpu_s(proc.pid)
                    rps, lat, fail = http_load(url, uids, args.k, 1, args.seconds, "httpx")
                    cpu = (_cpu_s(proc.pid) - cpu0) / len(lat)
                    key = (f"HTTP, {workers} worker{'s' if workers > 1 else ''}, httpx client", 1)
                    r = rows.setdefault(key, {"rps": [], "p50": [], "p99": [], "fail": 0, "cpu": []})
                    r["cpu"].append(cpu)
                    r["rps"].append(rps)
                    r["p50"].append(np.percentile(lat, 50))
                    r["p99"].append(np.percentile(lat, 99))
                    r["fail"] += fail
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    vs.close()
    registry.close()
    ms = lambda s: f"{s * 1e3:.3f}"  # noqa: E731
    base = {c: statistics.median(rows[("in-process client", c)]["p50"]) for c in args.http_clients}
    base_cpu = {c: statistics.median(rows[("in-process client", c)]["cpu"]) for c in args.http_clients}
    table_rows = []
    for (what, c), r in rows.items():
        p50 = statistics.median(r["p50"])
        cpu = statistics.median(r["cpu"])
        inproc = what.startswith("in-process")
        over = "—" if inproc else f"{(p50 - base[c]) * 1e3:.3f}"
        over_cpu = "—" if inproc else f"{(cpu - base_cpu[c]) * 1e6:.0f}"
        table_rows.append([what, str(c), f"{statistics.median(r['rps']):,.0f}", ms(p50),
                           ms(statistics.median(r["p99"])), over, f"{cpu * 1e6:.0f}", over_cpu,
                           str(r["fail"])])
    text = table_md(["serving", "concurrent clients", "recalls/s", "p50 ms", "p99 ms",
                     "HTTP overhead p50 ms", "server CPU µs/recall", "HTTP overhead CPU µs",
                     "failures"], table_rows, "llrrrrrrr")
    elapsed = time.perf_counter() - t_start
    section = (f"## faiss HNSW, {n_items:,} items, dim {args.dim}, k {args.k}, {args.users:,} users\n\n"
               f"{machine_note()}; HNSW M {args.hnsw_m}, efConstruction {args.ef_construction}, "
               f"efSearch {args.ef_search}; medians of {args.repeats} repeats of {args.seconds:g} s "
               f"per figure; the whole run took {elapsed:.0f} s (build {build_s:.0f} s).\n\n{text}\n")
    print(section)
    render_http(args.http_out, add_run(args.http_out, section, append=args.append))
    return 0


def summary_http(runs: list[str]) -> str:
    rows = _tables(runs, "HTTP overhead p50 ms")
    if not rows:
        return ""
    said = []
    one = [r for r in rows if r["concurrent clients"] == "1" and num(r["HTTP overhead p50 ms"]) is not None
           and "httpx" not in r["serving"]]
    eight = [r for r in rows if r["concurrent clients"] == "8" and r["serving"].startswith("HTTP")]
    if one:
        worst = max(num(r["HTTP overhead p50 ms"]) for r in one)
        said.append("- HTTP overhead at 1 client (HTTP p50 − in-process p50): "
                    + ", ".join(f"{r['serving']} {r['HTTP overhead p50 ms']} ms" for r in one)
                    + f" (target ≤ {HTTP_OVERHEAD_TARGET_MS:g} ms: "
                    + ("met" if worst <= HTTP_OVERHEAD_TARGET_MS else "NOT met") + ").")
    if eight:
        worst = max(num(r["p99 ms"]) for r in eight)
        said.append("- p99 at 8 concurrent HTTP clients: "
                    + ", ".join(f"{r['serving']} {r['p99 ms']} ms" for r in eight)
                    + f" (target < {HTTP_P99_TARGET_MS:g} ms: "
                    + ("met" if worst < HTTP_P99_TARGET_MS else "NOT met") + ").")
    fails = sum(int(num(r["failures"]) or 0) for r in rows)
    said.append(f"- Failed requests over all runs: {fails}.")
    cpu = [num(r["HTTP overhead CPU µs"]) for r in rows if num(r.get("HTTP overhead CPU µs", "—")) is not None
           and "httpx" not in r["serving"]]
    if cpu:
        said.append(f"- CPU the HTTP layer adds to a recall in the server process (server CPU per "
                    f"request minus the in-process client's CPU per call): {span(cpu, '{:.0f}')} µs.")
    head = ["serving", "concurrent clients", "recalls/s", "p50 ms", "p99 ms", "HTTP overhead p50 ms",
            "HTTP overhead CPU µs"]
    table = table_md(head, [[r.get(h, "—") for h in head] for r in rows], "llrrrrr")
    return marked("serve_http", table + "\n\n" + "\n".join(said))


def render_http(path: Path, runs: list[str] | None = None) -> str:
    runs = run_sections(path) if runs is None else runs
    return write_file(path, HTTP_TITLE, HTTP_INTRO, summary_http(runs), runs)


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark the vector-store backends against numpy brute force (issue 3).

For each size × dataset × backend × index type × metric: build time (upsert +
finalize), single-query top-10 latency p50/p99, batched queries/s (median of
``--repeats`` runs) and recall@10 against exact numpy top-10 of the model score
(``dot``). numpy brute force is measured in the same run as the baseline.

Usage::

    python benchmarks/bench_vector_stores.py --sizes 100000
    python benchmarks/bench_vector_stores.py --sizes 1000000 --backends numpy,faiss,hnswlib \\
        --metrics IP --datasets clustered --append

Prints a markdown table and writes ``benchmarks/results/vector_stores.md`` whole: this run's
section (``--append`` keeps the earlier runs) and a summary computed from every run's table
(``--render`` rewrites the summary without measuring).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: no OpenMP spin-waiting

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcrecall.plugins import open_vector_store
from mcrecall.plugins.exact_store import top_k
from mcrecall.plugins.milvus_server import MilvusLiteServer
from mcrecall.plugins.testing import clustered_vectors, queries_like, recall_at_k, uniform_vectors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resultsfile import add_run, machine_note, marked, num, parse_tables, run_sections, span, table_md, write_file

RESULTS = Path(__file__).resolve().parent / "results" / "vector_stores.md"
K = 10
DEFAULT_INDEX_TYPES = {
    "exact": ["FLAT"],
    "faiss": ["FLAT", "HNSW"],
    "hnswlib": ["FLAT", "HNSW"],
    "milvus": ["AUTOINDEX", "FLAT", "IVF_FLAT"],  # Milvus Lite 2.5 builds FLAT and IVF_FLAT
    "milvus_real": ["AUTOINDEX", "HNSW", "IVF_FLAT", "IVF_SQ8"],  # a Milvus server (--milvus-real-uri)
}


@dataclass
class Row:
    size: int
    dataset: str
    backend: str
    index: str
    metric: str
    build_s: float
    p50_ms: float
    p99_ms: float
    batch_qps: float
    recall: float
    note: str = ""


def make_data(dataset: str, n: int, dim: int, n_queries: int):
    if dataset == "clustered":
        x = clustered_vectors(n, dim, n_clusters=max(10, n // 1000), seed=11)
    elif dataset == "uniform":
        x = uniform_vectors(n, dim, seed=11)
    else:
        raise SystemExit(f"unknown dataset {dataset!r}")
    q = queries_like(x, n_queries, seed=12)
    return x, q


def numpy_topk(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    return top_k(q @ x.T, K, largest=True)


def time_single(search_one, queries) -> tuple[float, float]:
    lat = []
    for q in queries:
        t = time.perf_counter()
        search_one(q)
        lat.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


def time_batch(search_batch, queries, repeats: int) -> tuple[float, list]:
    runs, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = search_batch(queries)
        runs.append(len(queries) / (time.perf_counter() - t))
    return float(np.median(runs)), out


def bench_numpy(x, q, n_single, repeats) -> Row:
    p50, p99 = time_single(lambda v: numpy_topk(x, v[None, :]), q[:n_single])
    qps, _ = time_batch(lambda qs: numpy_topk(x, qs), q, repeats)
    return Row(len(x), "", "numpy", "brute force", "dot", 0.0, p50, p99, qps, 1.0)


def bench_store(store, x, q, truth_ids, ids, metric, index_type, n_single, repeats, batch_chunk) -> Row:
    max_norm = float(np.linalg.norm(x, axis=1).max())
    t = time.perf_counter()
    store.create_version(1, x.shape[1], metric, index_type, similarity="dot", max_norm=max_norm)
    store.upsert(1, ids, x, batch_size=10_000)
    store.finalize(1)
    build = time.perf_counter() - t
    resolved = store.version_info(1).index_type
    label = index_type if resolved == index_type else f"{index_type} ({resolved})"
    store.search(1, q[0], K)  # warm-up: loads the version
    p50, p99 = time_single(lambda v: store.search(1, v, K), q[:n_single])

    def batched(qs):
        res = []
        for s in range(0, len(qs), batch_chunk):
            res.extend(store.search_batch(1, qs[s : s + batch_chunk], K))
        return res

    qps, results = time_batch(batched, q, repeats)
    found = [[i for i, _ in r] for r in results]
    recall = recall_at_k(found, truth_ids)
    store.drop_version(1)
    return Row(len(x), "", store.name, label, metric, build, p50, p99, qps, recall)


def _ratio(x: float) -> str:
    return f"{x:.0f}×" if x >= 10 else f"{x:.1f}×" if x >= 1 else f"{x:.2f}×"


def fmt_table(rows: list[Row]) -> str:
    base = {(r.size, r.dataset): r for r in rows if r.backend == "numpy"}
    lines = [
        "| items | data | backend | index | metric | build s | p50 ms | p99 ms | batch q/s | recall@10 "
        "| p50 speed-up vs numpy | batch speed-up | note |",
        "|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        b = base.get((r.size, r.dataset))
        up = _ratio(b.p50_ms / r.p50_ms) if b and r.p50_ms > 0 else ""
        bup = _ratio(r.batch_qps / b.batch_qps) if b and b.batch_qps > 0 else ""
        lines.append(
            f"| {r.size:,} | {r.dataset} | {r.backend} | {r.index} | {r.metric} | {r.build_s:.1f} | "
            f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.batch_qps:,.0f} | {r.recall:.3f} | {up} | {bup} | {r.note} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000", help="comma-separated item counts (default 100000)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--datasets", default="clustered,uniform")
    p.add_argument("--backends", default="numpy,exact,faiss,hnswlib,milvus")
    p.add_argument("--metrics", default="IP,L2,COSINE")
    p.add_argument("--index-types", default="", help="restrict index types (comma-separated)")
    p.add_argument("--queries", type=int, default=1000, help="queries for the batched run and recall")
    p.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    p.add_argument("--milvus-single", type=int, default=50, help="single queries for milvus (slow)")
    p.add_argument("--milvus-mode", default="server", choices=["server", "file"],
                   help="Milvus Lite through `mcrecall milvus`'s server (the multi-process default) or a .db file")
    p.add_argument("--milvus-batch", type=int, default=1000, help="queries per milvus search call")
    p.add_argument("--milvus-ef", type=int, default=0, help="override ef_search for milvus (0 = default)")
    p.add_argument("--ef-search", type=int, default=0, help="override ef_search for every backend (0 = default)")
    p.add_argument("--milvus-real-uri", default=os.environ.get("MCRECALL_BENCH_MILVUS_URI", ""),
                   help="a real Milvus server for the milvus_real backend (tests/milvus_standalone.py "
                        "in a private network namespace)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--append", action="store_true", help="append to the results file instead of replacing it")
    p.add_argument("--title", default="")
    p.add_argument("--render", action="store_true",
                   help="rewrite --out's summary from its run sections, measure nothing")
    p.add_argument("--drop", action="append", default=[], metavar="TITLE",
                   help="with --render: leave out the run sections whose title starts with TITLE "
                        "(a run of an engine the project no longer ships)")
    args = p.parse_args(argv)
    if args.render:
        runs = [r for r in run_sections(Path(args.out))
                if not any(r.startswith("## " + t) for t in args.drop)]
        print(render(Path(args.out), runs))
        return 0

    sizes = [int(s) for s in args.sizes.split(",") if s]
    backends = [b for b in args.backends.split(",") if b]
    metrics = [m.upper() for m in args.metrics.split(",") if m]
    only_types = {t.upper() for t in args.index_types.split(",") if t}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-vs-"))
    rows: list[Row] = []
    server = None
    t0 = time.time()
    try:
        for n in sizes:
            for dataset in [d for d in args.datasets.split(",") if d]:
                x, q = make_data(dataset, n, args.dim, args.queries)
                ids = [f"item{i}" for i in range(n)]
                truth_idx = numpy_topk(x, q)
                truth_ids = [[ids[t] for t in row] for row in truth_idx]
                if "numpy" in backends:
                    r = bench_numpy(x, q, args.single, args.repeats)
                    r.dataset = dataset
                    rows.append(r)
                    print(fmt_table(rows[-1:]).splitlines()[-1], flush=True)
                for backend in backends:
                    if backend == "numpy":
                        continue
                    options, n_single, chunk, note = {}, args.single, len(q), ""
                    if args.ef_search:
                        options["ef_search"] = args.ef_search
                        note = f"ef {args.ef_search}"
                    label = backend
                    if backend == "milvus_real":
                        if not args.milvus_real_uri:
                            raise SystemExit("milvus_real needs --milvus-real-uri (or MCRECALL_BENCH_MILVUS_URI)")
                        n_single, chunk = args.milvus_single, args.milvus_batch
                        options["uri"], backend = args.milvus_real_uri, "milvus"
                        note = f"Milvus server, {chunk}/call"
                    elif backend == "milvus":
                        n_single, chunk = args.milvus_single, args.milvus_batch
                        if args.milvus_ef:
                            options["ef_search"] = args.milvus_ef
                        if args.milvus_mode == "server":
                            if server is None:
                                server = MilvusLiteServer(work / "milvus-server", log_path=work / "milvus.log")
                                server.start(timeout=120)
                            options["uri"] = server.uri
                        else:
                            options["uri"] = str(work / f"milvus-{n}-{dataset}.db")
                        note = (f"{args.milvus_mode}, {chunk}/call"
                                + (f", ef {args.milvus_ef}" if args.milvus_ef else ""))
                    store = open_vector_store(backend, data_dir=work / f"{backend}-{n}-{dataset}",
                                              collection=f"bench_{n}_{dataset}", **options)
                    types = DEFAULT_INDEX_TYPES[label]
                    try:
                        for index_type in types:
                            if only_types and index_type not in only_types:
                                continue
                            for metric in metrics:
                                r = bench_store(store, x, q, truth_ids, ids, metric, index_type,
                                                n_single, args.repeats, chunk)
                                r.dataset, r.note = dataset, note
                                if label == "milvus_real":
                                    r.backend = "milvus (server 2.3)"
                                elif backend == "milvus":
                                    r.backend = "milvus (Lite 2.5)"
                                rows.append(r)
                                print(fmt_table(rows[-1:]).splitlines()[-1], flush=True)
                    finally:
                        store.close()
    finally:
        if server is not None:
            server.stop()

    table = fmt_table(rows)
    header = args.title or f"Run of {time.strftime('%Y-%m-%d %H:%M')}"
    info = (
        f"## {header}\n\n"
        f"`{' '.join(['python', 'benchmarks/bench_vector_stores.py', *(argv if argv is not None else sys.argv[1:])])}`"
        " — "
        f"dim {args.dim}, top-{K}, {args.queries} queries (single-query timing on {args.single}, "
        f"Milvus {args.milvus_single}), similarity `dot`; {machine_note()}; "
        f"total {time.time() - t0:.0f} s.\n\n"
    )
    print()
    print(table)
    out = Path(args.out)
    render(out, add_run(out, info + table, append=args.append))
    print(f"\nwritten to {out}")
    return 0


# --- the results file: every figure of the summary is computed from the run tables -----------

TITLE = "Vector-store benchmark"
INTRO = (
    "Written whole by `benchmarks/bench_vector_stores.py`, one section per run. Absolute times on "
    "shared machines are noisy: compare ratios within one run, where numpy brute force (float32 "
    "matmul + argpartition, the `numpy` rows) is measured alongside and every speed-up is against "
    "the numpy row of the same run, items and data. Similarity `dot` throughout; recall@10 is "
    "against numpy's exact top-10 of ⟨a, b⟩. \"clustered\" vectors have the structure of trained "
    "embeddings; uniform random vectors are the hard case for graph indexes. Milvus rows search "
    "through a server on loopback (the embedded Lite engine run as `mcrecall milvus`, or a real "
    "standalone), so every call pays a gRPC round trip that the in-process libraries don't.")


def _rows(runs: list[str]) -> list[dict]:
    out = []
    for k, section in enumerate(runs, start=1):
        for t in parse_tables(section):
            if "recall@10" in t.header and "backend" in t.header:
                out += [dict(r, run=k, n=num(r["items"])) for r in t.dicts()]
    return out


def _is_default(r: dict) -> bool:
    """numpy, and each backend's configuration for serving `dot`: metric IP, the ANN index."""
    return r["backend"] == "numpy" or (r["metric"] == "IP" and (
        (r["backend"] in ("faiss", "hnswlib") and r["index"] == "HNSW")
        or (r["backend"].startswith("milvus")
            and (r["index"] in ("IVF_FLAT", "HNSW") or r["index"].startswith("AUTOINDEX")))))


def summary(runs: list[str]) -> str:
    rows = _rows(runs)
    if not rows:
        return ""
    keep = [r for r in rows if _is_default(r)]
    groups = sorted({(r["run"], r["n"], r["data"]) for r in keep if r["backend"] == "numpy"},
                    key=lambda g: (-g[1], g[2] != "clustered", g[0]))
    table_rows = []
    for run, n, data in groups:
        for r in [r for r in keep if (r["run"], r["n"], r["data"]) == (run, n, data)]:
            up = ("1×" if r["backend"] == "numpy"
                  else f"{r['p50 speed-up vs numpy']} / {r['batch speed-up']}")
            table_rows.append([r["items"], r["data"], r["backend"], r["index"], r["metric"],
                               r["build s"], r["p50 ms"], r["batch q/s"], r["recall@10"], up,
                               str(run)])
    titles = [s.splitlines()[0][3:] for s in runs]
    table = table_md(["items", "data", "backend", "index", "metric", "build s", "p50 ms",
                      "batch q/s", "recall@10", "speed-up vs numpy (p50 / batch)", "run"],
                     table_rows, "rllllrrrrll")
    said = []
    for run, n, data in groups:
        ann = [r for r in keep if (r["run"], r["n"], r["data"]) == (run, n, data)
               and r["backend"] in ("faiss", "hnswlib")]
        if ann:
            said.append(f"- {int(n):,} {data} items, the default HNSW (metric IP) of "
                        f"{' and '.join(sorted({r['backend'] for r in ann}))}: recall@10 "
                        f"{span([num(r['recall@10']) for r in ann], '{:.3f}')}, "
                        f"{span([num(r['p50 speed-up vs numpy']) for r in ann], '{:.3g}')}× "
                        f"numpy's single-query speed and "
                        f"{span([num(r['batch speed-up']) for r in ann], '{:.3g}')}× batched (run {run}).")
    for n, data in sorted({(r["n"], r["data"]) for r in rows}, key=lambda g: (-g[0], g[1])):
        hnsw = [r for r in rows if (r["n"], r["data"]) == (n, data) and r["index"] == "HNSW"
                and r["backend"] in ("faiss", "hnswlib")]
        ip = [num(r["recall@10"]) for r in hnsw if r["metric"] == "IP"]
        other = [num(r["recall@10"]) for r in hnsw if r["metric"] in ("L2", "COSINE")]
        flat = [num(r["recall@10"]) for r in rows if (r["n"], r["data"]) == (n, data)
                and r["index"] == "FLAT"]
        if ip and other:
            said.append(f"- Metric for `dot` models at {int(n):,} {data} items: HNSW recall@10 "
                        f"{span(ip, '{:.3f}')} through IP, {span(other, '{:.3f}')} through the "
                        "L2/COSINE reduction (one extra coordinate)"
                        + (f"; flat indexes {span(flat, '{:.3f}')} for every metric" if flat else "")
                        + ". Serve `dot` through IP (the default).")
    for engine in sorted({r["backend"] for r in rows if r["backend"].startswith("milvus")}):
        milvus = [r for r in rows if r["backend"] == engine]
        said.append(f"- {engine}: single-query p50 {span([num(r['p50 ms']) for r in milvus], '{:.2f}')} ms "
                    f"over the index types measured; batched "
                    f"{span([num(r['batch q/s']) for r in milvus], '{:,.0f}')} queries/s.")
        by_index: dict[str, list[dict]] = {}
        for r in milvus:
            by_index.setdefault(r["index"], []).append(r)
        exact = {i: rs for i, rs in by_index.items()
                 if min(num(r["recall@10"]) for r in rs) >= 0.999}
        if exact:
            best = max(exact, key=lambda i: statistics.median(num(r["batch q/s"]) for r in exact[i]))
            rs = exact[best]
            said.append(f"- Fastest {engine} configuration with recall@10 "
                        f"{span([num(r['recall@10']) for r in rs], '{:.3f}')}: {best} "
                        f"(build {span([num(r['build s']) for r in rs], '{:.1f}')} s, "
                        f"{span([num(r['batch q/s']) for r in rs], '{:,.0f}')} queries/s batched, "
                        f"p50 {span([num(r['p50 ms']) for r in rs], '{:.2f}')} ms).")
    runs_line = "Runs: " + "; ".join(f"{k} = {t}" for k, t in enumerate(titles, start=1)) + "."
    return marked("vector_stores", table + "\n\n" + runs_line + "\n\n" + "\n".join(said))


def render(path: Path, runs: list[str] | None = None) -> str:
    runs = run_sections(path) if runs is None else runs
    return write_file(path, TITLE, INTRO, summary(runs), runs)


if __name__ == "__main__":
    raise SystemExit(main())

"""Distributed training benchmark (issue 19): ``train --nproc N`` against one rank, same run.

    python benchmarks/bench_train_dist.py                       # 2M triples, RSS at 20M
    python benchmarks/bench_train_dist.py --triples 200000 --rss-triples 1000000 --out /tmp/d.md

Measured, one thread a rank (``[train] threads = 1``), every launch a real torchrun of
``benchmarks/bench_train_dist.py --worker`` (torch's elastic agent, gloo, 127.0.0.1):

- strong scaling: median sweep of the ALS objectives (implicit, squared; CG, dot) on the
  synthetic set (``make_synthetic``, as bench_train.py) at 1 and 2 ranks, launches interleaved
  (1, 2, 1, 2) so that the shared machine's load falls on both alike;
- peak RSS of each rank (``getrusage``) at 1 and 2 ranks on ``--rss-triples`` random triples
  (power-law users and items; the layout, not the values, sets the memory), and the bytes each
  rank sends a sweep (its factor blocks to every peer: the all_gather) and once (the shards);
- from those constants, a table on paper for 1B triples x dim 64 on 8, 32 and 128 ranks.

Writes ``benchmarks/results/train_dist.md`` whole: the run section, and a summary computed from
its tables (``--render`` rewrites the file from its run section without measuring). The data
reach the ranks as an ``.npz`` in a temporary directory read by rank 0 only (the trainer's rank 0
reads the LMDB store instead).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (docs/measurements.md)

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from resultsfile import add_run, machine_note, marked, num, parse_tables, run_sections, table_md, write_file  # noqa: E402

OBJECTIVES = ("implicit", "squared")
TITLE = "Distributed training (`mcrecall train --nproc N`)"
INTRO = ("Written by `benchmarks/bench_train_dist.py` (issue 19). Every figure of a run comes from "
         "that run.")
SCALING_TARGET = 0.6  # 2 ranks' median sweep at most this share of one rank's (issue 19)


# -- one launch (every rank runs this) ---------------------------------------------------------
def worker(a) -> int:
    from mcrecall.core.config import load_config
    from mcrecall.train.distributed import (
        all_gather_floats,
        follow,
        init_from_env,
        model_for_fit,
        stop_followers,
        using,
    )

    cfg = load_config(environ={}).with_overrides(train={"threads": 1, "dist_timeout_s": 3600,
                                                        "dim": a.dim, "device": "cpu"})
    ctx = init_from_env(cfg)
    out = {"world": ctx.world, "fits": []}
    with using(ctx):
        if ctx.leader:
            z = np.load(a.data, allow_pickle=False)
            tri, nu, ni = (z["u"], z["i"], z["y"]), int(z["nu"]), int(z["ni"])
            for obj in a.objectives.split(","):
                tc = replace(cfg.train, objective=obj, epochs=a.sweeps)
                m = model_for_fit(tc, tri, nu, ni)
                m.warm_start(0)
                c0 = time.process_time()
                hist = m.fit(a.sweeps, log=lambda s: None)
                cpu = (time.process_time() - c0) / a.sweeps  # 1 rank: the whole fit is solving
                out["fits"].append({"objective": obj, "sweeps": [h["seconds"] for h in hist],
                                    "cpu": [h.get("rank_cpu_seconds", [cpu]) for h in hist],
                                    "bytes_sent_per_rank": [h.get("bytes_sent_per_rank", 0) for h in hist],
                                    "rank_seconds": [h.get("rank_seconds") for h in hist],
                                    "shard_bytes": int(getattr(m, "sent_shards", 0)),
                                    "n_users": nu, "n_items": ni, "n": int(len(tri[0])), "k": int(m.k)})
            if ctx.world > 1:
                stop_followers(ctx)
        else:
            while follow(ctx):
                pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["rss"] = [r[0] for r in all_gather_floats(ctx, [rss])] if ctx.world > 1 else [float(rss)]
    if ctx.leader:
        Path(a.out).write_text(json.dumps(out))
    import torch.distributed as dist

    dist.destroy_process_group()  # else gloo's threads may abort the exit ("terminate called")
    return 0


def launch(world: int, data: Path, objectives: str, sweeps: int, dim: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc-per-node", str(world), __file__, "--worker", "--data", str(data),
                            "--objectives", objectives, "--sweeps", str(sweeps), "--dim", str(dim),
                            "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                           env=dict(os.environ, TORCH_CPP_LOG_LEVEL="ERROR"))
        if p.returncode != 0:
            raise SystemExit(f"launch of {world} ranks failed:\n{p.stderr[-3000:]}")
        res = json.loads(out.read_text())
        res["wall_s"] = time.perf_counter() - t0
        print(f"  {world} rank(s), {objectives}: "
              + ", ".join(f"{f['objective']} median {statistics.median(f['sweeps']):.2f} s"
                          for f in res["fits"]) + f"; RSS {[round(r / 2**20) for r in res['rss']]} MiB",
              flush=True)
        return res


def random_triples(n: int, n_users: int, n_items: int, seed: int = 0):
    """About ``n`` distinct (user, item) pairs (as the store holds them), power-law rows."""
    rng = np.random.default_rng(seed)
    m = int(n * 1.3)
    u = (rng.pareto(1.5, m) * n_users / 4).astype(np.int64) % n_users
    i = (rng.pareto(1.2, m) * n_items / 4).astype(np.int64) % n_items
    pair = np.unique(u * n_items + i)[:n]
    rng.shuffle(pair)
    y = rng.integers(0, 5, len(pair)).astype(np.float32)
    return (pair // n_items).astype(np.int32), (pair % n_items).astype(np.int32), y


# -- the paper table ---------------------------------------------------------------------------
def paper_rows(c: dict, ranks=(8, 32, 128), triples=1e9, users=50e6, items=2e6, dim=64, gbps=10.0):
    """Memory a rank, traffic a rank and sweep, and the sweep's time, from measured constants:
    ``bytes_per_entry`` (RSS a held entry: both sides' layouts, per triple held), ``factor_copies``
    (the whole-table copies a rank keeps: U, V and the gather's buffers), ``entry_dim_s`` (seconds
    per held entry and factor a sweep on one core)."""
    rows = []
    k = dim
    table = (users + items) * k * 4  # one copy of both factor tables, float32
    for w in ranks:
        held = 2 * triples / w  # each triple is held twice: by its user's rank and its item's
        mem = c["base"] + held * c["bytes_per_entry"] / 2 + c["factor_copies"] * table
        traffic = table * (w - 1) / w  # a ring all_gather: each rank sends (and receives) this
        comm = traffic / (gbps * 1e9 / 8)
        comp = c["entry_dim_s"] * (triples / w) * k
        rows.append([str(w), f"{mem / 2**30:.1f} GiB", f"{traffic / 2**30:.1f} GiB",
                     f"{comp:.0f} s", f"{comm:.1f} s", f"{comp + comm:.0f} s"])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data"), ap.add_argument("--objectives", default="implicit,squared")
    ap.add_argument("--triples", type=int, default=2_000_000, help="the scaling set (default 2M)")
    ap.add_argument("--rss-triples", type=int, default=20_000_000, help="the RSS set (default 20M)")
    ap.add_argument("--sweeps", type=int, default=5)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="launches of each world size (interleaved)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_dist.md"))
    ap.add_argument("--render", action="store_true", help="rewrite --out from its run section")
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a)
    if a.render:
        print(render(Path(a.out)))
        return 0
    sys.path.insert(0, str(ROOT))
    from mcrecall.train.synthetic import make_synthetic

    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    t0 = time.perf_counter()
    nu, ni = a.triples // 100, a.triples // 200
    d = make_synthetic(n_users=nu, n_items=ni, n_triples=a.triples, seed=0)
    scal = tmp / "scaling.npz"
    np.savez(scal, u=d.user_idx, i=d.item_idx, y=d.score, nu=nu, ni=ni)
    print(f"synthetic: {len(d)} triples, {nu} users, {ni} items ({time.perf_counter() - t0:.0f} s)", flush=True)
    n_scal = len(d)
    del d
    runs: dict[int, list] = {1: [], 2: []}
    for _ in range(a.repeats):
        for w in (1, 2):
            runs[w].append(launch(w, scal, "implicit,squared", a.sweeps, a.dim))

    def sweeps(w, obj):
        return [s for r in runs[w] for f in r["fits"] if f["objective"] == obj for s in f["sweeps"]]

    def cpu(w, obj, q):
        return statistics.median(c[q] for r in runs[w] for f in r["fits"] if f["objective"] == obj
                                 for c in f["cpu"])

    scale_rows = []
    for obj in OBJECTIVES:
        m1, m2 = statistics.median(sweeps(1, obj)), statistics.median(sweeps(2, obj))
        f2 = next(f for f in runs[2][0]["fits"] if f["objective"] == obj)
        share = [statistics.median(rs[q] for rs in f2["rank_seconds"]) for q in range(2)]
        scale_rows.append([obj, f"{m1:.2f} s", f"{m2:.2f} s", f"**{m2 / m1:.2f}x**",
                           f"{share[0]:.2f} / {share[1]:.2f} s",
                           f"{cpu(1, obj, 0):.2f} s | {cpu(2, obj, 0):.2f} / {cpu(2, obj, 1):.2f} s",
                           f"{f2['bytes_sent_per_rank'][0] / 2**20:.1f} MiB",
                           f"{f2['shard_bytes'] / 2**20:.0f} MiB"])
    # memory: random triples, fixed table sizes so the slope per entry is the layout's alone
    ru, ri = max(10, a.rss_triples // 100), max(10, a.rss_triples // 400)
    rss_rows, rss = [], {}
    for n in sorted({a.rss_triples // 10, a.rss_triples}):
        u, i, y = random_triples(n, ru, ri)
        p = tmp / f"rss{n}.npz"
        np.savez(p, u=u, i=i, y=y, nu=ru, ni=ri)
        del u, i, y
        for w in (1, 2):
            r = launch(w, p, "implicit", 2, a.dim)
            rss[(n, w)] = r["rss"]
            rss_rows.append([f"{n / 1e6:g}M", str(w)] + [f"{x / 2**20:.0f} MiB" for x in r["rss"]]
                            + ([""] if w == 1 else []) + [f"{statistics.median(r['fits'][0]['sweeps']):.1f} s"])
    lo, hi = sorted({a.rss_triples // 10, a.rss_triples})[0], a.rss_triples
    # a follower (rank 1 of 2) holds ~n/2 triples twice over (by user, by item) + the tables
    slope = (rss[(hi, 2)][1] - rss[(lo, 2)][1]) / ((hi - lo) / 2) if hi > lo else float("nan")
    k = a.dim
    table = (ru + ri) * k * 4
    base = rss[(lo, 2)][1] - slope * lo / 2 - 3 * table
    m1 = statistics.median(sweeps(1, "implicit"))
    consts = {"bytes_per_entry": slope, "factor_copies": 3, "base": max(base, 0.0),
              "entry_dim_s": m1 / (n_scal * k)}
    paper = paper_rows(consts)

    note = machine_note()
    section = "\n\n".join([
        f"## Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"Machine: {note}. One thread a rank; {a.repeats} launches of each world size, interleaved; "
        f"{a.sweeps} sweeps a fit, medians over all sweeps. Total {time.perf_counter() - t_all:.0f} s.",
        f"### Strong scaling: {n_scal / 1e6:.1f}M synthetic triples, dim {a.dim}, CG (dot)",
        table_md(["objective", "1 rank", "2 ranks", "2 / 1", "solving a sweep (r0 / r1)",
                  "CPU a sweep: 1 rank", "2 ranks (r0 / r1)", "sent a sweep, each rank",
                  "shards sent once (rank 0)"],
                 scale_rows, "lrrrrrrrr"),
        "Target: 2 ranks <= 0.6x one rank's sweep. The solving column is each rank's own work in "
        "the sweep (wall); the rest of a sweep is the exchange and waiting for the slower rank. The "
        "CPU columns (process time) show how the work divides whatever the machine's load: on a "
        "shared 2-core machine the wall ratio also measures how much of the second core the "
        "other tenants left.",
        f"### Peak RSS a rank (implicit, 2 sweeps; {ru} users, {ri} items, random power-law triples)",
        table_md(["triples", "ranks", "rank 0", "rank 1", "median sweep"], rss_rows, "lrrrr"),
        "Rank 0 also holds the snapshot (12 B a triple) and builds every shard before sending it.",
        "### On paper: 1B triples x dim 64 (50M users, 2M items), one core a rank, 10 Gb/s",
        table_md(["ranks", "memory a rank", "traffic a rank and sweep", "solving", "exchange",
                  "sweep"], paper, "rrrrrr"),
        f"Constants measured above: {consts['bytes_per_entry']:.0f} B of RSS a held triple (a "
        f"follower's slope between {lo / 1e6:g}M and {hi / 1e6:g}M triples; each triple is held by two "
        f"ranks), a base of {consts['base'] / 2**20:.0f} MiB, 3 copies of the factor tables a rank "
        f"(U, V and the all_gather's buffers; assumed), {consts['entry_dim_s'] * 1e9:.2f} ns a held "
        "triple and factor a sweep (implicit, 1 rank). Every rank holds both tables whole: past "
        "~10^8 rows the tables, not the triples, set the memory a rank, and the exchange sends them "
        "whole each sweep (a ring all_gather); gathering only the rows a shard references is the "
        "next step for catalogues that size.",
    ])
    print(render(Path(a.out), add_run(Path(a.out), section, append=False)))
    return 0


# -- the results file --------------------------------------------------------------------------
def render(path: Path, runs: list[str] | None = None) -> str:
    runs = run_sections(path) if runs is None else runs
    return write_file(path, TITLE, INTRO, summary(runs), runs)


def summary(runs: list[str]) -> str:
    """The latest run's strong scaling against the target and its peak RSS a rank at the largest
    set, from its tables."""
    if not runs:
        return ""
    run = runs[-1]
    tables = parse_tables(run)
    scaling = next(t for t in tables if t.header[:4] == ["objective", "1 rank", "2 ranks", "2 / 1"])
    rows = []
    for r in scaling.dicts():
        ratio = num(r["2 / 1"])
        met = "met" if ratio is not None and ratio <= SCALING_TARGET else "NOT met"
        rows.append([r["objective"], r["1 rank"], r["2 ranks"], f"{ratio:.2f}×", met])
    setting = run.split("### Strong scaling: ", 1)[1].split("\n", 1)[0]
    machine = next(ln for ln in run.splitlines() if ln.startswith("Machine: "))
    machine = machine.split(". ", 1)[0].removeprefix("Machine: ")
    body = [f"Strong scaling, median sweep of `train --nproc N` (torchrun, one thread a rank) on "
            f"{setting}:",
            table_md(["objective", "1 rank", "2 ranks", "2 / 1",
                      f"target 2 ranks ≤ {SCALING_TARGET:g}× 1 rank"], rows, "lrrrl")]
    said = []
    rss = next((t for t in tables if t.header[:4] == ["triples", "ranks", "rank 0", "rank 1"]), None)
    if rss is not None and rss.rows:
        n = max(rss.rows, key=lambda r: num(r[0]) or 0)[0]
        by_world = {r["ranks"]: r for r in rss.dicts() if r["triples"] == n}
        one, two = by_world.get("1"), by_world.get("2")
        if one and two and num(one["rank 0"]):
            said.append(f"- Peak RSS a rank on {n} random triples (implicit): {one['rank 0']} at 1 "
                        f"rank; at 2 ranks {two['rank 0']} on rank 0 "
                        f"({num(two['rank 0']) / num(one['rank 0']):.2f}×; it also holds the snapshot "
                        f"and builds every shard) and {two['rank 1']} on rank 1 "
                        f"({num(two['rank 1']) / num(one['rank 0']):.2f}×).")
    said.append(f"- Machine: {machine} (shared: the wall ratio also measures how much of the second "
                "core the other tenants left).")
    return marked("train_dist", "\n\n".join([*body, "\n".join(said)]))


if __name__ == "__main__":
    raise SystemExit(main())

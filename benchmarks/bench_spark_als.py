"""Spark MLlib ALS beside ours at 1 and 2 ranks (issue 19): time an iteration and Recall@10.

    python benchmarks/bench_spark_als.py                                   # 2M triples
    python benchmarks/bench_spark_als.py --triples 200000 --out /tmp/s.md  # quick

Needs the benchmark-only extra ``bench-spark`` (``pip install -e '.[bench-spark]'``: pyspark,
never a dependency of the package) and a Java 17+ runtime (``java`` on PATH or JAVA_HOME).

Spark is the anchor of distributed ALS: ``pyspark.ml.recommendation.ALS`` in ``local[2]`` (two
task threads), ``implicitPrefs=True``, ``rank`` = ``--dim``, ``regParam`` and ``alpha`` = our
``[train]`` defaults, the same number of iterations as our sweeps, seed 0, Spark's default
blocks (10 a side). It trains on exactly our training triples (the trainer's fixed hash split,
as benchmarks/bench_train.py), and its factors are scored by the same evaluator
(``mcrecall.train.evaluate`` through ``bench_train.Bench``: the same held-out pairs, the same
users, training items excluded, users/items without a positive training triple ranked as in
serving).

Measured:

- Spark, time an iteration: each repeat fits ``maxIter = n`` and ``maxIter = n + k`` on the
  cached input DataFrame; (t(n + k) - t(n)) / k is one estimate of an iteration (both half
  sweeps), free of the fixed cost of a fit (building the blocks, the final materialisation);
  the median over repeats is reported, and the fixed cost t(n) - n x that separately, as are
  the times to start the session, to load the triples and of a first, untimed warm-up fit
  (2 iterations: the JVM compiles the solver's code in its first fits).
- ours, time a sweep: ``bench_train_dist.launch`` (a real torchrun of its worker, one thread a
  rank, gloo on 127.0.0.1) at 1 and 2 ranks on the same training triples, the implicit
  objective, default solver; the median of all sweeps of all launches. Launches and Spark fits
  are interleaved (1 rank, 2 ranks, Spark) so the shared machine's load falls on all alike.
- Recall@10 / NDCG@10: Spark's ``maxIter = n`` model, and our model fitted in this process as
  rank 0 of a 1-rank launch builds it (``model_for_fit`` outside a process group); 2 ranks give
  the same factors (to 1e-4 of the largest, tests/test_train_distributed.py), so the same
  figure. A second Spark fit with ``regParam`` rescaled so that its total regularisation
  matches ours (below) shows how much of a Recall difference is the regularisation's.

Semantics (the two implicit objectives are the same weighted MF, Hu, Koren & Volinsky 2008):
confidence 1 + alpha * r on rated cells, preference 1 if r > 0; a score of 0 is an unobserved
cell in both (Spark: c - 1 = alpha * |0| = 0 and no preference; ours drops score-0 triples
before fitting). The regularisation differs: Spark's lambda_u = regParam * n_u (ALS-WR: the
number of the row's ratings > 0), ours lambda_u = reg * (1 + alpha * sum_i r_ui) (the row's
confidence mass, train/als.py), i.e. ~1 + alpha * mean(r) times Spark's at the same value.
Spark solves each row exactly (Cholesky); ours takes ``cg_steps`` CG steps from the previous
solution (the default solver).

Writes ``benchmarks/results/spark_als.md`` whole (``--render`` rewrites it from its run
section); its block ``spark_als`` is for benchmarks/update_docs.py.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shlex
import shutil
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
sys.path.insert(0, str(ROOT))
from bench_train import Bench  # noqa: E402  (the split and the evaluation of bench_train.py)
from bench_train_dist import launch  # noqa: E402  (the torchrun launch of bench_train_dist.py)
from resultsfile import (  # noqa: E402
    add_run,
    machine_note,
    marked,
    num,
    parse_tables,
    run_sections,
    table_md,
    write_file,
)

TITLE = "Spark MLlib ALS beside ours (issue 19)"
INTRO = ("Written whole by `benchmarks/bench_spark_als.py` (issue 19). Every figure of a run comes "
         "from that run: Spark MLlib's implicit ALS in `local[2]` and ours at 1 and 2 ranks "
         "(torchrun, one thread a rank) on the same training triples, scored by the same "
         "evaluator (`mcrecall.train.evaluate`).")
HEADER = ["system", "cores", "s / iteration (median)", "× Spark", "Recall@10", "NDCG@10", "notes"]


def spark_session(threads: int, memory: str):
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # the JVM's own address: loopback only
    spark = (SparkSession.builder.master(f"local[{threads}]").appName("mcrecall-bench-als")
             .config("spark.driver.memory", memory)
             .config("spark.driver.host", "127.0.0.1")  # else it binds the host's outside address
             .config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", str(2 * threads))
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    # ALS's lineage grows with every iteration: without a checkpoint dir (checkpointInterval
    # 10 is ignored then) fits of 20 iterations overflowed the JVM's stack (StackOverflowError)
    ckpt = tempfile.mkdtemp(prefix="mcrecall-spark-ckpt-")
    atexit.register(shutil.rmtree, ckpt, True)
    spark.sparkContext.setCheckpointDir(ckpt)
    return spark


def spark_fit(spark_df, dim, iters, reg, alpha, blocks):
    """(seconds, model) of one Spark ALS fit (``fit`` materialises both factor tables)."""
    from pyspark.ml.recommendation import ALS as SparkALS

    als = SparkALS(rank=dim, maxIter=iters, regParam=reg, alpha=alpha, implicitPrefs=True,
                   userCol="user", itemCol="item", ratingCol="rating", seed=0,
                   numUserBlocks=blocks, numItemBlocks=blocks, nonnegative=False)
    t0 = time.perf_counter()
    model = als.fit(spark_df)
    return time.perf_counter() - t0, model


def spark_factors(model, n_users, n_items, dim):
    """Dense (n_users, dim), (n_items, dim) float32 tables (zeros where Spark has no row)."""
    out = []
    for frame, n in ((model.userFactors, n_users), (model.itemFactors, n_items)):
        rows = frame.collect()
        F = np.zeros((n, dim), np.float32)
        if rows:
            ids = np.fromiter((r["id"] for r in rows), np.int64, len(rows))
            F[ids] = np.asarray([r["features"] for r in rows], np.float32)
        out.append(F)
    return out


def matched_reg(train, reg, alpha) -> float:
    """The regParam whose total regularisation over the rows with a positive triple (users and
    items) equals ours: sum_r regParam * n_r = sum_r reg * (1 + alpha * sum y_r)."""
    u, i, y = train
    pos = y > 0
    rows = len(np.unique(u[pos])) + len(np.unique(i[pos]))
    return reg * (rows + 2 * alpha * float(y[pos].sum())) / (2 * int(pos.sum()))


def ours_model(train, nu, ni, dim, iters):
    """Our implicit model as rank 0 of a 1-rank launch of bench_train_dist.py builds it."""
    import torch

    from mcrecall.core.config import load_config
    from mcrecall.train.distributed import model_for_fit

    torch.set_num_threads(1)
    cfg = load_config(environ={}).with_overrides(train={"threads": 1, "dim": dim, "device": "cpu"})
    tc = replace(cfg.train, objective="implicit", epochs=iters)
    m = model_for_fit(tc, train, nu, ni)
    m.warm_start(0)
    hist = m.fit(iters, log=lambda s: None)
    return m, tc, statistics.median(h["seconds"] for h in hist)


def java_version() -> str:
    try:
        p = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        return (p.stderr or p.stdout).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.SubprocessError):
        return "java: unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--triples", type=int, default=2_000_000, help="synthetic triples (default 2M)")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=10, help="Spark's maxIter = our sweeps")
    ap.add_argument("--extra", type=int, default=10,
                    help="k: Spark also fits maxIter = iterations + k; (t(n+k) - t(n)) / k an iteration")
    ap.add_argument("--repeats", type=int, default=3, help="turns of (1 rank, 2 ranks, Spark)")
    ap.add_argument("--blocks", type=int, default=10, help="Spark's numUserBlocks = numItemBlocks")
    ap.add_argument("--spark-memory", default="4g", help="spark.driver.memory")
    ap.add_argument("--eval-users", type=int, default=5000)
    ap.add_argument("--no-matched", action="store_true", help="skip the matched-regParam Spark fit")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "spark_als.md"))
    ap.add_argument("--render", action="store_true", help="rewrite --out from its run section")
    a = ap.parse_args(argv)
    if a.render:
        print(render(Path(a.out)))
        return 0
    cmd = ("python benchmarks/bench_spark_als.py " + shlex.join(argv if argv is not None else sys.argv[1:])).rstrip()
    import pyspark

    from mcrecall.core.config import load_config
    from mcrecall.train.synthetic import make_synthetic

    t_all = time.perf_counter()
    base = load_config(environ={}).train
    reg, alpha = base.reg, base.alpha
    nu, ni = a.triples // 100, a.triples // 200
    t0 = time.perf_counter()
    d = make_synthetic(n_users=nu, n_items=ni, n_triples=a.triples, seed=0)
    b = Bench(d, a.dim, a.eval_users)
    u, i, y = b.train
    if max(nu, ni) >= 2**31:
        raise SystemExit("Spark's ids are int32")
    zero = float((y == 0).mean())
    print(f"synthetic: {len(d)} triples, {nu} users, {ni} items; {len(y)} training triples "
          f"({100 * zero:.1f} % score 0) ({time.perf_counter() - t0:.0f} s)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    npz = tmp / "train.npz"
    np.savez(npz, u=u, i=i, y=y, nu=nu, ni=ni)
    csv = tmp / "train.csv"
    np.savetxt(csv, np.column_stack([u, i, y.astype(np.int64)]), fmt="%d", delimiter=",")

    # ours: the quality figure (in this process), then the timed launches in turns with Spark
    m, tc, inproc = ours_model(b.train, nu, ni, a.dim, a.iterations)
    U, V = m.published()
    ev_ours = b.add("ours", 0.0, U, V, m.scale, positives_only=True)["model"]
    del m, U, V

    t0 = time.perf_counter()
    spark = spark_session(2, a.spark_memory)
    t_session = time.perf_counter() - t0
    t0 = time.perf_counter()
    df = spark.read.schema("user INT, item INT, rating FLOAT").csv(str(csv)).cache()
    n_df = df.count()
    t_load = time.perf_counter() - t0
    print(f"Spark {pyspark.__version__}: session {t_session:.1f} s, {n_df} triples loaded and cached "
          f"in {t_load:.1f} s", flush=True)

    t_warm, _ = spark_fit(df, a.dim, 2, reg, alpha, a.blocks)  # the JVM's JIT: not timed
    runs: dict[int, list] = {1: [], 2: []}
    est, t_n, model_n = [], [], None
    for _ in range(a.repeats):
        for w in (1, 2):
            runs[w].append(launch(w, npz, "implicit", a.iterations, a.dim))
        s_n, mod = spark_fit(df, a.dim, a.iterations, reg, alpha, a.blocks)
        s_nk, _ = spark_fit(df, a.dim, a.iterations + a.extra, reg, alpha, a.blocks)
        model_n = model_n or mod
        est.append((s_nk - s_n) / a.extra)
        t_n.append(s_n)
        print(f"  Spark: maxIter {a.iterations} {s_n:.1f} s, {a.iterations + a.extra} {s_nk:.1f} s "
              f"-> {est[-1]:.2f} s an iteration", flush=True)
    SU, SV = spark_factors(model_n, nu, ni, a.dim)
    ev_spark = b.add("Spark", 0.0, SU, SV, 1.0, positives_only=True)["model"]
    ev_match, reg_m, t_match = None, None, None
    if not a.no_matched:
        reg_m = matched_reg(b.train, reg, alpha)
        t_match, mod = spark_fit(df, a.dim, a.iterations, reg_m, alpha, a.blocks)
        SU, SV = spark_factors(mod, nu, ni, a.dim)
        ev_match = b.add("Spark matched", 0.0, SU, SV, 1.0, positives_only=True)["model"]
    spark.stop()

    sp = statistics.median(est)
    fixed = statistics.median(t_n) - a.iterations * sp
    ours = {w: statistics.median(s for r in runs[w] for f in r["fits"] for s in f["sweeps"])
            for w in (1, 2)}
    wall = {w: statistics.median(r["wall_s"] for r in runs[w]) for w in (1, 2)}
    f4 = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    rows = [
        [f"Spark MLlib ALS, local[2] (regParam {reg:g})", "2", f"{sp:.3f}", "1.00×",
         f4(ev_spark["recall@10"]), f4(ev_spark["ndcg@10"]),
         f"estimates {', '.join(f'{e:.2f}' for e in est)} s; fit of {a.iterations} iterations "
         f"{statistics.median(t_n):.1f} s (fixed cost {fixed:.1f} s)"],
    ]
    if ev_match is not None:
        rows.append([f"Spark MLlib ALS, local[2] (regParam {reg_m:.3g}: our total λ)", "2", "—", "—",
                     f4(ev_match["recall@10"]), f4(ev_match["ndcg@10"]),
                     f"fit of {a.iterations} iterations {t_match:.1f} s (quality only)"])
    for w in (1, 2):
        rows.append([f"mcrecall, {w} rank{'s' if w > 1 else ''} (torchrun)", str(w), f"{ours[w]:.3f}",
                     f"{ours[w] / sp:.2f}×", f4(ev_ours["recall@10"]), f4(ev_ours["ndcg@10"]),
                     f"{a.repeats} launches × {a.iterations} sweeps, launch wall {wall[w]:.0f} s"
                     + ("" if w == 1 else "; Recall: the 1-rank model (same factors)")])
    total = time.perf_counter() - t_all
    section = "\n\n".join([
        f"## Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `{cmd}`",
        f"Machine: {machine_note()}; Spark {pyspark.__version__} ({java_version()}), "
        f"spark.driver.memory {a.spark_memory}, {a.blocks} blocks a side. Whole run {total:.0f} s.",
        f"{len(d)} synthetic triples (`make_synthetic`, {nu} users, {ni} items), {len(y)} in the "
        f"training split ({100 * zero:.1f} % score 0: unobserved for both), dim {a.dim}, "
        f"{a.iterations} iterations = sweeps, implicit, reg {reg:g}, alpha {alpha:g}; ours "
        f"solver {tc.solver} ({tc.cg_steps} CG steps), one thread a rank; Recall@10 over "
        f"{a.eval_users} users at most, relevant = held-out score ≥ 2.",
        table_md(HEADER, rows, "lrrrrrl"),
        f"Spark: session start {t_session:.1f} s, loading and caching the triples {t_load:.1f} s, "
        f"a warm-up fit of 2 iterations (the JVM's JIT; its first fits are slower) {t_warm:.1f} s "
        f"(none in the table). An iteration = (t(maxIter {a.iterations + a.extra}) − "
        f"t(maxIter {a.iterations})) / {a.extra}, median of {a.repeats} repeats. Ours: median "
        f"sweep of {a.repeats} torchrun launches (interleaved with Spark's fits); in this "
        f"process (1 thread, no torchrun) {inproc:.3f} s a sweep.",
        "Regularisation differs at the same value: Spark λ_u = regParam · n_u (ratings > 0), "
        "ours λ_u = reg · (1 + α Σ_i r_ui); the matched row rescales regParam so that the two "
        "totals over all rows agree.",
    ])
    print(render(Path(a.out), add_run(Path(a.out), section, append=False)))
    return 0


def render(path: Path, runs: list[str] | None = None) -> str:
    runs = run_sections(path) if runs is None else runs
    return write_file(path, TITLE, INTRO, summary(runs), runs)


def summary(runs: list[str]) -> str:
    """The latest run's table and its ratios, computed from the table."""
    if not runs:
        return ""
    t = next(x for x in parse_tables(runs[-1]) if x.header[:1] == ["system"])
    rows = {r[0]: dict(zip(t.header, r, strict=False)) for r in t.rows}
    spark = next((v for k, v in rows.items() if k.startswith("Spark") and v["× Spark"] != "—"), None)
    said = []
    if spark is not None:
        for k, v in rows.items():
            if k.startswith("mcrecall"):
                said.append(f"- {k}: {v['s / iteration (median)']} s a sweep, {v['× Spark']} Spark's "
                            f"{spark['s / iteration (median)']} s an iteration; Recall@10 "
                            f"{v['Recall@10']} against Spark's {spark['Recall@10']}.")
        m = next((v for k, v in rows.items() if k.startswith("Spark") and "our total λ" in k), None)
        if m is not None and num(m["Recall@10"]) is not None:
            said.append(f"- Spark with regParam matched to our total regularisation: Recall@10 "
                        f"{m['Recall@10']}.")
    head = runs[-1].splitlines()[0].removeprefix("## ")
    said.append(f"- {head}; the run's section below has the machine and its load.")
    return marked("spark_als", table_md(t.header, t.rows, "lrrrrrl") + "\n\n" + "\n".join(said))


if __name__ == "__main__":
    raise SystemExit(main())

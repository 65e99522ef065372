"""Trainer benchmark (issue 4): time to train and held-out RMSE / Recall@10, one table.

Every method is measured in the same run on the same split (the trainer's fixed hash rule) and
evaluated by the same code (mcrecall.train.evaluate): this trainer's objectives, scikit-surprise's SVD and
implicit's ALS when they are installed, and the global-mean and most-popular baselines.

    python benchmarks/bench_train.py                 # 2,000,000 synthetic triples
    python benchmarks/bench_train.py --triples 200000 --out /tmp/train.md   # quick

Issue 11 §4 in the same run: per-sweep time of the ALS objectives with the default CG solver
and with the exact Cholesky solver against the `implicit` library's per-iteration time (its own
callback), the bce epoch against the autograd + sort epoch it replaced (``BCEBefore``, kept here
as the baseline), and the peak RSS of a training process (``--memory``, a subprocess each size,
``resource.getrusage``).

Writes benchmarks/results/train.md whole (unless --out says otherwise; ``--render`` rewrites it
from its run section without measuring). No public rating data set is
shipped by an installable package without a runtime download (surprise's and implicit's loaders
download), so only the synthetic set is measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (docs/measurements.md)

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch.nn.functional as Fn  # noqa: E402

from mcrecall.train.als import ALS  # noqa: E402
from mcrecall.train.evaluate import evaluate  # noqa: E402
from mcrecall.train.foldin import fold_in  # noqa: E402
from mcrecall.train.sgd import BCE  # noqa: E402
from mcrecall.train.split import id_hashes, pair_hash_unit  # noqa: E402
from mcrecall.train.synthetic import make_synthetic  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from resultsfile import add_run, machine_note, marked, num, parse_tables, run_sections, table_md, write_file  # noqa: E402


def _quiet(_):
    pass


class Bench:
    def __init__(self, data, dim, eval_users):
        self.d, self.dim, self.eval_users = data, dim, eval_users
        hu, hi = id_hashes(data.user_ids), id_hashes(data.item_ids)
        self.hu = hu
        self.test = pair_hash_unit(hu[data.user_idx], hi[data.item_idx]) < 0.1
        tr = ~self.test
        self.train = (data.user_idx[tr], data.item_idx[tr], data.score[tr])
        self.testd = (data.user_idx[self.test], data.item_idx[self.test], data.score[self.test])
        self.nu, self.ni = len(data.user_ids), len(data.item_ids)
        self.rows = []
        self.per_sweep: dict[str, float] = {}  # method -> median seconds a sweep / epoch

    def has(self, positives_only):
        u, i, y = self.train
        keep = y > 0 if positives_only else np.ones(len(y), bool)
        return (np.bincount(u[keep], minlength=self.nu) > 0,
                np.bincount(i[keep], minlength=self.ni) > 0)

    def add(self, name, seconds, U, V, scale=1.0, positives_only=False, note=""):
        uh, ih = self.has(positives_only)
        ev = evaluate(U, V, scale, self.train, self.testd, user_hash=self.hu,
                      max_users=self.eval_users, user_has=uh, item_has=ih)
        self.rows.append((name, seconds, ev["model"], note))
        print(f"{name:<34} {seconds:8.1f} s  rmse {ev['model']['rmse']:.4f}  "
              f"recall@10 {ev['model']['recall@10']:.4f}  {note}", flush=True)
        return ev

    def ours(self, name, objective, similarity="dot", epochs=10, **kw):
        u, i, y = self.train
        t0 = time.perf_counter()
        if objective in ("bce", "bce-before"):
            cls = BCEBefore if objective == "bce-before" else BCE
            m = cls(u, i, y, self.nu, self.ni, similarity=similarity, dim=self.dim, **kw)
        else:
            m = ALS(u, i, y, self.nu, self.ni, objective=objective, similarity=similarity,
                    dim=self.dim, **kw)
        m.init_factors(0)
        hist = m.fit(epochs, log=_quiet)
        secs = time.perf_counter() - t0
        per = statistics.median(h["seconds"] for h in hist)
        U, V = m.published()
        ev = self.add(name, secs, U, V, m.scale, positives_only=objective != "squared",
                      note=f"{epochs} sweeps, median {per:.2f} s/sweep")
        self.per_sweep[name] = per
        return m, ev

    def epoch_time(self, name, cls, epochs, **kw):
        """Median seconds an epoch of ``cls`` (timed only: the baseline of a faster epoch)."""
        u, i, y = self.train
        m = cls(u, i, y, self.nu, self.ni, dim=self.dim, **kw)
        m.init_factors(0)
        per = statistics.median(h["seconds"] for h in m.fit(epochs, log=_quiet))
        print(f"{name:<34} median {per:.2f} s/epoch ({epochs} epochs)", flush=True)
        self.per_sweep[name] = per

    def baselines(self, ev):
        for key, name in (("global_mean", "global mean"), ("popular", "most popular")):
            self.rows.append((name, 0.0, ev[key], ""))


class BCEBefore(BCE):
    """The bce epoch before issue 11 (autograd on the gathered rows, ``torch.unique`` per step),
    kept as the same-run baseline of the faster epoch; same sampling, same losses."""

    def _step_before(self, table, acc, rows, grad_rows):
        uniq, inv = torch.unique(rows, return_inverse=True)
        g = torch.zeros(len(uniq), table.shape[1], device=table.device)
        g.index_add_(0, inv, grad_rows)
        if self.biased and table is self.U:
            g[:, -1] = 0.0
        acc[uniq] += g * g
        table[uniq] -= self.lr * g / torch.sqrt(acc[uniq] + 1e-10)

    def fit(self, epochs, log=print, on_sweep=None):
        history = []
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        for ep in range(1, epochs + 1):
            t0 = time.perf_counter()
            perm = torch.randperm(self.n, generator=gen, device=self.device)
            total, seen = 0.0, 0
            for s in range(0, self.n, self.batch):
                idx = perm[s:s + self.batch]
                u, i = self.u[idx], self.i[idx]
                j = torch.randint(0, self.n_items, (len(idx), self.negatives), generator=gen,
                                  device=self.device)
                a = self.U[u].requires_grad_(True)
                bp = self.V[i].requires_grad_(True)
                bn = self.V[j].requires_grad_(True)
                self.scale_t = torch.tensor(self.scale, device=self.device, requires_grad=True)
                zp = self._logits(a, bp)
                zn = self._logits(a.unsqueeze(1), bn)
                data = Fn.softplus(-zp).sum() + Fn.softplus(zn).sum()
                reg = self.reg * ((1 + self.negatives) * (a * a).sum() + (bp * bp).sum()
                                  + (bn * bn).sum())
                ((data + reg) / len(idx)).backward()
                with torch.no_grad():
                    self._step_before(self.U, self.GU, u, a.grad)
                    self._step_before(self.V, self.GV, torch.cat([i, j.reshape(-1)]),
                                      torch.cat([bp.grad, bn.grad.reshape(-1, self.k)]))
                total += float(data.detach())
                seen += len(idx)
            examples = seen * (1 + self.negatives)
            history.append({"epoch": ep, "seconds": time.perf_counter() - t0,
                            "loss": total / max(1, examples)})
        return history


def surprise_svd(b: Bench, epochs=20):
    import pandas as pd
    from surprise import SVD, Dataset, Reader

    u, i, y = b.train
    t0 = time.perf_counter()
    df = pd.DataFrame({"u": u, "i": i, "y": y})
    ts = Dataset.load_from_df(df, Reader(rating_scale=(0, 4))).build_full_trainset()
    algo = SVD(n_factors=b.dim, n_epochs=epochs, lr_all=0.01, reg_all=0.1, random_state=0)
    algo.fit(ts)
    secs = time.perf_counter() - t0
    d = b.dim
    U = np.zeros((b.nu, d + 2), np.float32)
    V = np.zeros((b.ni, d + 2), np.float32)
    U[:, d], U[:, d + 1], V[:, d + 1] = 1.0, ts.global_mean, 1.0
    for inner in range(ts.n_users):  # fold biases into vectors, as the trainer does
        r = int(ts.to_raw_uid(inner))
        U[r, :d], U[r, d + 1] = algo.pu[inner], ts.global_mean + algo.bu[inner]
    for inner in range(ts.n_items):
        r = int(ts.to_raw_iid(inner))
        V[r, :d], V[r, d] = algo.qi[inner], algo.bi[inner]
    b.add("surprise SVD (lr .01, reg .1)", secs, U, V, note=f"{epochs} epochs, 1 thread")


def implicit_als(b: Bench, alpha=3.0, reg=0.01, iters=15, threads=2):
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    u, i, y = b.train
    pos = y > 0
    t0 = time.perf_counter()
    m = sp.csr_matrix((y[pos].astype(np.float32), (u[pos], i[pos])), shape=(b.nu, b.ni))
    model = AlternatingLeastSquares(factors=b.dim, regularization=reg, alpha=alpha,
                                    iterations=iters, random_state=0, num_threads=threads)
    stamps = [time.perf_counter()]

    def tick(*_):  # called after every iteration
        stamps.append(time.perf_counter())

    try:  # implicit asks for a single-threaded BLAS (it parallelises itself)
        from threadpoolctl import threadpool_limits
    except ImportError:
        model.fit(m, show_progress=False, callback=tick)
    else:
        with threadpool_limits(1, "blas"):
            model.fit(m, show_progress=False, callback=tick)
    secs = time.perf_counter() - t0
    per = statistics.median(np.diff(stamps[1:])) if len(stamps) > 2 else secs / iters
    name = f"implicit ALS (α {alpha:g}, λ {reg:g})"
    b.add(name, secs, np.asarray(model.user_factors), np.asarray(model.item_factors),
          positives_only=True,
          note=f"{iters} iterations, median {per:.2f} s/iteration, {threads} threads")
    b.per_sweep[name] = per


def interleaved_speed(b: Bench, rounds: int = 8, threads: int = 2) -> list[list[str]]:
    """Sweep times taken in turns with the library's iterations (a shared machine's load
    changes within a run): after each of the library's iterations (its callback; the time in
    the callback is not counted as the library's), one sweep of each of our ALS objectives
    (default solver). Returns rows: method, median s, ratio to the library's median."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    u, i, y = b.train
    pos = y > 0
    mat = sp.csr_matrix((y[pos].astype(np.float32), (u[pos], i[pos])), shape=(b.nu, b.ni))
    ours = {f"ours {o} (CG, {ALS.__init__.__kwdefaults__['cg_steps']} steps)":
            ALS(u, i, y, b.nu, b.ni, objective=o, dim=b.dim, reg=0.1, alpha=3.0)
            for o in ("implicit", "squared")}
    for m in ours.values():
        m.init_factors(0)
    times = {"implicit library ALS (CG, 3 steps)": [], **{k: [] for k in ours}}
    lib_name = next(iter(times))
    model = AlternatingLeastSquares(factors=b.dim, regularization=0.01, alpha=3.0,
                                    iterations=rounds, random_state=0, num_threads=threads)
    start = [time.perf_counter()]

    def turn(*_):
        times[lib_name].append(time.perf_counter() - start[0])
        for name, m in ours.items():
            times[name].append(m.fit(1, log=_quiet)[0]["seconds"])
        start[0] = time.perf_counter()

    from threadpoolctl import threadpool_limits
    with threadpool_limits(1, "blas"):
        model.fit(mat, show_progress=False, callback=turn)
    lib = statistics.median(times[lib_name][1:])  # the first iteration also sets up
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts[1:])
        rows.append([name, f"{med:.3f}", f"{min(ts[1:]):.3f}", f"{med / lib:.2f}×"])
        print(f"interleaved {name}: median {med:.3f} s, {med / lib:.2f}x library", flush=True)
    return rows


def memory_runs(a):
    sizes = [int(x) for x in a.memory.split(",") if x.strip()]
    runs = [(n, "cg") for n in sizes]
    if sizes:
        runs.insert(1, (sizes[0], "cholesky"))
    return runs


def rss_child(n: int, solver: str, dim: int, threads: int) -> int:
    """In a fresh process: n uniform random triples (the memory of a training does not depend
    on their structure; the planted generator is too slow beyond a few million), then 2 sweeps of
    the implicit objective. Prints one JSON line of peak RSS figures (MiB)."""
    import json
    import resource

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    nu, ni = max(1, n // 100), max(1, n // 200)
    u = rng.integers(0, nu, n, dtype=np.int32)
    i = rng.integers(0, ni, n, dtype=np.int32)
    y = rng.integers(0, 5, n).astype(np.float32)
    def status(key):  # MiB, from /proc/self/status (Linux)
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith(key + ":")) / 1024

    def mib():
        # VmHWM: the peak RSS of this process's own memory map. getrusage's ru_maxrss is the
        # same figure except that Linux carries the parent's over a fork + exec (here: the
        # bench's own 1.4 GB); it is the fallback where /proc is missing.
        try:
            return status("VmHWM")
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    try:
        before = status("VmRSS")
    except OSError:
        before = mib()
    t0 = time.perf_counter()
    m = ALS(u, i, y, nu, ni, objective="implicit", dim=dim, solver=solver)
    m.init_factors(0)
    hist = m.fit(2, log=_quiet)
    print(json.dumps({"triples": n, "solver": solver, "data_mib": before, "peak_mib": mib(),
                      "sweep_s": statistics.median(h["seconds"] for h in hist),
                      "seconds": time.perf_counter() - t0}), flush=True)
    return 0


def peak_rss(n: int, solver: str, dim: int, threads: int) -> dict:
    import json
    import subprocess

    cmd = [sys.executable, __file__, "--rss-child", str(n), solver, "--dim", str(dim),
           "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return {"triples": n, "solver": solver, "error": f"exit {out.returncode}"}
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"peak RSS {n} triples {solver}: {rec}", flush=True)
    return rec


def foldin_ms(model, objective, dim):
    """Median fold-in time for 100 triples."""
    U, V = model.published()
    meta = {"foldin": model.foldin_section(V, np.ones(len(V), bool), 0)}
    rng = np.random.default_rng(0)
    items = rng.choice(len(V), 100, replace=False)
    y = rng.integers(1, 5, 100).astype(np.float32)
    ts = []
    for _ in range(50):
        t0 = time.perf_counter()
        fold_in(V[items], y, meta)
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--triples", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--eval-users", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-cosine", action="store_true")
    ap.add_argument("--before-epochs", type=int, default=2,
                    help="epochs of the pre-issue-11 bce baseline (timed only)")
    ap.add_argument("--memory", default="2000000,20000000",
                    help="triple counts whose training peak RSS is measured ('' = none)")
    ap.add_argument("--rss-child", nargs=2, metavar=("TRIPLES", "SOLVER"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.md"))
    ap.add_argument("--render", action="store_true", help="rewrite --out from its run section")
    a = ap.parse_args(argv)
    if a.render:
        print(render(Path(a.out)))
        return 0
    if a.rss_child:
        return rss_child(int(a.rss_child[0]), a.rss_child[1], a.dim, a.threads)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    n_users, n_items = a.triples // 100, a.triples // 200
    data = make_synthetic(n_users=n_users, n_items=n_items, n_triples=a.triples, seed=0)
    print(f"synthetic: {len(data)} triples, {n_users} users, {n_items} items, rank 8 planted "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    b = Bench(data, a.dim, a.eval_users)
    m_sq, ev = b.ours("ours squared (ALS, squared error on observed scores)", "squared", reg=0.1)
    b.baselines(ev)
    b.ours("ours squared, exact Cholesky", "squared", reg=0.1, solver="cholesky")
    m_im, _ = b.ours("ours implicit (weighted ALS)", "implicit", reg=0.1, alpha=3.0)
    b.ours("ours implicit, exact Cholesky", "implicit", reg=0.1, alpha=3.0, solver="cholesky")
    bce = dict(reg=0.01, lr=0.2, batch_size=8192)
    b.ours("ours bce (sparse Adagrad)", "bce", epochs=8, **bce)
    b.epoch_time("bce before issue 11 (autograd, sort)", BCEBefore, a.before_epochs, **bce)
    if not a.skip_cosine:
        b.ours("ours squared, cosine (sphere ALS)", "squared", "cosine", epochs=5)
    notes = []
    try:
        surprise_svd(b)
    except ImportError as e:
        notes.append(f"scikit-surprise not installed ({e})")
    try:
        implicit_als(b)
    except ImportError as e:
        notes.append(f"implicit not installed ({e})")
    try:
        inter = interleaved_speed(b, threads=a.threads)
    except ImportError as e:
        inter = []
        notes.append(f"interleaved speed not measured ({e})")
    fi = {o: foldin_ms(m, o, a.dim) for o, m in (("squared", m_sq), ("implicit", m_im))}
    mem = [peak_rss(n, solver, a.dim, a.threads) for n, solver in memory_runs(a)]
    total = time.perf_counter() - t0
    write_table(a, b, fi, notes, total, mem, inter)
    return 0


TITLE = "Trainer benchmark"
INTRO = ("Written whole by `benchmarks/bench_train.py`. Every method is trained and evaluated in "
         "the same run, on the same split (the trainer's fixed hash rule), by the same code "
         "(`mcrecall.train.evaluate`).")


LIB = "implicit ALS"


def speed_rows(b) -> list[list[str]]:
    """Median time a sweep (ALS) / an epoch (bce) against its baseline of the same run."""
    per, fig = b.per_sweep, {name: m for name, _, m, _ in b.rows}
    lib = next((k for k in per if k.startswith(LIB)), None)
    rows = []
    for name, t in per.items():
        base = lib if name.startswith("ours") and "bce" not in name else None
        if "bce" in name and not name.startswith("bce before"):
            base = next((k for k in per if k.startswith("bce before")), None)
        rec = fig.get(name, {}).get("recall@10")
        d = (None if rec is None or lib is None or base != lib
             else rec - fig[lib]["recall@10"])
        rows.append([name, f"{t:.3f}",
                     "—" if base is None else f"{t / per[base]:.2f}× {('library' if base == lib else 'before')}",
                     "—" if rec is None else f"{rec:.4f}",
                     "—" if d is None else f"{d:+.4f}"])
    return rows


def memory_rows(mem) -> list[list[str]]:
    rows = []
    for r in mem:
        if "error" in r:
            rows.append([f"{r['triples']:,}", r["solver"], r["error"], "—", "—", "—"])
            continue
        rows.append([f"{r['triples']:,}", r["solver"], f"{r['peak_mib']:,.0f}",
                     f"{r['data_mib']:,.0f}", f"{r['peak_mib'] - r['data_mib']:,.0f}",
                     f"{r['sweep_s']:.2f}"])
    return rows


def write_table(a, b, fi, notes, total, mem=(), inter=()):
    f = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    rows = [[name, f"{secs:.1f}", f(m["rmse"]), f(m["mae"]), f(m["recall@10"]), f(m["ndcg@10"]), note]
            for name, secs, m, note in b.rows]
    lines = [
        f"## Run: `python benchmarks/bench_train.py --triples {a.triples}`",
        "",
        f"Synthetic planted rank-8 set ({len(b.d)} triples, {b.nu} users, {b.ni} items, "
        f"user-dependent exposure), dim {a.dim}, held-out = the trainer's fixed hash rule (10 %), "
        f"ranking over {a.eval_users} users at most, relevant = held-out score ≥ 2. "
        f"{machine_note()}; torch {torch.__version__}, {a.threads} threads, "
        f"OMP_WAIT_POLICY=PASSIVE. Whole run {total:.0f} s.",
        "",
        table_md(["method", "train time (s)", "RMSE", "MAE", "Recall@10", "NDCG@10", "notes"],
                 rows, "lrrrrrl"),
        "",
        f"Fold-in of one user with 100 triples (`mcrecall.train.foldin.fold_in`, median of 50): "
        f"squared {fi['squared']:.2f} ms, implicit {fi['implicit']:.2f} ms.",
    ]
    lines += [
        "",
        "Speed (issue 11 §4): median wall time of a sweep (ALS) or an epoch (bce) of the fits "
        "above, one after the other (the machine's load moves between them: the ALS ratios "
        "that count are the turns below), against the `implicit` library's median iteration "
        "(its callback) or the bce epoch before issue 11; Δ = Recall@10 minus the library's.",
        "",
        table_md(["method", "s / sweep", "ratio", "Recall@10", "Δ Recall@10"],
                 speed_rows(b), "lrrrr"),
    ]
    if inter:
        lines += [
            "",
            "Speed in turns (the fair ratio on a shared machine): after each of the library's "
            "iterations, one sweep of each of our objectives (default solver), 7 turns after "
            "the first; median and fastest wall seconds.",
            "",
            table_md(["method (interleaved)", "median s", "fastest s", "× library"], inter,
                     "lrrr"),
        ]
    if mem:
        lines += [
            "",
            "Peak RSS of a training process (`--memory`; a fresh subprocess each: uniform random "
            "triples, users = n/100, items = n/200, objective implicit, 2 sweeps; "
            "the peak is the kernel's VmHWM, i.e. `resource.getrusage` ru_maxrss without the "
            "parent's RSS that Linux carries into it over fork + exec). \"before\" = after "
            "importing torch and making the triples.",
            "",
            table_md(["triples", "solver", "peak RSS (MiB)", "before (MiB)", "training (MiB)",
                      "s / sweep"], memory_rows(mem), "llrrrr"),
        ]
    lines += [f"- {n}" for n in notes]
    print(render(Path(a.out), add_run(Path(a.out), "\n".join(lines), append=False)))


def render(path: Path, runs: list[str] | None = None) -> str:
    runs = run_sections(path) if runs is None else runs
    return write_file(path, TITLE, INTRO, summary(runs), runs)


def summary(runs: list[str]) -> str:
    """The latest run's table and what it says (the squared-error objective vs Surprise, ranking objectives vs
    the implicit library and the baselines), computed from the table."""
    if not runs:
        return ""
    t = parse_tables(runs[-1])[0]
    rows = {r[0]: dict(zip(t.header, r, strict=False)) for r in t.rows}

    def get(prefix, col):
        r = next((v for k, v in rows.items() if k.startswith(prefix)), None)
        return None if r is None else num(r[col])

    said = []
    sq_rmse, sq_t = get("ours squared (", "RMSE"), get("ours squared (", "train time (s)")
    svd_rmse, svd_t = get("surprise SVD", "RMSE"), get("surprise SVD", "train time (s)")
    if None not in (sq_rmse, svd_rmse, sq_t, svd_t):
        said.append(f"- The squared-error objective (squared) reaches held-out RMSE {sq_rmse:.3f} against "
                    f"scikit-surprise SVD's {svd_rmse:.3f}, in {sq_t / svd_t:.2f}× its time.")
    rank = {k: num(v["Recall@10"]) for k, v in rows.items()  # the default solver's rows
            if k.startswith("ours") and "exact Cholesky" not in k
            and num(v["Recall@10"]) is not None}
    lib, lib_t = get("implicit ALS", "Recall@10"), get("implicit ALS", "train time (s)")
    if rank and lib is not None:
        best = max(rank, key=rank.get)
        best_t = get(best, "train time (s)")
        said.append(f"- Best Recall@10 of ours: {best} {rank[best]:.3f}, against the `implicit` "
                    f"library's ALS {lib:.3f}, which trains in {lib_t / best_t:.2f}× our time.")
    tables = parse_tables(runs[-1])
    speed = next((x for x in tables if x.header[:2] == ["method", "s / sweep"]), None)
    extra = []
    if speed is not None:  # the ALS ratios come from the turns below (load moves in a run)
        sp = {r[0]: dict(zip(speed.header, r, strict=False)) for r in speed.rows}
        for name in ("ours bce (sparse Adagrad)",):
            if name in sp and sp[name]["ratio"] != "—":
                before = next((k for k in sp if k.startswith("bce before")), "")
                said.append(f"- bce: {sp[name]['s / sweep']} s an epoch, {sp[name]['ratio']} "
                            f"({before}: {sp.get(before, {}).get('s / sweep', '—')} s; same run).")
    inter = next((x for x in tables if x.header[:1] == ["method (interleaved)"]), None)
    if inter is not None:
        extra.append(table_md(inter.header, inter.rows, "lrrr"))
        for r in inter.rows[1:]:
            said.append(f"- In turns with the library's iterations: {r[0]} {r[1]} s a sweep, "
                        f"{r[3]} the library's {inter.rows[0][1]} s (median).")
    mem = next((x for x in tables if x.header[:1] == ["triples"]), None)
    if mem is not None:
        extra.append(table_md(mem.header, mem.rows, "llrrrr"))
    pop = get("most popular", "Recall@10")
    sq_rec = get("ours squared (", "Recall@10")
    if pop is not None and sq_rec is not None and rank:
        said.append(f"- Rating-prediction MF (the squared-error objective) ranks at Recall@10 {sq_rec:.3f}: "
                    f"most popular {pop:.3f}, the best ranking objective {max(rank.values()):.3f}.")
    said.append("- RMSE/MAE of the ranking objectives (implicit, bce) are of a preference or logit, "
                "not a score estimate: shown, not meaningful. Global mean has no ranking.")
    body = [table_md(t.header, t.rows, "lrrrrrl"), *extra, "\n".join(said)]
    return marked("train", "\n\n".join(body))


if __name__ == "__main__":
    raise SystemExit(main())

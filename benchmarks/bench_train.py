"""Trainer benchmark (issue 4): time to train and held-out RMSE / Recall@10, one table.

Every method is measured in the same run on the same split (the trainer's fixed hash rule) and
evaluated by the same code (train.evaluate): this trainer's objectives, scikit-surprise's SVD and
implicit's ALS when they are installed, and the global-mean and most-popular baselines.

    python benchmarks/bench_train.py                 # 2,000,000 synthetic triples
    python benchmarks/bench_train.py --triples 200000 --out /tmp/train.md   # quick

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

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from train.als import ALS  # noqa: E402
from train.evaluate import evaluate  # noqa: E402
from train.foldin import fold_in  # noqa: E402
from train.sgd import BCE  # noqa: E402
from train.split import id_hashes, pair_hash_unit  # noqa: E402
from train.synthetic import make_synthetic  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from resultsfile import (add_run, machine_note, marked, num, parse_tables, run_sections,  # noqa: E402
                         table_md, write_file)


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
        if objective == "bce":
            m = BCE(u, i, y, self.nu, self.ni, similarity=similarity, dim=self.dim, **kw)
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
        return m, ev

    def baselines(self, ev):
        for key, name in (("global_mean", "global mean"), ("popular", "most popular")):
            self.rows.append((name, 0.0, ev[key], ""))


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


def implicit_als(b: Bench, alpha=3.0, reg=0.01, iters=15):
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    u, i, y = b.train
    pos = y > 0
    t0 = time.perf_counter()
    m = sp.csr_matrix((y[pos].astype(np.float32), (u[pos], i[pos])), shape=(b.nu, b.ni))
    model = AlternatingLeastSquares(factors=b.dim, regularization=reg, alpha=alpha,
                                    iterations=iters, random_state=0, num_threads=2)
    try:  # implicit asks for a single-threaded BLAS (it parallelises itself)
        from threadpoolctl import threadpool_limits
    except ImportError:
        model.fit(m, show_progress=False)
    else:
        with threadpool_limits(1, "blas"):
            model.fit(m, show_progress=False)
    secs = time.perf_counter() - t0
    b.add(f"implicit ALS (α {alpha:g}, λ {reg:g})", secs, np.asarray(model.user_factors),
          np.asarray(model.item_factors), positives_only=True,
          note=f"{iters} iterations, 2 threads")


def foldin_ms(model, objective, dim):
    """Median fold-in time for 100 triples."""
    from core.config import TrainConfig
    from train.trainer import foldin_meta

    U, V = model.published()
    meta = {"foldin": foldin_meta(model, TrainConfig(objective=objective, dim=dim), V,
                                  np.ones(len(V), bool), 0)}
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
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.md"))
    ap.add_argument("--render", action="store_true", help="rewrite --out from its run section")
    a = ap.parse_args(argv)
    if a.render:
        print(render(Path(a.out)))
        return 0
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    n_users, n_items = a.triples // 100, a.triples // 200
    data = make_synthetic(n_users=n_users, n_items=n_items, n_triples=a.triples, seed=0)
    print(f"synthetic: {len(data)} triples, {n_users} users, {n_items} items, rank 8 planted "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    b = Bench(data, a.dim, a.eval_users)
    m_sq, ev = b.ours("ours squared (ALS, seed objective)", "squared", reg=0.1)
    b.baselines(ev)
    m_im, _ = b.ours("ours implicit (weighted ALS)", "implicit", reg=0.1, alpha=3.0)
    b.ours("ours bce (sparse Adagrad)", "bce", epochs=8, reg=0.01, lr=0.2, batch_size=8192)
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
    fi = {o: foldin_ms(m, o, a.dim) for o, m in (("squared", m_sq), ("implicit", m_im))}
    total = time.perf_counter() - t0
    write_table(a, b, fi, notes, total)
    return 0


TITLE = "Trainer benchmark"
INTRO = ("Written whole by `benchmarks/bench_train.py`. Every method is trained and evaluated in "
         "the same run, on the same split (the trainer's fixed hash rule), by the same code "
         "(`train.evaluate`).")


def write_table(a, b, fi, notes, total):
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
        f"Fold-in of one user with 100 triples (`train.foldin.fold_in`, median of 50): "
        f"squared {fi['squared']:.2f} ms, implicit {fi['implicit']:.2f} ms.",
    ]
    lines += [f"- {n}" for n in notes]
    print(render(Path(a.out), add_run(Path(a.out), "\n".join(lines), append=False)))


def render(path: Path, runs: list[str] | None = None) -> str:
    runs = run_sections(path) if runs is None else runs
    return write_file(path, TITLE, INTRO, summary(runs), runs)


def summary(runs: list[str]) -> str:
    """The latest run's table and what it says (seed objective vs Surprise, ranking objectives vs
    the implicit library and the baselines), computed from the table."""
    if not runs:
        return ""
    t = parse_tables(runs[-1])[0]
    rows = {r[0]: dict(zip(t.header, r)) for r in t.rows}

    def get(prefix, col):
        r = next((v for k, v in rows.items() if k.startswith(prefix)), None)
        return None if r is None else num(r[col])

    said = []
    sq_rmse, sq_t = get("ours squared (", "RMSE"), get("ours squared (", "train time (s)")
    svd_rmse, svd_t = get("surprise SVD", "RMSE"), get("surprise SVD", "train time (s)")
    if None not in (sq_rmse, svd_rmse, sq_t, svd_t):
        said.append(f"- The seed's squared objective reaches held-out RMSE {sq_rmse:.3f} against "
                    f"scikit-surprise SVD's {svd_rmse:.3f}, in {sq_t / svd_t:.2f}× its time.")
    rank = {k: num(v["Recall@10"]) for k, v in rows.items()
            if k.startswith("ours") and num(v["Recall@10"]) is not None}
    lib, lib_t = get("implicit ALS", "Recall@10"), get("implicit ALS", "train time (s)")
    if rank and lib is not None:
        best = max(rank, key=rank.get)
        best_t = get(best, "train time (s)")
        said.append(f"- Best Recall@10 of ours: {best} {rank[best]:.3f}, against the `implicit` "
                    f"library's ALS {lib:.3f}, which trains in {lib_t / best_t:.2f}× our time.")
    pop = get("most popular", "Recall@10")
    sq_rec = get("ours squared (", "Recall@10")
    if pop is not None and sq_rec is not None and rank:
        said.append(f"- Rating-prediction MF (the seed's objective) ranks at Recall@10 {sq_rec:.3f}: "
                    f"most popular {pop:.3f}, the best ranking objective {max(rank.values()):.3f}.")
    said.append("- RMSE/MAE of the ranking objectives (implicit, bce) are of a preference or logit, "
                "not a score estimate: shown, not meaningful. Global mean has no ranking.")
    return marked("train", table_md(t.header, t.rows, "lrrrrrl") + "\n\n" + "\n".join(said))


if __name__ == "__main__":
    raise SystemExit(main())

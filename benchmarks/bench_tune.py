"""`mcrecall tune` benchmark (issue 11 §5): tuned vs default settings, same run, same data.

    python benchmarks/bench_tune.py                      # 300,000 synthetic triples, 2 min each
    python benchmarks/bench_tune.py --triples 60000 --budget 30 --out /tmp/tune.md   # quick

A synthetic planted-structure set (train/synthetic.py) is split three ways by the pair hash of
train/split.py: u < 0.1 is the hold-out `tune` selects on, 0.1 <= u < 0.9 its training split,
u >= 0.9 a FRESH test set that is never put in the store `tune` reads. Per objective, `tune`
runs with ``--budget`` and seed 0 on a store of the pairs u < 0.9; trial 0 is the default
configuration. Then the default and the tuned settings are each fitted on all the store's pairs
and evaluated on the fresh pairs: the hold-out figure of the tuned settings is optimistic (it
was selected on), the fresh figure is not.

Writes benchmarks/results/tune.md whole (``--render`` rewrites it from its run section).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (docs/measurements.md)

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcrecall.train.evaluate import evaluate  # noqa: E402
from mcrecall.train.split import id_hashes, pair_hash_unit  # noqa: E402
from mcrecall.train.synthetic import make_synthetic  # noqa: E402
from mcrecall.train.testing import fill_store, small_config  # noqa: E402
from mcrecall.train.trainer import fit_model  # noqa: E402
from mcrecall.train.tune import tune  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from resultsfile import add_run, machine_note, marked, num, parse_tables, run_sections, table_md, write_file  # noqa: E402

TITLE = "Tuning benchmark"
INTRO = ("Written whole by `benchmarks/bench_tune.py`: `mcrecall tune`'s best settings against "
         "the defaults, measured in the same run on the same synthetic set.")


def fresh_figures(data, tc, store_mask, fresh_mask, hu) -> dict:
    """Fit ``tc`` on the store's pairs and evaluate on the fresh ones (never seen by tune)."""
    m, _, secs = fit_model(data, tc, device="cpu", train_mask=store_mask, log=lambda s: None)
    up, ip = m.published()
    tr = (data.user_idx[store_mask], data.item_idx[store_mask], data.score[store_mask])
    te = (data.user_idx[fresh_mask], data.item_idx[fresh_mask], data.score[fresh_mask])
    keep = tr[2] > 0 if tc.objective != "squared" else np.ones(len(tr[2]), bool)
    ev = evaluate(up, ip, m.scale, tr, te, user_hash=hu, max_users=tc.eval_users,
                  baselines=False,
                  user_has=np.bincount(tr[0][keep], minlength=len(data.user_ids)) > 0,
                  item_has=np.bincount(tr[1][keep], minlength=len(data.item_ids)) > 0)
    return dict(ev["model"], seconds=secs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--triples", type=int, default=300_000)
    ap.add_argument("--budget", type=float, default=120.0, help="seconds per objective")
    ap.add_argument("--objectives", default="implicit,squared")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tune.md"))
    ap.add_argument("--render", action="store_true", help="rewrite --out from its run section")
    a = ap.parse_args(argv)
    if a.render:
        print(render(Path(a.out)))
        return 0
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    n_users, n_items = a.triples // 100, a.triples // 200
    data = make_synthetic(n_users=n_users, n_items=n_items, n_triples=a.triples, seed=0)
    hu, hi = id_hashes(data.user_ids), id_hashes(data.item_ids)
    unit = pair_hash_unit(hu[data.user_idx], hi[data.item_idx])
    store_mask, fresh_mask = unit < 0.9, unit >= 0.9
    d = Path(tempfile.mkdtemp(prefix="bench-tune-")) / "data"
    rows = []
    try:
        fill_store(d, data, store_mask)
        print(f"synthetic: {len(data)} triples, {n_users} users, {n_items} items; store "
              f"{int(store_mask.sum())}, fresh test {int(fresh_mask.sum())}", flush=True)
        for objective in a.objectives.split(","):
            cfg = small_config(d, objective=objective, threads=a.threads, device="cpu")
            res = tune(cfg, budget_s=a.budget, seed=0, out=d.parent / f"{objective}.toml")
            base = replace(cfg.train, seed=0)
            dflt = fresh_figures(data, base, store_mask, fresh_mask, hu)
            tuned_tc = replace(base, **res.best["params"])
            tuned = fresh_figures(data, tuned_tc, store_mask, fresh_mask, hu)
            done = sum(t["figures"] is not None for t in res.trials)
            params = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in res.best["params"].items())
            f = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
            rows.append([objective, res.metric, f"{done} / {len(res.trials)}",
                         f"{res.seconds:.0f}",
                         f(res.default["figures"]["recall@10"]),
                         f(res.best["figures"]["recall@10"]),
                         f(dflt["recall@10"]), f(tuned["recall@10"]),
                         f(dflt["rmse"]), f(tuned["rmse"]),
                         f"{dflt['seconds']:.1f} / {tuned['seconds']:.1f}", params])
    finally:
        shutil.rmtree(d.parent, ignore_errors=True)
    total = time.perf_counter() - t0
    lines = [
        f"## Run: `python benchmarks/bench_tune.py --triples {a.triples} --budget {a.budget:g} "
        f"--objectives {a.objectives}`",
        "",
        f"Synthetic planted rank-8 set ({len(data)} triples, {n_users} users, {n_items} items); "
        f"`tune` budget {a.budget:g} s per objective, seed 0; default = `[train]`'s defaults "
        f"(trial 0 of the same study). Fresh test = pairs outside the store tune read, both "
        f"settings refitted on the store's pairs. {machine_note()} (shared with other jobs); "
        f"torch {torch.__version__}, {a.threads} threads. Whole run {total:.0f} s.",
        "",
        table_md(["objective", "tuned on", "trials finished", "tune s",
                  "hold-out Recall@10 default", "hold-out Recall@10 tuned",
                  "fresh Recall@10 default", "fresh Recall@10 tuned", "fresh RMSE default",
                  "fresh RMSE tuned", "fit s default / tuned", "best settings"],
                 rows, "llrrrrrrrrrl"),
    ]
    print(render(Path(a.out), add_run(Path(a.out), "\n".join(lines), append=False)))
    return 0


def render(path: Path, runs: list[str] | None = None) -> str:
    runs = run_sections(path) if runs is None else runs
    return write_file(path, TITLE, INTRO, summary(runs), runs)


def summary(runs: list[str]) -> str:
    """The latest run's comparison in a few lines, computed from its table."""
    if not runs:
        return ""
    t = parse_tables(runs[-1])[0]
    header = ["objective", "tuned on", "Recall@10 default → tuned (fresh)", "ratio",
              "RMSE default → tuned (fresh)", "tune s"]
    rows, said = [], []
    for r in t.dicts():
        d, b = num(r["fresh Recall@10 default"]), num(r["fresh Recall@10 tuned"])
        dr, br = num(r["fresh RMSE default"]), num(r["fresh RMSE tuned"])
        ratio = "—" if not d or b is None else f"{b / d:.2f}×"
        rows.append([r["objective"], r["tuned on"], f"{d:.4f} → {b:.4f}", ratio,
                     f"{dr:.4f} → {br:.4f}", r["tune s"]])
        beaten = num(r["hold-out Recall@10 tuned"]) != num(r["hold-out Recall@10 default"])
        said.append(f"- {r['objective']}: best settings {r['best settings']} "
                    f"({r['trials finished']} trials finished"
                    + ("" if beaten else "; none beat the defaults on the hold-out") + ").")
    said.append("- Fresh = pairs `tune` never read; the hold-out figures it selected on are in "
                "the run's table (optimistic for the tuned row).")
    return marked("tune", table_md(header, rows, "llrrrr") + "\n\n" + "\n".join(said))


if __name__ == "__main__":
    raise SystemExit(main())

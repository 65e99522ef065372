"""Attributes (issue 21): the hybrid model against the ID-only model, in the same run.

On synthetic data with planted attribute structure (``train/synthetic.py``
``make_synthetic_attributes``: 80 % of the affinity predictable from the tokens), per objective
and seed: the trainer's own split and evaluation (``train/trainer.py`` ``split_snapshot`` /
``fit_model`` / ``evaluate_step``): warm Recall@10 of the hybrid and of the ID-only model
(attributes off, same split, same settings), cold-item Recall@20 (items held out with all their
triples, ranked among themselves) of the hybrid, of attribute popularity and of the two-stage
mapping, and the seconds per sweep (epoch for bce) of both fits. Medians over the seeds.

    python benchmarks/bench_attributes.py [--seeds 3] [--objectives implicit,bce]

Writes ``benchmarks/results/attributes.md`` (whole).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from resultsfile import RESULTS, marked  # noqa: E402

SETS = {"3000 items, 40k triples": dict(n_users=2000, n_items=3000, n_triples=40_000),
        "1500 items, 100k triples": dict(n_users=3000, n_items=1500, n_triples=100_000)}


def one(objective: str, seed: int, shape: dict) -> dict:
    from mcrecall.train import trainer as T
    from mcrecall.train.synthetic import make_synthetic_attributes
    from mcrecall.train.testing import small_config

    syn = make_synthetic_attributes(seed=seed, **shape)
    cfg = small_config("/nonexistent", device="cpu", compare_squared_sweeps=0, objective=objective,
                       seed=seed)
    run = T.split_snapshot(cfg, syn, log=lambda s: None)
    model, hist, _ = T.fit_model(syn, cfg.train, device="cpu", train_mask=run.train, log=lambda s: None)
    ev = T.evaluate_step(run, model)
    _, hist0, _ = T.fit_model(syn, replace(cfg.train, attributes=False), device="cpu",
                              train_mask=run.train, log=lambda s: None)
    c = ev["cold_items"]
    return {"warm": ev["model"]["recall@10"], "warm_id": ev["id_only"]["recall@10"],
            "cold": c["recall@20"], "pop": c["attribute_popularity"]["recall@20"],
            "map": c["two_stage_mapping"]["recall@20"],
            "sweep": statistics.median(h["seconds"] for h in hist),
            "sweep_id": statistics.median(h["seconds"] for h in hist0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--objectives", default="implicit,bce")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = []
    t0 = time.perf_counter()
    for name, shape in SETS.items():
        for obj in args.objectives.split(","):
            got = [one(obj, s, shape) for s in range(args.seeds)]
            med = {k: statistics.median(g[k] for g in got) for k in got[0]}
            # paired: each seed's hybrid against its own baselines, then the median
            med["vs_pop"] = statistics.median(g["cold"] / g["pop"] for g in got)
            med["vs_map"] = statistics.median(g["cold"] / g["map"] for g in got)
            med["wins"] = sum(g["cold"] > g["map"] for g in got)
            rows.append((name, obj, med))
            print(name, obj, {k: round(v, 4) for k, v in med.items()}, flush=True)
    cold = ["| set | objective | cold R@20 hybrid | attribute popularity | two-stage mapping "
            "| hybrid / popularity | hybrid / mapping | seeds above the mapping |", "|---|---|---|---|---|---|---|---|"]
    warm = ["| set | objective | warm R@10 hybrid | warm R@10 ID-only | difference | s/sweep hybrid "
            "| s/sweep ID-only | time ratio |", "|---|---|---|---|---|---|---|---|"]
    for name, obj, m in rows:
        cold.append(f"| {name} | {obj} | {m['cold']:.4f} | {m['pop']:.4f} | {m['map']:.4f} | "
                    f"{m['vs_pop']:.2f} | {m['vs_map']:.3f} | {m['wins']} of {args.seeds} |")
        warm.append(f"| {name} | {obj} | {m['warm']:.4f} | {m['warm_id']:.4f} | {m['warm'] - m['warm_id']:+.4f} | "
                    f"{m['sweep']:.3f} | {m['sweep_id']:.3f} | {m['sweep'] / m['sweep_id']:.2f} |")
    summary = ("Cold items (held out with all their triples, ranked among themselves), medians over "
               f"{args.seeds} seeds, baselines measured in the same run (the ratios: the median of each "
               "seed's hybrid over that seed's baseline):\n\n" + "\n".join(cold)
               + "\n\nWarm figures and time per sweep (epoch for bce), hybrid vs ID-only on the same split:\n\n"
               + "\n".join(warm))
    text = (f"# Attributes: the hybrid model vs ID-only\n\n{__doc__.split(chr(10) + chr(10))[1]}\n\n"
            f"## Summary\n\n{marked('attributes', summary)}\n\n"
            f"## Run\n\n{platform.machine()}, {os.cpu_count()} cores (shared), torch CPU, "
            f"{time.perf_counter() - t0:.0f} s, `python benchmarks/bench_attributes.py --seeds {args.seeds} "
            f"--objectives {args.objectives}`\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attributes.md").write_text(text)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

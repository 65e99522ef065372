"""One torchrun launch of 3 ranks that checks every distributed fit against one process.

    python -m torch.distributed.run --standalone --nproc-per-node 3 tests/dist_worker.py OUT.json [--device cuda]

Run by tests/test_train_distributed.py (one launch: the start-up costs most of the time). The
group of 3 ranks and its subgroup of ranks {0, 1} each fit every ALS configuration (implicit and
squared; dot with CG and with Cholesky; cosine) and bce (dot and cosine); rank 0 fits the same
on its own and writes the differences (ALS) and held-out Recall@10 (bce) to OUT.json.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from datetime import timedelta

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch.distributed as dist

from mcrecall.core.config import load_config
from mcrecall.train.distributed import DistContext, follow, init_from_env, model_for_fit, stop_followers, using
from mcrecall.train.evaluate import evaluate
from mcrecall.train.split import holdout_from_hashes, id_hashes
from mcrecall.train.synthetic import make_synthetic

ALS_CONFIGS = [(obj, sim, solver) for obj in ("implicit", "squared")
               for sim, solver in (("dot", "cg"), ("dot", "cholesky"), ("cosine", "cholesky"))]
BCE_CONFIGS = ["dot", "cosine"]
SWEEPS, BCE_EPOCHS = 4, 6
DEVICE = ["cpu"]  # the one-process reference's device: the ranks'


def fit(tc, triples, nu, ni, warm=None):
    m = model_for_fit(tc, triples, nu, ni, device=DEVICE[0])
    m.warm_start(tc.seed, *(warm or (None, None)))
    m.fit(tc.epochs if tc.objective != "bce" else BCE_EPOCHS, log=lambda s: None)
    return m


def leader(groups, out_path):
    base = load_config(environ={}).train
    d = make_synthetic(n_users=500, n_items=300, n_triples=15_000, seed=5)
    tri = (d.user_idx, d.item_idx, d.score)
    nu, ni = len(d.user_ids), len(d.item_ids)
    res = {"als": [], "bce": []}
    for obj, sim, solver in ALS_CONFIGS:
        tc = replace(base, objective=obj, similarity=sim, solver=solver, epochs=SWEEPS, dim=8)
        with using(None):
            ref = fit(tc, tri, nu, ni)
        ru, ri = ref.published()
        for ctx in groups:
            with using(ctx):
                m = fit(tc, tri, nu, ni)
            mu, mi = m.published()
            big = max(np.abs(ru).max(), np.abs(ri).max())
            diff = max(np.abs(mu - ru).max(), np.abs(mi - ri).max())
            res["als"].append({"objective": obj, "similarity": sim, "solver": solver,
                               "world": ctx.world, "max_abs_diff": float(diff), "largest": float(big),
                               "scale": [ref.scale, m.scale]})
    b = make_synthetic(seed=0)  # the bench's synthetic set at its default size
    hu, hi = id_hashes(b.user_ids), id_hashes(b.item_ids)
    test = holdout_from_hashes(b.user_idx, b.item_idx, hu, hi, 0.1)
    tr = (b.user_idx[~test], b.item_idx[~test], b.score[~test])
    te = (b.user_idx[test], b.item_idx[test], b.score[test])
    nu, ni = len(b.user_ids), len(b.item_ids)
    for sim in BCE_CONFIGS:
        tc = replace(base, objective="bce", similarity=sim, dim=16)
        row = {"similarity": sim}
        for ctx in [None] + groups:
            with using(ctx):
                m = fit(tc, tr, nu, ni)
            up, ip = m.published()
            ev = evaluate(up, ip, m.scale, tr, te, user_hash=hu, max_users=2000, baselines=False)
            row[f"recall_{1 if ctx is None else ctx.world}"] = ev["model"]["recall@10"]
        res["bce"].append(row)
    for ctx in groups:
        stop_followers(ctx)
    with open(out_path, "w") as f:
        json.dump(res, f)


def main():
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
    cfg = load_config(environ={}).with_overrides(train={"threads": 1, "dist_timeout_s": 120,
                                                        "device": device})
    ctx3 = init_from_env(cfg)
    DEVICE[0] = str(ctx3.device)
    sub = dist.new_group([0, 1])
    sub_ctl = dist.new_group([0, 1], timeout=timedelta(hours=1))
    groups = [ctx3]
    if ctx3.rank in (0, 1):
        groups.append(DistContext(rank=ctx3.rank, world=2, ranks=[0, 1], device=ctx3.device,
                                  group=sub, ctl=sub_ctl, timeout_s=120))
    if ctx3.leader:
        leader(groups, sys.argv[1])
    else:  # serve the fits in the leader's order: the group of 3's, then the subgroup's
        while any([follow(c) for c in groups]):
            pass
    # the leader need not be torchrun's rank 0 (it is the rank on the store's host): global
    # rank 1 leads the group of 3 in the order 1, 2, 0
    g = ctx3.global_rank
    rot = replace(ctx3, rank=(g - 1) % 3, ranks=[1, 2, 0])
    if rot.leader:
        base = load_config(environ={}).train
        tc = replace(base, objective="implicit", similarity="dot", epochs=SWEEPS, dim=8)
        d = make_synthetic(n_users=500, n_items=300, n_triples=15_000, seed=5)
        tri, nu, ni = (d.user_idx, d.item_idx, d.score), len(d.user_ids), len(d.item_ids)
        with using(None):
            ref = np.vstack(fit(tc, tri, nu, ni).published())
        with using(rot):
            got = np.vstack(fit(tc, tri, nu, ni).published())
        stop_followers(rot)
        with open(sys.argv[1] + ".rotated", "w") as f:
            json.dump({"max_abs_diff": float(np.abs(got - ref).max()), "largest": float(np.abs(ref).max())}, f)
    else:
        while follow(rot):
            pass
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

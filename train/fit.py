"""Fit one model: the step shared by ``mcrecall train``, ``tune``, prequential evaluation and
the library model (:class:`mcrecall.models.MatrixFactorization`).

Light on purpose: it imports torch and the model registry of :mod:`mcrecall.train.objectives`,
not the triple store or the version registry (no LMDB, Kafka or Milvus), so a notebook can fit a
model without the pipeline's storage.
"""

from __future__ import annotations

import os

# Before torch is imported: with the other core busy, OpenMP's default spin-waiting made steps
# 10-65x slower on these 2-core machines (docs/measurements.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time

import numpy as np
import torch

from .attributes import snapshot_tokens
from .distributed import model_for_fit


def resolve_device(name: str) -> str:
    """``[train] device`` as a torch device name: ``auto`` is ``cuda`` where available, else
    ``cpu``; ``cuda[:N]`` without CUDA is a one-line RuntimeError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"[train] device = {name!r} but no CUDA device is available")
    return name


def _log_default(msg: str) -> None:
    print(msg, flush=True)


def fit_model(snap, tc, *, device: str, train_mask: np.ndarray, warm=None,
              log=_log_default, test_mask: np.ndarray | None = None,
              scale: float | None = None):
    """Train ``[train] objective``'s model on the training part of ``snap``.

    Returns (model, history, seconds). ``warm`` = (user_published, item_published, ...) or
    None; NaN rows start at random. ``scale``: a learnt score scale to continue from (a bce
    model's; the ALS objectives recompute theirs).
    """
    u, i, y = snap.user_idx, snap.item_idx, snap.score
    # one process, or every rank of `train --nproc N` / torchrun (train/distributed.py); the
    # hybrid model's tokens (train/attributes.py): None when [train] attributes is off or the
    # snapshot holds none
    model = model_for_fit(tc, (u[train_mask], i[train_mask], y[train_mask]),
                          len(snap.user_ids), len(snap.item_ids), device=device,
                          item_tokens=snapshot_tokens(snap, tc, "item"),
                          user_tokens=snapshot_tokens(snap, tc, "user"))
    model.warm_start(tc.seed, *(warm[:2] if warm else (None, None)), scale=scale)
    if warm and len(warm) > 2 and hasattr(model, "warm_tokens"):  # the hybrid model's tokens
        known = {side: ~np.isnan(w).any(1) for side, w in (("user", warm[0]), ("item", warm[1]))
                 if w is not None}
        model.warm_tokens(warm[2], known)
    on_sweep = None
    if test_mask is not None and test_mask.any():
        dev = torch.device(device)
        eu = torch.from_numpy(u[test_mask].astype(np.int64)).to(dev)
        ei = torch.from_numpy(i[test_mask].astype(np.int64)).to(dev)
        ey = torch.from_numpy(y[test_mask]).to(dev)

        def on_sweep(ep, m):
            with torch.no_grad():
                p = m.predict(eu, ei).clamp(0, 4)
                return {"test_rmse": float(((p - ey) ** 2).mean().sqrt())}
    t0 = time.perf_counter()
    history = model.fit(tc.epochs, log=log, on_sweep=on_sweep)
    return model, history, time.perf_counter() - t0

r"""The ``bce`` objective: classification of "score > 0" with negatives sampled from all items.

Objective
---------
Positives P = training triples with y > 0; for each positive (u, i), ``negatives`` items j are
drawn uniformly from ALL items (the seed's critique: exposed-but-not-clicked pairs are the wrong
negatives), labelled 0:

.. math::

    \min \sum_{(u,i)\in P} \Big[ \ell(z_{ui}, 1) + \sum_{j \sim U(I)} \ell(z_{uj}, 0) \Big]
       + \lambda \sum_{\text{examples } (u,x)} (\lVert a_u\rVert^2 + \lVert b_x\rVert^2)

ℓ(z, t) = softplus(z) − t z (binary cross-entropy on the logit z). Logit:
``dot``: z = a_uᵀ b_i + β_i (item bias folded: user = [a_u, 1], item = [b_i, β_i]);
``cosine``: z = s · cos(a_u, b_i) with a learned scale s (``score_scale``).

Update rule
-----------
Per mini-batch of positives (shuffled each epoch, seeded): gradients of the batch-mean loss on
the gathered rows (autograd on the gathered rows only), summed per distinct row, then a sparse
Adagrad step on those rows only: G_r += g_r², x_r −= lr · g_r / √(G_r + ε). Dense optimisers
update whole tables each step and are slow on large tables (docs/measurements.md).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as Fn

from core.config import TrainConfig
from plugins.metric import pair_scores

from .report import end_epoch
from .warm import overlay_known_rows

_TC = TrainConfig()  # the constructor's defaults are the configuration's


class BCE:
    """SGD trainer for the bce objective (see module docstring)."""

    def __init__(self, user_idx, item_idx, score, n_users, n_items, *,
                 similarity=_TC.similarity, dim=_TC.dim, reg=_TC.reg_bce, lr=_TC.lr,
                 negatives=_TC.negatives, batch_size=_TC.batch_size, device="cpu"):
        """Defaults are ``[train]``'s defaults in core/config.py (one place)."""
        self.similarity, self.dim = similarity, dim
        self.reg, self.lr = float(reg), float(lr)
        self.negatives, self.batch = int(negatives), int(batch_size)
        self.n_users, self.n_items = n_users, n_items
        self.device = torch.device(device)
        self.biased = similarity == "dot"
        self.k = dim + 1 if self.biased else dim
        pos = score > 0
        self.u = torch.from_numpy(user_idx[pos].astype(np.int64)).to(self.device)
        self.i = torch.from_numpy(item_idx[pos].astype(np.int64)).to(self.device)
        self.n = int(pos.sum())
        self.scale = 5.0
        self.mu = 0.0

    def init_factors(self, seed: int, user_init=None, item_init=None):
        self.seed = int(seed)
        g = torch.Generator().manual_seed(self.seed)
        U = torch.randn(self.n_users, self.k, generator=g) * 0.1
        V = torch.randn(self.n_items, self.k, generator=g) * 0.1
        if self.biased:
            U[:, -1] = 1.0  # the constant that multiplies the item bias
            V[:, -1] = 0.0
        overlay_known_rows(U, user_init)
        overlay_known_rows(V, item_init)
        self.U, self.V = U.to(self.device), V.to(self.device)
        self.GU = torch.zeros_like(self.U)
        self.GV = torch.zeros_like(self.V)
        self.gs = 0.0

    def _logits(self, a, b):
        return pair_scores(a, b, self.similarity,
                           self.scale_t if self.similarity == "cosine" else 1.0)

    def _step(self, table, acc, rows, grad_rows):
        uniq, inv = torch.unique(rows, return_inverse=True)
        g = torch.zeros(len(uniq), table.shape[1], device=table.device)
        g.index_add_(0, inv, grad_rows)
        if self.biased and table is self.U:
            g[:, -1] = 0.0  # the user's constant 1 is not a parameter
        acc[uniq] += g * g
        table[uniq] -= self.lr * g / torch.sqrt(acc[uniq] + 1e-10)

    def fit(self, epochs: int, log: Callable[[str], None] = print,
            on_sweep: Callable[[int, "BCE"], dict] | None = None) -> list[dict]:
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
                loss = (data + reg) / len(idx)
                loss.backward()
                with torch.no_grad():
                    self._step(self.U, self.GU, u, a.grad)
                    self._step(self.V, self.GV, torch.cat([i, j.reshape(-1)]),
                               torch.cat([bp.grad, bn.grad.reshape(-1, self.k)]))
                    if self.similarity == "cosine":
                        gsc = float(self.scale_t.grad)
                        self.gs += gsc * gsc
                        step = self.lr * gsc / math.sqrt(self.gs + 1e-10)
                        self.scale = max(0.1, self.scale - step)
                total += float(data.detach())
                seen += len(idx)
            dt = time.perf_counter() - t0
            examples = seen * (1 + self.negatives)
            end_epoch(history, {"epoch": ep, "seconds": dt, "loss": total / max(1, examples)},
                      self, epochs, on_sweep, log, "epoch", examples, "examples")
        return history

    def predict(self, u, i):
        return self._pub_dot(self.U[u], self.V[i])

    def _pub_dot(self, a, b):
        return pair_scores(a, b, self.similarity, self.scale if self.similarity == "cosine" else 1.0)

    def published(self) -> tuple[np.ndarray, np.ndarray]:
        U, V = self.U.float().cpu().numpy(), self.V.float().cpu().numpy()
        if self.similarity == "cosine":
            U = U / np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)
            V = V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)
        return U.astype(np.float32), V.astype(np.float32)

r"""The ``bce`` objective: classification of "score > 0" with negatives sampled from all items.

Objective
---------
Positives P = training triples with y > 0; for each positive (u, i), ``negatives`` items j are
drawn uniformly from ALL items (exposed-but-not-clicked pairs alone are the wrong negatives:
docs/design.md §9), labelled 0:

.. math::

    \min \sum_{(u,i)\in P} \Big[ \ell(z_{ui}, 1) + \sum_{j \sim U(I)} \ell(z_{uj}, 0) \Big]
       + \lambda \sum_{\text{examples } (u,x)} (\lVert a_u\rVert^2 + \lVert b_x\rVert^2)

ℓ(z, t) = softplus(z) − t z (binary cross-entropy on the logit z). Logit:
``dot``: z = a_uᵀ b_i + β_i (item bias folded: user = [a_u, 1], item = [b_i, β_i]);
``cosine``: z = s · cos(a_u, b_i) with a learned scale s (``score_scale``).

Update rule
-----------
Per mini-batch of positives (shuffled each epoch, seeded): gradients of the batch-mean loss on
the gathered rows, summed per distinct row, then a sparse Adagrad step on those rows only:
G_r += g_r², x_r −= lr · g_r / √(G_r + ε). Dense optimisers update whole tables each step and
are slow on large tables (docs/measurements.md).

``dot`` gradients are written out (no autograd): with σ the logistic function and B the batch,

    ∂/∂z_ui = (σ(z_ui) − 1) / B,  ∂/∂z_uj = σ(z_uj) / B
    g_a = Σ_x ∂z_ux b_x + 2λ(1 + negatives) a / B,  g_b = ∂z_ux a + 2λ b / B  (per example)

``cosine`` keeps autograd (the normalisation's gradient). The Adagrad step finds the touched rows
without sorting where the table is small against the batch (``BCE._step``).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as Fn

from mcrecall.core.config import TrainConfig
from mcrecall.plugins.metric import pair_scores

from .foldin import foldin_section
from .objectives import FactorModel
from .report import end_epoch
from .warm import overlay_known_rows

_TC = TrainConfig()  # the constructor's defaults are the configuration's
# the hybrid model: the ID embedding of a row with tokens is penalised this many times reg_bce.
# Measured on the 3000-item synthetic set of benchmarks/bench_attributes.py (seed 0, 10
# epochs): 1 (the totals' L2 only) cold-item Recall@20 0.197, warm Recall@10 0.093; 2: 0.271,
# 0.110; 5: 0.274, 0.110; 11: 0.264, 0.109; 31: 0.255, 0.095 (two-stage mapping 0.232).
BCE_ID_REG_FACTOR = 5.0


class BCE(FactorModel):
    """SGD trainer for the bce objective (see module docstring): the
    :class:`mcrecall.train.objectives.FactorModel` of ``bce``."""

    objective = "bce"

    def __init__(self, user_idx, item_idx, score, n_users, n_items, *,
                 similarity=_TC.similarity, dim=_TC.dim, reg=_TC.reg_bce, lr=_TC.lr,
                 negatives=_TC.negatives, batch_size=_TC.batch_size, device="cpu",
                 item_tokens=None, user_tokens=None):
        """Defaults are ``[train]``'s defaults in core/config.py (one place).

        ``item_tokens`` / ``user_tokens`` (:class:`mcrecall.train.attributes.TokenMatrix`):
        the hybrid model, dot similarity: a row's vector = its ID embedding (rows with
        positives only) + the mean of its tokens' embeddings, the token embeddings stepped by
        the same sparse Adagrad from the gradients of the rows' vectors."""
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
        self._loss = float("nan")
        self._pad: dict = {}
        self.tokens: dict = {}
        if similarity == "dot":
            from .attributes import PaddedTokens

            for side, tm, rows, n in (("item", item_tokens, item_idx[pos], n_items),
                                      ("user", user_tokens, user_idx[pos], n_users)):
                if tm is not None and tm.n_tokens:
                    self.tokens[side] = tm
                    self._pad[side] = PaddedTokens(tm, self.device)
                    has = np.bincount(rows, minlength=n) > 0
                    self._pad[side].has = torch.from_numpy(has).to(self.device)
                    # (n, k) mask of the ID parameters that take BCE_ID_REG_FACTOR
                    tokened = np.repeat(tm.has.astype(np.float32)[:, None], self.k, 1)
                    if side == "user" and self.biased:
                        tokened[:, -1] = 0.0  # the user's constant 1 is no parameter
                    self._pad[side].tokened = torch.from_numpy(tokened).to(self.device)

    @classmethod
    def from_config(cls, tc, triples, n_users, n_items, *, device="cpu", objective=None,
                    item_tokens=None, user_tokens=None):
        if (objective or "bce") != "bce":
            raise ValueError(f"BCE trains the bce objective, not {objective!r}")
        u, i, y = triples
        return cls(u, i, y, n_users, n_items, similarity=tc.similarity, dim=tc.dim,
                   reg=tc.reg_bce, lr=tc.lr, negatives=tc.negatives, batch_size=tc.batch_size,
                   device=device, item_tokens=item_tokens, user_tokens=user_tokens)

    def warm_start(self, seed, user_published=None, item_published=None, scale=None):
        """Published rows are the internal ones (cosine rows are renormalised anyway); the
        learnt scale continues from ``scale`` when given."""
        self.init_factors(seed, user_published, item_published)
        if scale is not None:
            self.scale = float(scale)

    def loss(self) -> dict:
        """Mean binary cross-entropy per example (positive or sampled negative) of the last
        epoch, as it was summed during that epoch (NaN before the first)."""
        return {"loss": self._loss}

    def hyperparameters(self) -> dict:
        return {"reg": self.reg, "alpha": None}

    def foldin_section(self, item_vectors, item_has=None, seed=0) -> dict:
        return foldin_section(item_vectors, objective="bce", similarity=self.similarity,
                              factors=self.dim, reg=self.reg, negatives=self.negatives,
                              mu=self.mu, score_scale=self.scale, item_has=item_has, seed=seed)

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
        self.E, self.GE = {}, {}
        for side, pad in self._pad.items():  # the hybrid model: ID rows only where data is
            X = self.V if side == "item" else self.U
            if side == "item" or not self.biased:
                X[~pad.has] = 0.0
            else:
                X[~pad.has, :-1] = 0.0
            self.E[side] = torch.zeros(pad.n_tokens + 1, self.k, device=self.device)  # + padding row
            self.GE[side] = torch.zeros_like(self.E[side])
        self.GU = torch.zeros_like(self.U)
        self.GV = torch.zeros_like(self.V)
        self.gs = 0.0
        self._bufs: dict = {}  # scratch tables and row marks of _step

    def _logits(self, a, b):
        return pair_scores(a, b, self.similarity,
                           self.scale_t if self.similarity == "cosine" else 1.0)

    def _step(self, table, acc, parts):
        """Sparse Adagrad on the rows in ``parts`` = [(rows, per-example gradients), ...],
        the gradients of a row summed first.

        Rows touched are found by the cheapest exact way for the table's size: a table at most
        4× the batch's rows is updated whole (an untouched row has g = 0 and stays bit-identical);
        up to 64×, rows are marked in a table-sized mask; beyond, sorted (``torch.unique``).
        """
        n = table.shape[0]
        m = sum(len(r) for r, _ in parts)
        if n <= 64 * m:
            scratch = self._scratch(table)
            for rows, grads in parts:
                scratch.index_add_(0, rows, grads)
            if self.biased and table is self.U:
                scratch[:, -1] = 0.0  # the user's constant 1 is not a parameter
            if n <= 4 * m:
                acc.addcmul_(scratch, scratch)
                table.addcdiv_(scratch, (acc + 1e-10).sqrt_(), value=-self.lr)
                scratch.zero_()
                return
            mark = self._marks(n)
            for rows, _ in parts:
                mark[rows] = True
            uniq = mark.nonzero().squeeze(1)
            mark[uniq] = False
            g = scratch.index_select(0, uniq)
            scratch.index_fill_(0, uniq, 0.0)
        else:
            rows = torch.cat([r for r, _ in parts])
            uniq, inv = torch.unique(rows, return_inverse=True)
            g = torch.zeros(len(uniq), table.shape[1], device=table.device)
            g.index_add_(0, inv, torch.cat([x for _, x in parts]))
            if self.biased and table is self.U:
                g[:, -1] = 0.0
        a = acc.index_select(0, uniq).addcmul_(g, g)
        acc.index_copy_(0, uniq, a)
        table.index_copy_(0, uniq, table.index_select(0, uniq).addcdiv_(
            g, a.add_(1e-10).sqrt_(), value=-self.lr))

    def _scratch(self, table):
        """A zero table-shaped buffer (kept zero between steps: only touched rows are reset)."""
        key = "U" if table is self.U else ("V" if table is self.V else id(table))
        buf = self._bufs.get(key)
        if buf is None or buf.shape != table.shape:
            buf = self._bufs[key] = torch.zeros_like(table)
        return buf

    def _marks(self, n):
        m = self._bufs.get(("mark", n))
        if m is None:
            m = self._bufs[("mark", n)] = torch.zeros(n, dtype=torch.bool, device=self.device)
        return m

    def _dot_grads(self, a, bp, bn, batch: int | None = None):
        """Data loss and the written-out gradients of the batch-mean loss (dot logits);
        ``batch``: the whole batch's size when these rows are one rank's slice of it."""
        zp = (a * bp).sum(1)  # (B,)
        zn = (bn * a.unsqueeze(1)).sum(2)  # (B, negatives)
        data = Fn.softplus(-zp).sum() + Fn.softplus(zn).sum()
        inv = 1.0 / (batch or len(a))
        gp = (torch.sigmoid(zp) - 1.0).mul_(inv)
        gn = torch.sigmoid(zn).mul_(inv)
        r2 = 2.0 * self.reg * inv
        ga = (gn.unsqueeze(2) * bn).sum(1).addcmul_(gp.unsqueeze(1), bp)
        ga.add_(a, alpha=r2 * (1 + self.negatives))
        gbp = (gp.unsqueeze(1) * a).add_(bp, alpha=r2)
        gbn = (gn.unsqueeze(2) * a.unsqueeze(1)).add_(bn, alpha=r2)
        return data, ga, gbp, gbn

    def fit(self, epochs: int, log: Callable[[str], None] = print,
            on_sweep: Callable[[int, "BCE"], dict] | None = None) -> list[dict]:
        history = []
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        for ep in range(1, epochs + 1):
            t0 = time.perf_counter()
            perm = torch.randperm(self.n, generator=gen, device=self.device)
            total, seen = 0.0, 0
            pu, pi = self.u[perm], self.i[perm]  # one gather an epoch; batches are slices
            for s in range(0, self.n, self.batch):
                u, i = pu[s:s + self.batch], pi[s:s + self.batch]
                B = len(u)
                j = torch.randint(0, self.n_items, (B * self.negatives,), generator=gen,
                                  device=self.device)
                a = self.U.index_select(0, u)
                bp = self.V.index_select(0, i)
                bn = self.V.index_select(0, j).view(B, self.negatives, self.k)
                ids = (a, bp, bn)  # the ID rows (the hybrid model's penalty acts on them)
                if self._pad:
                    a, bp, bn = self._with_parts(u, i, j, a, bp, bn)
                if self.similarity == "cosine":
                    data, ga, gbp, gbn = self._autograd_grads(a, bp, bn)
                else:
                    data, ga, gbp, gbn = self._dot_grads(a, bp, bn)
                with torch.no_grad():
                    gbn = gbn.reshape(-1, self.k)
                    if self._pad:
                        self._step_tokens(u, i, j, ga, gbp, gbn)
                        ga, gbp, gbn = self._id_grads(u, i, j, ga, gbp, gbn, *ids)
                    self._step(self.U, self.GU, [(u, ga)])
                    self._step(self.V, self.GV, [(i, gbp), (j, gbn)])
                total += float(data)
                seen += B
            dt = time.perf_counter() - t0
            examples = seen * (1 + self.negatives)
            self._loss = total / max(1, examples)
            end_epoch(history, {"epoch": ep, "seconds": dt, "loss": self._loss},
                      self, epochs, on_sweep, log, "epoch", examples, "examples")
        return history

    def _with_parts(self, u, i, j, a, bp, bn):
        """The batch's total vectors: ID rows + attribute parts (train/attributes.py)."""
        if "user" in self._pad:
            a = a + self._parts_of("user", u)
        if "item" in self._pad:
            bp = bp + self._parts_of("item", i)
            bn = bn + self._parts_of("item", j).view(bn.shape)
        return a, bp, bn

    def _parts_of(self, side: str, rows):
        """Attribute parts of ``rows`` (gathered per row: computing A E of the whole table
        each step was slower on CPU, even for a table 4x smaller than the batch)."""
        return self._pad[side].parts(rows, self.E[side])

    def _step_tokens(self, u, i, j, ga, gbp, gbn):
        """Adagrad on the token embeddings from the gradients of the rows' total vectors:
        summed per row first (few rows, many examples), then g_E = Aᵀ g_rows (one sparse
        product; scattering every example to its tokens was 4x slower on CPU)."""
        for side, parts in (("user", [(u, ga)]), ("item", [(i, gbp), (j, gbn)])):
            if side not in self._pad:
                continue
            p = self._pad[side]
            X = self.U if side == "user" else self.V
            if not hasattr(p, "At"):
                p.At = self.tokens[side].torch_matrix(self.device).to_sparse_coo().t().coalesce()
                p.rows = torch.zeros(X.shape[0], self.k, device=self.device)
                p.all_tokens = torch.arange(p.n_tokens, device=self.device)
            for rows, g in parts:
                p.rows.index_add_(0, rows, g)
            gE = p.At @ p.rows
            for rows, _ in parts:
                p.rows.index_fill_(0, rows, 0.0)
            if side == "user" and self.biased:
                gE[:, -1] = 0.0  # the user's constant 1 stays the ID part's
            self._step(self.E[side], self.GE[side], [(p.all_tokens, gE[:p.n_tokens])])

    def _id_grads(self, u, i, j, ga, gbp, gbn, a0, bp0, bn0):
        """Rows without positives have no ID embedding: their rows' gradients are dropped; the
        ID embedding of a row with tokens is penalised ``BCE_ID_REG_FACTOR`` × ``reg`` (its
        attribute part then carries more of the affinity)."""
        r2 = 2.0 * self.reg * (BCE_ID_REG_FACTOR - 1.0) / len(u)
        if "user" in self._pad:
            p = self._pad["user"]
            ga = ga + (r2 * (1 + self.negatives)) * a0 * p.tokened[u]
        if "item" in self._pad:
            p = self._pad["item"]
            gbp = gbp + r2 * bp0 * p.tokened[i]
            gbn = gbn + r2 * bn0.reshape(-1, self.k) * p.tokened[j]
        if "user" in self._pad:
            ga = ga * self._pad["user"].has[u].unsqueeze(1)
        if "item" in self._pad:
            has = self._pad["item"].has
            gbp = gbp * has[i].unsqueeze(1)
            gbn = gbn * has[j].unsqueeze(1)
        return ga, gbp, gbn

    def warm_tokens(self, tables: dict, known: dict | None = None) -> None:
        """Continue from ``tables`` (:meth:`token_tables` of the model warm-started from): its
        token embeddings, and the warm rows' ID parts = their totals − the attribute parts
        (``known[side]``: bool rows that were warm-started; default all)."""
        for side, pad in self._pad.items():
            if side not in tables:
                continue
            vocab, emb = tables[side]
            at = {t: r for r, t in enumerate(vocab)}
            E = torch.zeros_like(self.E[side])
            for r, t in enumerate(self.tokens[side].vocab):
                if t in at:
                    E[r] = torch.from_numpy(np.ascontiguousarray(emb[at[t]])).to(E)
            self.E[side] = E
            X = self.V if side == "item" else self.U
            rows = torch.arange(X.shape[0], device=self.device)
            k = None if known is None else known.get(side)
            if k is None:
                X -= pad.parts(rows, E)
            else:
                kr = torch.from_numpy(np.flatnonzero(k)).to(self.device)
                X[kr] -= pad.parts(kr, E)
            if side == "item" or not self.biased:
                X[~pad.has] = 0.0
            else:
                X[~pad.has, :-1] = 0.0

    def token_tables(self) -> dict:
        """``{side: (vocab, E)}`` in the published space (dot: the internal one)."""
        return {side: (tm.vocab, self.E[side][:-1].float().cpu().numpy()) for side, tm in self.tokens.items()}

    def _autograd_grads(self, a, bp, bn):
        """Data loss and gradients by autograd (cosine logits); also steps the scale s."""
        a, bp, bn = (x.requires_grad_(True) for x in (a, bp, bn))
        self.scale_t = torch.tensor(self.scale, device=self.device, requires_grad=True)
        zp = self._logits(a, bp)
        zn = self._logits(a.unsqueeze(1), bn)
        data = Fn.softplus(-zp).sum() + Fn.softplus(zn).sum()
        reg = self.reg * ((1 + self.negatives) * (a * a).sum() + (bp * bp).sum()
                          + (bn * bn).sum())
        ((data + reg) / len(a)).backward()
        if self.similarity == "cosine":
            gsc = float(self.scale_t.grad)
            self.gs += gsc * gsc
            self.scale = max(0.1, self.scale - self.lr * gsc / math.sqrt(self.gs + 1e-10))
        return data.detach(), a.grad, bp.grad, bn.grad

    def predict(self, u, i):
        if self._pad:
            a, b, _ = self._with_parts(u, i, i[:0], self.U[u], self.V[i], self.V[i[:0]].view(0, 1, self.k))
            return self._pub_dot(a, b)
        return self._pub_dot(self.U[u], self.V[i])

    def _pub_dot(self, a, b):
        return pair_scores(a, b, self.similarity, self.scale if self.similarity == "cosine" else 1.0)

    def published(self) -> tuple[np.ndarray, np.ndarray]:
        U, V = self.U, self.V
        for side, pad in self._pad.items():  # total vectors: ID rows + attribute parts
            rows = torch.arange(pad.tok.shape[0], device=self.device)
            if side == "item":
                V = V + pad.parts(rows, self.E["item"])
            else:
                U = U + pad.parts(rows, self.E["user"])
        U, V = U.float().cpu().numpy(), V.float().cpu().numpy()
        if self.similarity == "cosine":
            U = U / np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)
            V = V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)
        return U.astype(np.float32), V.astype(np.float32)

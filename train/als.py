r"""Alternating least squares for the ``squared`` and ``implicit`` objectives.

Objectives
----------
``squared`` (the original matrix-completion objective: squared error on observed scores,
docs/design.md §9; biases folded into the vectors), dot similarity:

.. math::

    \min_{A,B,c,\beta} \sum_{(u,i,y)\in\Omega} (y - \mu - c_u - \beta_i - a_u^\top b_i)^2
      + \lambda \Big( \sum_u n_u (\lVert a_u\rVert^2 + c_u^2)
                    + \sum_i n_i (\lVert b_i\rVert^2 + \beta_i^2) \Big)

μ is the training mean (fixed), n_u / n_i the number of training triples of the row
("weighted-λ" L2, Zhou et al. 2008: one λ suits sparse and dense rows alike). The biases fold
into the published vectors exactly: ``user = [a_u, 1, μ + c_u]``, ``item = [b_i, β_i, 1]``, so
⟨user, item⟩ is the prediction and nearest-neighbour search stays exact.

``implicit`` (weighted matrix factorisation over ALL user×item cells, Hu, Koren & Volinsky 2008):

.. math::

    \min_{A,B} \sum_{u,i} c_{ui} (p_{ui} - a_u^\top b_i)^2
      + \lambda \Big( \sum_u w_u \lVert a_u\rVert^2 + \sum_i w_i \lVert b_i\rVert^2 \Big)

p_ui = 1 if y_ui > 0 else 0; c_ui = 1 + α y_ui (unobserved and score-0 cells: c = 1, p = 0, so
negatives are all items, not only the exposed ones); w_u = Σ_i (c_ui - 1) + 1 (weighted-λ again).

``similarity = cosine`` (either objective): predictions are s · cos(a_u, b_i) with a learned
scale s; rows live on the unit sphere and biases are not used (they do not survive
normalisation).

Update rule
-----------
Each sweep solves every item row with the users fixed, then every user row with the items fixed
(users last, so the published user vectors are the solutions for the published items;
``foldin.fold_in`` solves the same system exactly). For a row r with fixed other-side features f_j:

    H_r = Σ_j w_rj f_j f_jᵀ (+ G = FᵀF for ``implicit``),   g_r = Σ_j t_rj f_j
    dot, solver "cg":        x_r ← ``cg_steps`` conjugate-gradient steps on (H_r + λ_r I) x = g_r
                             from the previous x_r (train/cg.py; the default: ~4–7× faster a sweep)
    dot, solver "cholesky":  x_r = (H_r + λ_r I)⁻¹ g_r         (exact, batched Cholesky)
    cosine:  x_r = argmin_{‖x‖=1} xᵀ H_r x − 2 g_rᵀ x          (eigen-decomposition + secular
                                                                 equation, exact, either solver)

With ``cholesky`` the stored user vectors are exactly what ``fold_in`` computes; with ``cg`` they
differ from it by the last sweep's CG residual (tests/test_train_solver.py bounds it).

squared: w = 1, t = y − μ − (other side's bias) (dot) or s·y (cosine, H scaled by s²);
implicit: w = α y, t = 1 + α y over positive triples only (the all-cells part is G).
Between the two half-sweeps the cosine scale is refit in closed form:
s = Σ c·t / Σ c² (weighted).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from mcrecall.core.config import TrainConfig
from mcrecall.plugins.metric import pair_scores

from .attributes import ID_REG_FACTOR, TokenMatrix, TokenSolver
from .buckets import Chunk, build_chunks
from .cg import CSRSide, cg_half_sweep
from .foldin import foldin_section
from .objectives import FactorModel
from .report import end_epoch
from .warm import overlay_known_rows

_TC = TrainConfig()  # the constructors' defaults are the configuration's


def _sphere_solve(H: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """argmin over unit x of xᵀHx − 2gᵀx, batched (the trust-region subproblem on the sphere).

    With H = QΛQᵀ, x = Q (Λ − μ)⁻¹ Qᵀ g for the μ < λ_min that makes ‖x‖ = 1
    (Moré & Sorensen 1983); in the "hard case" (g ⟂ the bottom eigenvector) the rest of the unit
    norm goes along that eigenvector.
    """
    Hd = H.double()
    lam, Q = torch.linalg.eigh(Hd)
    gt = torch.einsum("rkj,rk->rj", Q, g.double())  # Qᵀ g
    gap = lam - lam[:, :1]  # ≥ 0
    gsq = gt * gt
    lo = torch.full_like(lam[:, 0], 1e-12)
    hi = torch.sqrt(gsq.sum(1)).clamp_min(1e-12) + 1e-12  # at t = ‖g‖, ‖x‖ ≤ 1
    for _ in range(60):  # bisection in log space on t = λ_min − μ > 0
        mid = torch.sqrt(lo * hi)
        norm2 = (gsq / (gap + mid[:, None]) ** 2).sum(1)
        big = norm2 > 1.0
        lo = torch.where(big, mid, lo)
        hi = torch.where(big, hi, mid)
    t = hi
    xt = gt / (gap + t[:, None])
    n2 = (xt * xt).sum(1)
    hard = n2 < 1.0 - 1e-6
    if bool(hard.any()):
        extra = torch.sqrt((1.0 - n2).clamp_min(0.0))
        xt[:, 0] = torch.where(hard, xt[:, 0] + extra * torch.sign(xt[:, 0] + 1e-30), xt[:, 0])
    x = torch.einsum("rkj,rj->rk", Q, xt)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return x.to(H.dtype)


def _ridge_solve(H: torch.Tensor, g: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    k = H.shape[-1]
    eye = torch.eye(k, dtype=H.dtype, device=H.device)
    A = H + lam[:, None, None] * eye
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()):  # numerically singular rows: fall back to a general solve
        return torch.linalg.solve(A, g)
    return torch.cholesky_solve(g.unsqueeze(-1), L).squeeze(-1)


class ALS(FactorModel):
    """One ALS problem (fixed data, objective and hyper-parameters): the
    :class:`mcrecall.train.objectives.FactorModel` of ``squared`` and ``implicit``.

    Parameters
    ----------
    user_idx, item_idx, score : training triples (dense indices, scores 0..4).
    n_users, n_items : table sizes (rows without training triples get the zero vector).
    objective : ``"squared"`` or ``"implicit"``.
    similarity : ``"dot"`` or ``"cosine"``.
    dim, reg, alpha : factor dimension, λ, confidence weight α (implicit).
    solver : ``"cg"`` (``cg_steps`` warm-started conjugate-gradient steps per row and half-sweep)
        or ``"cholesky"`` (exact per-row solve); cosine rows are always solved exactly.
    device : torch device.
    item_tokens, user_tokens : :class:`mcrecall.train.attributes.TokenMatrix` of the items /
        users (or None): the hybrid model, a row = its ID embedding + the mean of its tokens'
        embeddings, learned by alternating the row solves with the closed-form token step
        (train/attributes.py). Dot similarity only (cosine rows live on the sphere: ignored).

    Defaults are ``[train]``'s defaults in core/config.py (one place); ``objective`` has none.
    """

    def __init__(self, user_idx, item_idx, score, n_users, n_items, *, objective,
                 similarity=_TC.similarity, dim=_TC.dim, reg=_TC.reg, alpha=_TC.alpha,
                 solver=_TC.solver, cg_steps=_TC.cg_steps, device="cpu", budget=None,
                 item_tokens: TokenMatrix | None = None, user_tokens: TokenMatrix | None = None,
                 sides=("user", "item")):
        # sides: the half-sweeps this object runs (a rank of train/distributed.py solves one
        # side of its own shard per object, so it lays out only that side's entries)
        if solver not in ("cg", "cholesky"):
            raise ValueError(f"solver must be cg or cholesky, got {solver!r}")
        if int(cg_steps) < 1:
            raise ValueError(f"cg_steps must be at least 1, got {cg_steps!r}")
        self.objective, self.similarity = objective, similarity
        self.solver, self.cg_steps = solver, int(cg_steps)
        self.dim, self.reg, self.alpha = dim, float(reg), float(alpha)
        self.n_users, self.n_items = n_users, n_items
        self.device = torch.device(device)
        self.biased = objective == "squared" and similarity == "dot"
        self.k = dim + 1 if self.biased else dim
        if budget is None:
            budget = (1 << 24) if self.device.type == "cuda" else (1 << 21)
        if objective == "implicit":  # only positive cells carry information beyond G
            keep = score > 0
            user_idx, item_idx, score = user_idx[keep], item_idx[keep], score[keep]
        self.mu = float(score.mean()) if (self.biased and len(score)) else 0.0
        self.n = len(score)
        self.u = torch.from_numpy(np.ascontiguousarray(user_idx, dtype=np.int64)).to(self.device)
        self.i = torch.from_numpy(np.ascontiguousarray(item_idx, dtype=np.int64)).to(self.device)
        self.y = torch.from_numpy(np.ascontiguousarray(score, dtype=np.float32)).to(self.device)
        self._budget = budget
        self._chunks: dict[str, list[Chunk]] = {}  # padded layouts of the exact solver, on demand
        self.use_cg = solver == "cg" and similarity == "dot"
        self._csr: dict[str, CSRSide] = {}
        self._cg_fixed: dict[str, tuple] = {}  # side -> (y, w, λ_r) in the CSR entry order
        if self.use_cg:
            if "user" in sides:
                self._csr["user"] = CSRSide.build(user_idx, item_idx, n_users, n_items, self.device)
            if "item" in sides:
                self._csr["item"] = CSRSide.build(item_idx, user_idx, n_items, n_users, self.device)
            for side in sides:
                self._cg_values(side)
        self.scale = 1.0
        self._init_tokens(item_tokens, user_tokens, user_idx, item_idx, score)

    def _init_tokens(self, item_tokens, user_tokens, user_idx, item_idx, score):
        """The attribute part's fixed data: A (row-normalised tokens), λ_r per row (0 for rows
        without triples: they do not enter the token step), λ_E, and E = 0."""
        self.tokens: dict[str, TokenMatrix] = {}
        self._A, self.E, self._lam_rows, self._lam_e = {}, {}, {}, {}
        self._token_solver: dict = {}
        self._lam_scale: dict = {}  # side -> (n_rows,) ID_REG_FACTOR on rows with tokens, else 1
        if self.similarity != "dot":
            return
        for side, tm, rows, n in (("item", item_tokens, item_idx, self.n_items),
                                  ("user", user_tokens, user_idx, self.n_users)):
            if tm is None or tm.n_tokens == 0:
                continue
            if tm.n_rows != n:
                raise ValueError(f"{side}_tokens has {tm.n_rows} rows, the model {n} {side}s")
            w = (self.alpha * score) if self.objective == "implicit" else np.ones(len(score))
            wsum = np.bincount(rows, weights=w, minlength=n)
            cnt = np.bincount(rows, minlength=n)
            lam = np.where(cnt > 0, self.reg * ((wsum + 1.0) if self.objective == "implicit" else cnt), 0.0)
            self.tokens[side] = tm
            self._A[side] = tm.torch_matrix(self.device)
            self._lam_rows[side] = torch.from_numpy(lam.astype(np.float32)).to(self.device)
            self._lam_e[side] = float(lam[cnt > 0].mean()) if (cnt > 0).any() else self.reg
            self.E[side] = torch.zeros(tm.n_tokens, self.k, device=self.device)
            self._lam_scale[side] = torch.from_numpy(
                np.where(tm.has, ID_REG_FACTOR, 1.0).astype(np.float32)).to(self.device)
            self._cold_rows = getattr(self, "_cold_rows", {})
            self._cold_rows[side] = torch.from_numpy((cnt == 0) & tm.has).to(self.device)

    def _gram(self, feat: torch.Tensor, other: str) -> torch.Tensor:
        """G = FᵀF of the implicit objective's all-cells term. Users that are their attribute
        part alone (no interactions) are left out: the version stores no vector for them, so
        refresh's user Gram (train/refresh.py) has none either. Items of attributes alone stay
        in (they are published: serve's fold-in Gram holds them)."""
        cold = getattr(self, "_cold_rows", {}).get(other) if other == "user" else None
        if cold is None or not bool(cold.any()):
            return feat.T @ feat
        f = feat[~cold]
        return f.T @ f

    def _prior(self, side: str):
        """(n_rows, k) attribute parts A E of ``side`` (None without attributes)."""
        if side not in self._A:
            return None
        return self._A[side] @ self.E[side]

    def _token_step(self, side: str) -> None:
        """Closed-form token embeddings for the rows just solved; rows without triples then take
        their new attribute part."""
        if side not in self._A:
            return
        X = self.V if side == "item" else self.U
        # every row with triples weighs the same (λ̄ = the mean λ_r) in the token step: weighted
        # by its confidence λ_r, the attribute parts fitted the popular items and cold-item
        # Recall@20 fell (0.27 against 0.32 on the synthetic set of tests/test_attributes_model.py)
        if side not in self._token_solver:
            lam = (self._lam_rows[side] > 0).float() * self._lam_e[side]
            self._token_solver[side] = TokenSolver(self._A[side], lam, self._lam_e[side])
        self.E[side] = self._token_solver[side](X, self.E[side])
        cold = self._cold_rows[side]
        if bool(cold.any()):
            X[cold] = self._prior(side)[cold]

    def token_tables(self) -> dict:
        """``{side: (vocab, E)}``: the learned token embeddings, in the published space, of each
        side with attributes. ``squared`` (biases folded into extra columns) has none to
        publish: its attribute parts live in the internal space (refresh cannot add them)."""
        if self.biased:
            return {}
        return {side: (tm.vocab, self.E[side].float().cpu().numpy()) for side, tm in self.tokens.items()}

    @classmethod
    def from_config(cls, tc, triples, n_users, n_items, *, device="cpu", objective=None,
                    item_tokens=None, user_tokens=None):
        u, i, y = triples
        return cls(u, i, y, n_users, n_items, objective=objective or tc.objective,
                   similarity=tc.similarity, dim=tc.dim, reg=tc.reg, alpha=tc.alpha,
                   solver=tc.solver, cg_steps=tc.cg_steps, device=device,
                   item_tokens=item_tokens, user_tokens=user_tokens)

    def internal_rows(self, user, item):
        return self.internal_from_published(user, item, self.objective, self.similarity,
                                            self.dim, self.mu)

    def hyperparameters(self) -> dict:
        return {"reg": self.reg, "alpha": self.alpha if self.objective == "implicit" else None}

    def foldin_section(self, item_vectors, item_has=None, seed=0) -> dict:
        return foldin_section(item_vectors, objective=self.objective, similarity=self.similarity,
                              factors=self.dim, reg=self.reg, alpha=self.alpha, mu=self.mu,
                              score_scale=self.scale, item_has=item_has, seed=seed)

    def _cg_values(self, side: str):
        """Entry values in the side's CSR order that stay the same every sweep:
        implicit (w = αy, λ_r), squared (y, λ_r); the entry order is then no longer kept."""
        csr = self._csr[side]
        y = self.y[csr.ent]
        if self.objective == "implicit":
            rows = self.u if side == "user" else self.i
            wsum = torch.zeros_like(csr.count).index_add_(0, rows, self.alpha * self.y)
            self._cg_fixed[side] = (None, self.alpha * y, self.reg * (wsum + 1.0))
        else:
            self._cg_fixed[side] = (y, None, self.reg * csr.count)
        csr.ent = None  # 8 bytes an entry, not needed again

    @property
    def user_chunks(self) -> list[Chunk]:
        """Padded layout of the users' rows for the exact solver (built on first use)."""
        return self._chunked("user")

    @property
    def item_chunks(self) -> list[Chunk]:
        return self._chunked("item")

    def _chunked(self, side: str) -> list[Chunk]:
        if side not in self._chunks:
            u, i = self.u.cpu().numpy(), self.i.cpu().numpy()
            rows, cols, n = (u, i, self.n_users) if side == "user" else (i, u, self.n_items)
            self._chunks[side] = build_chunks(rows, cols, n, self.k, self.device, self._budget)
        return self._chunks[side]

    # -- initialisation -------------------------------------------------------------------------
    def init_factors(self, seed: int, user_init=None, item_init=None):
        """Random N(0, 0.5²/k) rows, replaced by warm-start rows where given (NaN = unknown)."""
        g = torch.Generator().manual_seed(int(seed))
        U = torch.randn(self.n_users, self.k, generator=g) * (0.5 / math.sqrt(self.k))
        V = torch.randn(self.n_items, self.k, generator=g) * (0.5 / math.sqrt(self.k))
        overlay_known_rows(U, user_init)
        overlay_known_rows(V, item_init)
        if self.similarity == "cosine":
            U = U / U.norm(dim=1, keepdim=True).clamp_min(1e-12)
            V = V / V.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.U, self.V = U.to(self.device), V.to(self.device)
        if self.similarity == "cosine":
            self.scale = self._initial_scale()

    def _initial_scale(self) -> float:
        """Cosine's starting score scale (squared: the largest training score)."""
        return 1.0 if self.objective == "implicit" else max(1.0, float(self.y.max()))

    # -- one half-sweep -------------------------------------------------------------------------
    def _solve_side(self, chunks: list[Chunk], X: torch.Tensor, F: torch.Tensor,
                    other_idx: torch.Tensor, track: bool = False, prior: torch.Tensor | None = None,
                    lam_scale: torch.Tensor | None = None):
        """Solve all rows of X (in place) with the other side's factors F fixed.

        With ``track``, also record the data term of the objective at the solution, from the
        normal equations (no pass over the triples): per row xᵀHx − 2xᵀg + Σ_j t_j²
        (squared; Σ_j t_j for implicit, whose targets are p = 1 with weight t = 1 + αy).
        """
        biased, cos, imp = self.biased, self.similarity == "cosine", self.objective == "implicit"
        if biased:
            feat = torch.cat([F[:, :-1], torch.ones_like(F[:, :1])], 1)
            offset = F[:, -1]
        else:
            feat, offset = F, None
        gram = self._gram(feat, "item" if F is self.V else "user") if imp else None
        s = self.scale
        X.zero_()  # rows without triples: the minimiser of the regulariser alone
        if prior is not None:  # ... which is the attribute part (train/attributes.py)
            X.copy_(prior)
        data = torch.zeros((), dtype=torch.float64, device=X.device)
        for ch in chunks:
            Xf = feat[ch.cols]  # (R, L, k)
            y = self.y[ch.ent] * ch.mask
            if imp:
                w = self.alpha * y
                t = ch.mask + w
            else:
                w = ch.mask
                t = (y - ch.mask * (self.mu + offset[ch.cols])) if biased else y
            H = torch.bmm((Xf * w.unsqueeze(-1)).transpose(1, 2), Xf)
            g = torch.bmm(Xf.transpose(1, 2), t.unsqueeze(-1)).squeeze(-1)
            if imp:
                H = H + gram
            if cos:
                H, g = H * (s * s), g * s
                x = _sphere_solve(H, g)
            else:
                lam = self.reg * ((w.sum(1) + 1.0) if imp else ch.count)
                if lam_scale is not None:
                    lam = lam * lam_scale[ch.rows]
                gp = g if prior is None else g + lam[:, None] * prior[ch.rows]
                x = _ridge_solve(H, gp, lam)
            X[ch.rows] = x
            if track:
                const = t.sum(1) if imp else (t * t).sum(1)  # t is 0 on padding
                quad = torch.einsum("rk,rkj,rj->r", x, H, x)
                data += (quad - 2 * (x * g).sum(1) + const).double().sum()
        if track:  # rows without triples have x = 0: they add nothing
            self._data = float(data)

    def _cg_side(self, side: str, X: torch.Tensor, F: torch.Tensor, track: bool = False,
                 prior: torch.Tensor | None = None):
        """Like :meth:`_solve_side` (dot similarity), by ``cg_steps`` CG steps per row from the
        current X (train/cg.py) instead of the exact solve; X keeps its rows' values as the start.
        """
        csr = self._csr[side]
        imp = self.objective == "implicit"
        if self.biased:
            feat = torch.cat([F[:, :-1], torch.ones_like(F[:, :1])], 1)
            offset = F[:, -1]
        else:
            feat, offset = F, None
        y, w, lam = self._cg_fixed[side]
        if side in self._lam_scale:
            lam = lam * self._lam_scale[side]
        if imp:
            t = 1.0 + w
        else:
            t = (y - (self.mu + offset[csr.col])) if self.biased else y
        gram = self._gram(feat, "item" if side == "user" else "user") if imp else None
        data = cg_half_sweep(csr, X, feat, w, t, lam, gram, self.cg_steps, track=track, prior=prior)
        if track:
            self._data = data + float((t.sum() if imp else (t * t).sum()).double())

    def _half_sweep(self, side: str, track: bool = False):
        """Solve one side's rows with the other side fixed, by the configured solver."""
        X, F = (self.U, self.V) if side == "user" else (self.V, self.U)
        prior = self._prior(side)
        if self.use_cg:
            self._cg_side(side, X, F, track=track, prior=prior)
        elif side == "user":
            self._solve_side(self.user_chunks, X, F, self.i, track=track, prior=prior,
                             lam_scale=self._lam_scale.get(side))
        else:
            self._solve_side(self.item_chunks, X, F, self.u, track=track, prior=prior,
                             lam_scale=self._lam_scale.get(side))

    def predict(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Model prediction for pairs (internal factors)."""
        if self.biased:
            d = self.dim
            return (self.mu + self.U[u, d] + self.V[i, d]
                    + (self.U[u, :d] * self.V[i, :d]).sum(1))
        return pair_scores(self.U[u], self.V[i], "dot", self.scale)  # cosine rows are unit

    def _refit_scale(self):
        """Closed-form scale s for cosine: s = Σ t c / Σ w c² over the objective's cells."""
        self._set_scale(*self._scale_sums(self.u, self.i, self.y))

    def _scale_sums(self, u, i, y) -> tuple[float, float]:
        """(Σ t c, Σ w c² over the triples) of the scale's fit for triples (u, i, y), summed in
        float64: a sum over row blocks (train/distributed.py) then gives the same s as one
        process to the last float32 bit (a rounding flip in s flips near-degenerate rows)."""
        c = (self.U[u] * self.V[i]).sum(1)
        if self.objective == "implicit":
            a = self.alpha * y
            return float(((1.0 + a) * c).double().sum()), float((a * c * c).double().sum())
        return float((y * c).double().sum()), float((c * c).double().sum())

    def _set_scale(self, num: float, part: float) -> None:
        den = part
        if self.objective == "implicit":  # the all-cells term
            den += float(torch.trace((self.U.T @ self.U) @ (self.V.T @ self.V)).double())
        if den > 0:
            self.scale = max(1e-3, num / den)

    def loss(self, exact: bool = False) -> dict:
        """Data term of the objective per training triple (and training RMSE for squared).

        By default the value recorded by the last user half-sweep (free); ``exact`` recomputes
        it from the triples: squared Σ (y − ŷ)²; implicit Σ_all c (p − x)² =
        s² tr(UᵀU VᵀV) + Σ_pos [(1 + αy)(1 − x)² − x²].
        """
        if exact or not hasattr(self, "_data"):
            p = self.predict(self.u, self.i)
            if self.objective == "implicit":
                all_sq = torch.trace((self.U.T @ self.U) @ (self.V.T @ self.V)) * self.scale ** 2
                data = float(all_sq + ((1 + self.alpha * self.y) * (1 - p) ** 2 - p * p).sum())
            else:
                data = float(((self.y - p) ** 2).sum())
        else:
            data = self._data
        n = max(1, self.n)
        rmse = float("nan") if self.objective == "implicit" else math.sqrt(max(data, 0.0) / n)
        return {"loss": data / n, "train_rmse": rmse}

    def fit(self, epochs: int, log: Callable[[str], None] = print,
            on_sweep: Callable[[int, "ALS"], dict] | None = None) -> list[dict]:
        history = []
        for ep in range(1, epochs + 1):
            t0 = time.perf_counter()
            self._half_sweep("item")
            self._token_step("item")
            if self.similarity == "cosine":  # before the users: they are solved for the final s
                self._refit_scale()
            self._half_sweep("user", track=True)
            self._token_step("user")
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            end_epoch(history, {"epoch": ep, "seconds": dt, **self.loss()}, self, epochs, on_sweep,
                      log, "sweep", self.n, "triples")
        return history

    # -- publication form -----------------------------------------------------------------------
    def published(self) -> tuple[np.ndarray, np.ndarray]:
        """Vectors whose inner product (× score_scale) is the prediction."""
        U, V = self.U.float().cpu().numpy(), self.V.float().cpu().numpy()
        if self.biased:
            d = self.dim
            ones_u = np.ones((len(U), 1), np.float32)
            ones_v = np.ones((len(V), 1), np.float32)
            user = np.hstack([U[:, :d], ones_u, (self.mu + U[:, d:])]).astype(np.float32)
            item = np.hstack([V[:, :d], V[:, d:], ones_v]).astype(np.float32)
            return user, item
        return U.astype(np.float32), V.astype(np.float32)

    @staticmethod
    def internal_from_published(user, item, objective, similarity, dim, mu):
        """Invert :meth:`published` (for warm start); rows may be NaN."""
        if objective == "squared" and similarity == "dot":
            u = None if user is None else np.hstack([user[:, :dim], user[:, dim + 1:] - mu])
            v = None if item is None else item[:, :dim + 1]
            return u, v
        return user, item

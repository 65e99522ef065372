r"""Conjugate-gradient half-sweeps for ALS: a few CG steps per row, warm-started, batched over rows.

The system
----------
A half-sweep of :mod:`mcrecall.train.als` solves, for every row r (a user, or an item) with the other
side's features f_j fixed, the ridge system

.. math::

    (G + \sum_{j\in\Omega_r} w_{rj} f_j f_j^\top + \lambda_r I)\, x_r = \sum_{j\in\Omega_r} t_{rj} f_j

``implicit``: G = FᵀF (the all-cells term), w = α y, t = 1 + α y over positive triples,
λ_r = λ (Σ_j w_rj + 1); ``squared`` (dot): G = 0, w = 1, t = y − μ − (other side's bias),
λ_r = λ n_r. Hu, Koren & Volinsky's trick keeps the all-cells objective linear in the positives:
A_r p = G p + Σ_j w_rj (f_jᵀ p) f_j + λ_r p never forms a k × k matrix.

Update rule
-----------
Instead of the exact solve (O(n_r k²) to build A_r, O(k³) to factor it), each row takes
``steps`` conjugate-gradient steps from its current value x⁰ (the previous sweep's, so the
iterate keeps improving from sweep to sweep; Takács, Pilászy & Tikk 2011, the method of the
``implicit`` library):

    r⁰ = b − A x⁰,  p⁰ = r⁰
    repeat ``steps`` times:  a = ‖r‖² / pᵀAp,  x ← x + a p,  r' = r − a Ap,
                             p ← r' + (‖r'‖² / ‖r‖²) p,  r ← r'

All rows move together: f_jᵀ p over the entries is one sampled dense-dense product
(``torch.sparse.sampled_addmm``) and Σ_j (·) f_j one sparse × dense product, both on a CSR
matrix of the side's entries, so a step costs O(nnz k) with no per-row Python loop and no padded
copy of the features. Rows without entries are 0 (the minimiser of the regulariser alone).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class CSRSide:
    """The entries of one side in row-major order, as a CSR pattern."""

    crow: torch.Tensor  # (n_rows + 1,) row starts
    col: torch.Tensor  # (nnz,) other side's index of each entry
    ent: torch.Tensor | None  # (nnz,) index of each entry in the triple arrays (may be freed)
    count: torch.Tensor  # (n_rows,) float number of entries per row
    n_cols: int

    @classmethod
    def build(cls, rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int,
              device) -> "CSRSide":
        order = np.argsort(rows, kind="stable")
        counts = np.bincount(rows, minlength=n_rows)
        crow = np.zeros(n_rows + 1, np.int64)
        np.cumsum(counts, out=crow[1:])
        # int64 indices: torch's CPU sampled_addmm converts int32 ones on every call
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        return cls(crow=t(crow), col=t(cols[order].astype(np.int64)),
                   ent=t(order.astype(np.int64)), count=t(counts.astype(np.float32)),
                   n_cols=int(n_cols))

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The (n_rows, n_cols) sparse matrix with these entry values (shares the pattern)."""
        with warnings.catch_warnings():  # "CSR support is in beta": the two kernels used are not
            warnings.filterwarnings("ignore", "Sparse CSR tensor support", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.col, values,
                                           (len(self.crow) - 1, self.n_cols),
                                           check_invariants=False)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(1)


def cg_half_sweep(side: CSRSide, X: torch.Tensor, feat: torch.Tensor, w: torch.Tensor | None,
                  t: torch.Tensor, lam: torch.Tensor, gram: torch.Tensor | None, steps: int,
                  track: bool = False, prior: torch.Tensor | None = None) -> float | None:
    """Take ``steps`` CG steps on every row of ``X`` (in place), warm-started from ``X``.

    Parameters
    ----------
    side : the entries of X's side (rows of X) against the other side (rows of ``feat``).
    feat : (n_cols, k) fixed features f_j.
    w, t : (nnz,) entry weights (None = all 1) and targets, in ``side``'s entry order.
    lam : (n_rows,) λ_r.  gram : (k, k) G, or None.
    prior : (n_rows, k) o_r or None: the regulariser is λ_r‖x_r − o_r‖² (the hybrid model's
        attribute part, train/attributes.py); rows without entries are o_r.
    track : also return the data term Σ_r [xᵀ(A − λ_r I)x − 2xᵀb + Σ_j t_rj c_rj] without the
        constant part (the caller adds it), from the residual: xᵀAx = xᵀ(b − r).

    Returns
    -------
    Σ_r (xᵀ(A − λ_r)x − 2 xᵀ b) at the final x when ``track``, else None.
    """
    # sampled_addmm's CPU kernel runs ~1.4x slower when k is not a multiple of 8 (squared's
    # k = dim + 1): solve on zero-padded columns, which stay 0 (their b, r and p are 0)
    k = X.shape[1]
    pad = (-k) % 8 if X.device.type == "cpu" else 0
    if pad:
        out, X = X, torch.nn.functional.pad(X, (0, pad))
        feat = torch.nn.functional.pad(feat, (0, pad))
        if prior is not None:
            prior = torch.nn.functional.pad(prior, (0, pad))
        if gram is not None:
            gram = torch.nn.functional.pad(gram, (0, pad, 0, pad))
    # scratch values, overwritten in place by every sampled_addmm (out = input: no copy)
    pattern = side.matrix(torch.zeros_like(t))  # finite: 0 · NaN would stay NaN
    featT = feat.T

    def entry_dots(P):  # f_jᵀ p_r for every entry (r, j)
        torch.sparse.sampled_addmm(pattern, P, featT, beta=0.0, out=pattern)
        return pattern.values()

    def dense_part(P):  # (G + λ_r I) P
        out = lam[:, None] * P
        return out if gram is None else out.addmm_(P, gram)

    def apply_A(P):
        d = entry_dots(P)
        return dense_part(P).addmm_(side.matrix(d if w is None else d * w), feat)

    empty = side.count == 0
    X[empty] = 0.0 if prior is None else prior[empty]
    d = entry_dots(X)
    wd = d if w is None else d * w
    if track:  # b is needed at the end
        b = side.matrix(t) @ feat
        if prior is not None:
            b = b + lam[:, None] * prior
        r = b - dense_part(X).addmm_(side.matrix(wd), feat)
    else:  # one sparse product: r = Σ_j (t − w fᵀx) f_j − (G + λ) x
        r = (side.matrix(t - wd) @ feat).sub_(dense_part(X))
        if prior is not None:
            r.add_(lam[:, None] * prior)
    p = r.clone()
    rs = _rowdot(r, r)
    for _ in range(steps):
        Ap = apply_A(p)
        pAp = _rowdot(p, Ap)
        a = torch.where(pAp > 0, rs / torch.where(pAp > 0, pAp, 1.0), 0.0)
        X.add_(a[:, None] * p)
        r.sub_(a[:, None] * Ap)
        rs_new = _rowdot(r, r)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, 1.0), 0.0)
        p = r + beta[:, None] * p
        rs = rs_new
    if prior is not None:  # empty rows have r = −G o ≠ 0: the steps moved them, put them back
        X[empty] = prior[empty]
    if pad:
        out.copy_(X[:, :k])
    if not track:
        return None
    # xᵀHx − 2xᵀb with H = A − λI and A x = b − r
    x2 = _rowdot(X, X)
    data = -_rowdot(X, b + r) - lam * x2
    if prior is not None:  # b held λ o: xᵀ(A − λ)x − 2xᵀ(b − λo)
        data = data + 2 * lam * _rowdot(X, prior)
    return float(data.double().sum())

r"""The hybrid model's attribute part (LightFM formulation), for every objective's model.

Every item (and user) vector is

.. math::

    q_i = v_i [\text{i has interactions}] + \frac{1}{|T_i|} \sum_{t \in T_i} e_t

with T_i its tokens (``NAME=VALUE``, ingest/attributes.py) and e_t learned token embeddings
(items and users have separate vocabularies). With A the row-normalised (n_items, n_tokens)
token matrix, the attribute parts are ``A @ E``.

In the ALS objectives the ID embedding's L2 term λ_i‖v_i‖² becomes, with q_i = v_i + A_i E,
λ_i‖q_i − A_i E‖²: each row solve is the usual ridge solve pulled towards its attribute part
(``g += λ_i A_i E``), and with the rows fixed the token embeddings have the closed form of a
weighted ridge regression (:func:`token_step`)

.. math::

    (A^\top Λ A + λ_E I) E = A^\top Λ Q      (rows with interactions)

With Λ = diag(λ_i) alternating the two would be exact block coordinate descent on the joint
objective; the token step uses Λ = λ̄ I instead (λ̄ = λ_E = the mean λ_i over the rows with
interactions): weighted by confidence, the attribute parts fit the popular items and the
cold-item figures fell (train/als.py says by how much). A row without
interactions is its attribute part alone (two entities with the same tokens and no
interactions get the same vector).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class TokenMatrix:
    """Tokens per entity as CSR index arrays: entity r holds ``indices[indptr[r]:indptr[r+1]]``
    (indices into ``vocab``). The model's attribute argument (``item_tokens=``, ``user_tokens=``).
    """

    indptr: np.ndarray  # (n_rows + 1,) int64
    indices: np.ndarray  # (nnz,) int64
    vocab: tuple[str, ...]

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def n_tokens(self) -> int:
        return len(self.vocab)

    @property
    def counts(self) -> np.ndarray:
        """(n_rows,) number of tokens per entity."""
        return np.diff(self.indptr)

    @property
    def has(self) -> np.ndarray:
        """(n_rows,) bool: entities with at least one (kept) token."""
        return self.counts > 0

    def rows_of(self, r: int) -> np.ndarray:
        return self.indices[self.indptr[r]:self.indptr[r + 1]]

    def torch_matrix(self, device):
        """The row-normalised (n_rows, n_tokens) matrix A (sparse CSR, float32)."""
        import torch  # lazy: refresh and serve read token tables without torch

        c = self.counts
        vals = np.repeat(1.0 / np.maximum(c, 1), c).astype(np.float32)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        with warnings.catch_warnings():  # "CSR support is in beta": the kernels used are not
            warnings.filterwarnings("ignore", "Sparse", UserWarning)
            return torch.sparse_csr_tensor(t(self.indptr.astype(np.int64)), t(self.indices.astype(np.int64)),
                                           t(vals), (self.n_rows, max(1, self.n_tokens)))

    def parts(self, E: np.ndarray) -> np.ndarray:
        """(n_rows, k) attribute parts A @ E, numpy (rows without tokens: 0)."""
        out = np.zeros((self.n_rows, E.shape[1]), np.float32)
        if self.n_tokens == 0 or len(self.indices) == 0:
            return out
        c = self.counts
        rows = np.repeat(np.arange(self.n_rows), c)
        np.add.at(out, rows, E[self.indices] / np.repeat(np.maximum(c, 1), c)[:, None])
        return out


def build_tokens(n_rows: int, tokens: Mapping[int, Sequence[str]] | Sequence[Sequence[str]] | None, *,
                 min_count: int = 1, vocab: Sequence[str] | None = None) -> TokenMatrix:
    """A :class:`TokenMatrix` of ``n_rows`` entities from ``{row: tokens}`` (or a list per row).

    Tokens held by fewer than ``min_count`` entities are dropped; with ``vocab`` given, that
    vocabulary is used (tokens outside it are dropped: e.g. a version's vocabulary at refresh).
    """
    if tokens is None:
        tokens = {}
    items = tokens.items() if isinstance(tokens, Mapping) else enumerate(tokens)
    per_row = {int(r): tuple(dict.fromkeys(ts)) for r, ts in items if ts}
    if vocab is None:
        counts: dict[str, int] = {}
        for ts in per_row.values():
            for t in ts:
                counts[t] = counts.get(t, 0) + 1
        vocab = tuple(sorted(t for t, n in counts.items() if n >= max(1, int(min_count))))
    vocab = tuple(vocab)
    index = {t: j for j, t in enumerate(vocab)}
    indptr = np.zeros(n_rows + 1, np.int64)
    cols: list[int] = []
    for r in range(n_rows):
        ts = per_row.get(r)
        if ts:
            cols.extend(sorted(index[t] for t in ts if t in index))
        indptr[r + 1] = len(cols)
    return TokenMatrix(indptr, np.asarray(cols, np.int64), vocab)


def token_step(A, Q, lam, lam_e: float, E, steps: int = 30, At=None):
    """E = argmin Σ_r λ_r ‖q_r − A_r E‖² + λ_E ‖E‖² by conjugate gradients from ``E``.

    Rows with λ_r = 0 (no interactions) do not enter. The k columns are k independent systems
    with the same matrix AᵀΛA + λ_E I, solved together (a step size per column).
    """
    if E.shape[0] == 0:
        return E
    import torch

    if At is None:
        At = A.to_sparse_coo().t().coalesce()
    lam = lam.to(Q.dtype)

    def apply(X):
        return At @ (lam[:, None] * (A @ X)) + lam_e * X

    b = At @ (lam[:, None] * Q)
    X = E.clone()
    r = b - apply(X)
    p = r.clone()
    rs = (r * r).sum(0)
    for _ in range(steps):
        Ap = apply(p)
        pAp = (p * Ap).sum(0)
        a = torch.where(pAp > 0, rs / torch.where(pAp > 0, pAp, 1.0), 0.0)
        X = X + a * p
        r = r - a * Ap
        rs_new = (r * r).sum(0)
        if float(rs_new.max()) <= 1e-12 * max(1.0, float((b * b).sum(0).max())):
            break
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, 1.0), 0.0)
        p = r + beta * p
        rs = rs_new
    return X


def snapshot_tokens(snap, tc, kind: str) -> TokenMatrix | None:
    """The snapshot's tokens of ``kind`` (``"item"``/``"user"``) under ``[train] attributes``
    and ``min_token_count``; None when off or when the store holds none."""
    if not getattr(tc, "attributes", True):
        return None
    raw = getattr(snap, f"{kind}_tokens", None)
    if not raw:
        return None
    n = len(snap.item_ids if kind == "item" else snap.user_ids)
    tm = build_tokens(n, raw, min_count=getattr(tc, "min_token_count", 1))
    return tm if tm.n_tokens else None


def ridge_map(X_tokens: TokenMatrix, rows: np.ndarray, targets: np.ndarray, reg: float) -> np.ndarray:
    """The two-stage mapping's token weights W: argmin ‖A_rows W − targets‖² + reg ‖W‖² (dense
    normal equations in the token space; the baseline of the cold-item evaluation)."""
    n_t = X_tokens.n_tokens
    A = np.zeros((len(rows), n_t), np.float64)
    for k, r in enumerate(rows):
        t = X_tokens.rows_of(int(r))
        if len(t):
            A[k, t] = 1.0 / len(t)
    M = A.T @ A + reg * np.eye(n_t)
    return np.linalg.solve(M, A.T @ targets.astype(np.float64)).astype(np.float32)


class PaddedTokens:
    """A :class:`TokenMatrix` as padded (n_rows, L) token indices and weights 1/|T_r| on a
    device, for gathering the attribute parts of a mini-batch (the ``bce`` SGD). The padding
    index is ``n_tokens``: token tables carry one extra zero row there, and the padding's
    weight is 0, so it never moves."""

    def __init__(self, tm: TokenMatrix, device):
        import torch

        c = tm.counts
        L = max(1, int(c.max()) if len(c) else 1)
        tok = np.full((tm.n_rows, L), tm.n_tokens, np.int64)
        w = np.zeros((tm.n_rows, L), np.float32)
        for r in np.flatnonzero(c).tolist():
            t = tm.rows_of(r)
            tok[r, :len(t)] = t
            w[r, :len(t)] = 1.0 / len(t)
        self.n_tokens = tm.n_tokens
        self.tok = torch.from_numpy(tok).to(device)
        self.w = torch.from_numpy(w).to(device)

    def parts(self, rows, E):
        """(len(rows), k) attribute parts of ``rows`` (any index shape: (…, k) out)."""
        t, w = self.tok[rows], self.w[rows]
        return (E[t] * w.unsqueeze(-1)).sum(-2)


# The ID embedding of a row WITH tokens is penalised ID_REG_FACTOR x λ_r (x its weighted-λ):
# pulled harder towards its attribute part, the attribute parts carry more of the affinity.
# Measured on the synthetic sets of benchmarks/bench_attributes.py (implicit, 7 seeds, cold-item
# Recall@20 / the two-stage mapping's, medians): 1 -> 0.97 (1500 items, 100k triples), 2 -> 0.98
# (it beat the mapping on 1 seed of 7), 3 -> 1.01 (6 of 7; 3000 items, 40k triples: 1.06), 4 and
# 6 worse again; warm Recall@10 stays 0.010-0.018 above the ID-only model's at 3.
ID_REG_FACTOR = 3.0

DENSE_MAX_TOKENS = 4096  # up to this many tokens the token step is one exact Cholesky solve


class TokenSolver:
    """The token step (:func:`token_step`) for a FIXED A, Λ and λ_E, as ALS repeats it every
    sweep: up to :data:`DENSE_MAX_TOKENS` tokens, AᵀΛA + λ_E I is built and factored once and
    each step is one sparse product and one Cholesky solve (exact); beyond, ``steps`` CG steps
    warm-started from the previous E."""

    def __init__(self, A, lam, lam_e: float, steps: int = 30):
        import torch

        self.A, self.lam, self.lam_e, self.steps = A, lam, float(lam_e), steps
        self.At = A.to_sparse_coo().t().coalesce()
        n_t = A.shape[1]
        self.L = None
        if n_t <= DENSE_MAX_TOKENS:
            coo = A.to_sparse_coo().coalesce()
            rows = coo.indices()[0]
            # AᵀΛA: a sparse-sparse product, (n_tokens, n_tokens) dense afterwards
            Ad = torch.sparse_coo_tensor(coo.indices(), coo.values() * lam[rows], coo.shape).coalesce()
            M = (self.At @ Ad).to_dense()
            M = M + self.lam_e * torch.eye(n_t, dtype=M.dtype, device=M.device)
            L, info = torch.linalg.cholesky_ex(M.double())
            if int(info) == 0:
                self.L = L

    def __call__(self, Q, E):
        import torch

        if self.L is None:
            return token_step(self.A, Q, self.lam, self.lam_e, E, self.steps, At=self.At)
        b = self.At @ (self.lam[:, None] * Q)
        return torch.cholesky_solve(b.double(), self.L).to(Q.dtype)


def token_rows(ids, attributes) -> dict[int, tuple[str, ...]]:
    """``{row: tokens}`` for entities ``ids`` (dense order) from ``{id: {NAME: VALUE}}`` (the
    event's ``attributes`` object, DESIGN §1a: same rules, a broken one is a ValueError naming
    the id); entities the model does not hold are left out. A snapshot's ``item_tokens`` shape."""
    if not attributes:
        return {}
    from mcrecall.ingest.attributes import BadAttributes, tokens_of

    index = {str(e): r for r, e in enumerate(ids)}
    rows = {}
    for e, attrs in (attributes or {}).items():
        r = index.get(str(e))
        if r is None:
            continue  # an entity the model does not hold
        try:
            rows[r] = tuple(tokens_of(attrs))
        except BadAttributes as err:
            raise ValueError(f"attributes of {str(e)[:64]!r}: {err.reason}") from None
    return rows


def tokens_from_attributes(ids, attributes, *, min_count: int = 1, vocab=None) -> TokenMatrix:
    """A :class:`TokenMatrix` for entities ``ids`` (dense order) from ``{id: {NAME: VALUE}}``
    (:func:`token_rows`) — the models' ``item_tokens=`` / ``user_tokens=`` argument."""
    ids = list(ids)
    return build_tokens(len(ids), token_rows(ids, attributes), min_count=min_count, vocab=vocab)

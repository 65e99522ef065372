r"""Fold a user into a published version: solve one user's vector against fixed item vectors.

NumPy only (serve imports it without torch). ``fold_in`` solves exactly the user-side system of
the version's training objective (see :mod:`mcrecall.train.als`), so for a user who was in the training
data, ``fold_in(their item vectors, their training scores, meta)`` returns the vector the last
training sweep stored (up to float32 rounding; with ``[train] solver = "cg"``, up to that
sweep's conjugate-gradient residual). Everything it needs beyond the user's own items
is in ``meta["foldin"]``:

=============  ==================================================================================
key            meaning
=============  ==================================================================================
objective      ``squared`` | ``implicit`` | ``bce``
similarity     ``dot`` | ``cosine``
factors        k, the latent dimension (published vectors may have 2 more: folded biases)
layout         ``biased``: user = [a, 1, μ + c], item = [b, β, 1]; ``plain``: user = a, item = b
reg, alpha     λ and α of the objective
mu             μ, the training mean (``biased``)
score_scale    s: predicted interest = s · ⟨user, item⟩ (cosine: s · cos)
gram           ``implicit``: Σ_i b_i b_iᵀ over all published items (the all-cells term)
neg_pool       ``bce``: item vectors of a fixed uniform sample of items (negatives' expectation)
negatives      ``bce``: negatives per positive
=============  ==================================================================================

Systems solved (f_i = the user's item vectors, y_i the scores, n = number of triples):

* squared/dot:   (Σ f̃ f̃ᵀ + λ n I) x = Σ (y − μ − β_i) f̃, f̃ = [b_i, 1]; user = [x_a, 1, μ + x_c]
* implicit/dot:  (G + Σ α y f fᵀ + λ (α Σ y + 1) I) x = Σ (1 + α y) f     (positives only)
* cosine:        x = argmin_{‖x‖=1} xᵀ H x − 2 gᵀ x with H, g as above (no λ) and scaled by
  s², s (squared: H = Σ f fᵀ, g = Σ y f)
* bce:           regularised logistic regression, positives (y > 0) labelled 1, the negatives
  term is ``negatives × n_pos`` times the mean loss over ``neg_pool`` (the expectation of the
  training's uniformly sampled negatives), Newton's method; an approximation of SGD training.
"""

from __future__ import annotations

import numpy as np

from .attributes import ID_REG_FACTOR

NEG_POOL = 256  # items whose vectors represent "all items" for bce fold-in


def layout(objective: str, similarity: str) -> str:
    """``biased`` where the published vectors carry folded biases (squared/dot: user =
    [a, 1, μ + c], item = [b, β, 1]; bce/dot: user = [a, 1], item = [b, β]), else ``plain``."""
    return "biased" if similarity == "dot" and objective in ("squared", "bce") else "plain"


def foldin_section(item_vectors: np.ndarray, *, objective: str, similarity: str, reg: float,
                   alpha: float | None = None, negatives: int | None = None, mu: float = 0.0,
                   score_scale: float = 1.0, factors: int | None = None,
                   item_has: np.ndarray | None = None, seed: int = 0) -> dict:
    """The ``foldin`` metadata section of a version (the table in this module's docstring).

    The one writer of that section: the trainer and ``mcrecall.serve.testing`` both call it.

    Parameters
    ----------
    item_vectors : (n_items, dim) the version's published item vectors.
    objective, similarity : the version's.
    reg : λ of the objective (``reg_bce`` for bce).
    alpha : α (ALS objectives). negatives : negatives per positive (bce).
    mu, score_scale : μ (biased squared) and the score scale s.
    factors : k (default: the vector width less the folded bias columns).
    item_has : bool mask of the items that have a published vector (default: all).
    seed : seed of the bce negative pool's uniform draw.
    """
    V = np.asarray(item_vectors)
    has = np.ones(len(V), bool) if item_has is None else np.asarray(item_has, bool)
    lay = layout(objective, similarity)
    if factors is None:
        factors = V.shape[1] - ((2 if objective == "squared" else 1) if lay == "biased" else 0)
    fm = {"objective": objective, "similarity": similarity, "factors": int(factors),
          "layout": lay, "score_scale": float(score_scale), "mu": float(mu)}
    if objective == "bce":
        fm.update(reg=float(reg), negatives=negatives)
        # uniform over ALL items (as the training's negatives), items without a vector are 0
        rng = np.random.default_rng(seed)
        pool = rng.integers(0, len(V), NEG_POOL)
        fm["neg_pool"] = np.round(V[pool].astype(np.float64), 7).tolist()
        fm["neg_pool_note"] = f"{NEG_POOL} items drawn uniformly from {int(has.sum())} published"
    else:
        fm.update(reg=float(reg), alpha=None if alpha is None else float(alpha))
        if objective == "implicit":
            Vh = V[has].astype(np.float64)
            fm["gram"] = (Vh.T @ Vh).tolist()
    return fm


def sphere_solve(H: np.ndarray, g: np.ndarray) -> np.ndarray:
    """argmin over unit x of xᵀHx − 2gᵀx (trust-region subproblem on the sphere)."""
    lam, Q = np.linalg.eigh(np.asarray(H, dtype=np.float64))
    gt = Q.T @ np.asarray(g, dtype=np.float64)
    gap = lam - lam[0]
    gsq = gt * gt
    lo, hi = 1e-12, float(np.sqrt(gsq.sum())) + 1e-12
    for _ in range(60):
        mid = np.sqrt(lo * hi)
        if (gsq / (gap + mid) ** 2).sum() > 1.0:
            lo = mid
        else:
            hi = mid
    xt = gt / (gap + hi)
    n2 = float((xt * xt).sum())
    if n2 < 1.0 - 1e-6:  # hard case
        xt[0] += np.sqrt(max(0.0, 1.0 - n2)) * np.sign(xt[0] + 1e-30)
    x = Q @ xt
    return x / max(np.linalg.norm(x), 1e-30)


def _bce_newton(F: np.ndarray, pool: np.ndarray, n_neg: float, lam: float, x0=None,
                iters: int = 25, off=0.0, pool_off=0.0) -> np.ndarray:
    r"""The bce user step: Newton's method on the regularised logistic loss

    .. math::

        \min_x \sum_{pos} \mathrm{softplus}(-(x^\top f + o_f))
          + n_{neg}\, \mathrm{mean}_{pool}\, \mathrm{softplus}(x^\top p + o_p)
          + \lambda (n_{pos} + n_{neg}) \lVert x\rVert^2

    ``off`` / ``pool_off``: a fixed per-item offset o added to every logit (the folded item
    bias β of the ``biased`` layout; 0 for the plain and cosine layouts).
    Update: x ← x − (∇²)⁻¹ ∇ until the step is below 1e-7 (at most ``iters`` steps).
    """
    k = F.shape[1]
    x = np.zeros(k) if x0 is None else np.array(x0, dtype=np.float64)
    reg = lam * (len(F) + n_neg)
    for _ in range(iters):
        zp = F @ x + off
        zn = pool @ x + pool_off
        sp = 1.0 / (1.0 + np.exp(zp))  # σ(−z)
        sn = 1.0 / (1.0 + np.exp(-zn))  # σ(z)
        grad = -(F.T @ sp) + n_neg * (pool.T @ sn) / len(pool) + 2 * reg * x
        wp = sp * (1 - sp)
        wn = sn * (1 - sn)
        hess = (F.T * wp) @ F + n_neg * (pool.T * wn) @ pool / len(pool) + 2 * reg * np.eye(k)
        step = np.linalg.solve(hess, grad)
        x -= step
        if np.abs(step).max() < 1e-7:
            break
    return x


def fold_in(item_vectors: np.ndarray, scores: np.ndarray, meta: dict,
            prior: np.ndarray | None = None) -> np.ndarray:
    """The user vector (published form, float32) for these triples under version ``meta``.

    Parameters
    ----------
    item_vectors : (n, dim) published model-space vectors of the user's items
        (``vs.get_vectors(version, item_ids)``).
    scores : (n,) the user's scores 0..4 for those items.
    meta : the version's metadata (``ModelRegistry.metadata(version)``) or its ``"foldin"`` part.
    prior : (dim,) the user's attribute part (the hybrid model, train/attributes.py; used by
        implicit/dot): λ penalises the ID embedding x − prior, as in training.

    Returns
    -------
    np.ndarray (dim,) float32, or None when the objective gives the user no information
    (implicit / bce / cosine with no positive score; squared-cosine with no triples).
    """
    fm = meta.get("foldin", meta)
    obj, sim = fm["objective"], fm["similarity"]
    k, lam = int(fm["factors"]), float(fm["reg"])
    s = float(fm.get("score_scale", 1.0))
    V = np.asarray(item_vectors, dtype=np.float64).reshape(len(scores), -1)
    y = np.asarray(scores, dtype=np.float64)
    if obj in ("implicit", "bce"):
        pos = y > 0
        V, y = V[pos], y[pos]
        if len(y) == 0:
            return None
    if obj == "bce":
        pool = np.asarray(fm["neg_pool"], dtype=np.float64)
        n_neg = float(fm["negatives"]) * len(y)
        if sim == "cosine":
            V = V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)
            pool = pool / np.maximum(np.linalg.norm(pool, axis=1, keepdims=True), 1e-12)
            x = _bce_newton(V * s, pool * s, n_neg, lam)
            return (x / max(np.linalg.norm(x), 1e-30)).astype(np.float32)
        if fm.get("layout") == "biased":  # item = [b, β], user = [a, 1]: β is an offset
            x = _bce_newton(V[:, :k], pool[:, :k], n_neg, lam, off=V[:, k], pool_off=pool[:, k])
            return np.concatenate([x, [1.0]]).astype(np.float32)
        return _bce_newton(V, pool, n_neg, lam).astype(np.float32)
    if obj == "squared":
        if sim == "dot":
            mu = float(fm["mu"])
            if len(y) == 0:
                return np.concatenate([np.zeros(k), [1.0, mu]]).astype(np.float32)
            Ft = np.hstack([V[:, :k], np.ones((len(y), 1))])
            r = y - mu - V[:, k]
            H = Ft.T @ Ft + lam * len(y) * np.eye(k + 1)
            x = np.linalg.solve(H, Ft.T @ r)
            return np.concatenate([x[:k], [1.0, mu + x[k]]]).astype(np.float32)
        if len(y) == 0:
            return None
        H, g = V.T @ V, V.T @ y
    else:  # implicit
        G = np.asarray(fm["gram"], dtype=np.float64)
        a = float(fm["alpha"]) * y
        H = G + (V.T * a) @ V
        g = V.T @ (1.0 + a)
        if sim == "dot":
            lam_r = lam * (a.sum() + 1.0)
            if prior is not None:  # the ID embedding's penalty of a row with tokens (train/attributes.py)
                lam_r *= ID_REG_FACTOR
                g = g + lam_r * np.asarray(prior, np.float64)
            x = np.linalg.solve(H + lam_r * np.eye(k), g)
            return x.astype(np.float32)
    return sphere_solve(H * (s * s), g * s).astype(np.float32)


def fold_in_item(user_vectors: np.ndarray, scores: np.ndarray, meta: dict,
                 user_gram: np.ndarray | None = None, prior: np.ndarray | None = None) -> np.ndarray | None:
    r"""The item vector (published form, float32) for these triples under version ``meta``.

    The item-side half-sweep of the version's ALS objective (:mod:`mcrecall.train.als`) for one item,
    with the version's published user vectors fixed — the mirror of :func:`fold_in`:

    * squared/dot:   (Σ f̃ f̃ᵀ + λ n I) x = Σ (y − μ − c_u) f̃, f̃ = [a_u, 1] from the published
      user [a_u, 1, μ + c_u]; item = [x_b, x_β, 1]
    * implicit/dot:  (G_U + Σ α y a aᵀ + λ (α Σ y + 1) I) x = Σ (1 + α y) a   (positives only;
      G_U = Σ_u a_u a_uᵀ over the version's users, the all-cells term)
    * cosine:        x = argmin_{‖x‖=1} xᵀ H x − 2 gᵀ x, H and g as above scaled by s², s (no λ)

    Parameters
    ----------
    user_vectors : (n, dim) published vectors of the item's users in the version (users without
        a vector in the version are left out by the caller).
    scores : (n,) the item's scores 0..4 from those users.
    meta : the version's metadata or its ``"foldin"`` part.
    user_gram : (k, k) Σ a aᵀ over the version's published user vectors (``implicit`` only).
    prior : (k,) the item's attribute part (the hybrid model, train/attributes.py; implicit/dot):
        the ID embedding x − prior is what λ penalises, so the right-hand side gains λ_r prior.

    Returns
    -------
    np.ndarray (dim,) float32, or None when the triples carry no information for the objective
    (no triples; no positive score for implicit / cosine).

    Raises
    ------
    NotImplementedError
        ``bce``: SGD-trained with sampled negatives, it has no closed-form item step.
    """
    fm = meta.get("foldin", meta)
    obj, sim = fm["objective"], fm["similarity"]
    if obj == "bce":
        raise NotImplementedError("item refresh supports the ALS objectives (squared, implicit), "
                                  "not bce")
    k, lam = int(fm["factors"]), float(fm["reg"])
    s = float(fm.get("score_scale", 1.0))
    U = np.asarray(user_vectors, dtype=np.float64).reshape(len(scores), -1)
    y = np.asarray(scores, dtype=np.float64)
    if obj == "implicit":
        pos = y > 0
        U, y = U[pos], y[pos]
    if len(y) == 0:
        return None
    if obj == "squared":
        if sim == "dot":
            Ft = np.hstack([U[:, :k], np.ones((len(y), 1))])
            r = y - U[:, k + 1]  # y − μ − c_u: the published user carries μ + c_u
            H = Ft.T @ Ft + lam * len(y) * np.eye(k + 1)
            x = np.linalg.solve(H, Ft.T @ r)
            return np.concatenate([x, [1.0]]).astype(np.float32)
        H, g = U.T @ U, U.T @ y
    else:  # implicit
        if user_gram is None:
            raise ValueError("implicit item fold-in needs the version's user Gram matrix")
        a = float(fm["alpha"]) * y
        H = np.asarray(user_gram, dtype=np.float64) + (U.T * a) @ U
        g = U.T @ (1.0 + a)
        if sim == "dot":
            lam_r = lam * (a.sum() + 1.0)
            if prior is not None:  # the ID embedding's penalty of a row with tokens (train/attributes.py)
                lam_r *= ID_REG_FACTOR
                g = g + lam_r * np.asarray(prior, np.float64)
            x = np.linalg.solve(H + lam_r * np.eye(k), g)
            return x.astype(np.float32)
    return sphere_solve(H * (s * s), g * s).astype(np.float32)

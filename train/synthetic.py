"""Synthetic rating data with planted low-rank structure and user-dependent exposure.

Why user-dependent exposure: if exposures depended on popularity alone, "most popular" would win
every ranking metric (docs/measurements.md), and a test of ranking would test nothing. Here a user is
exposed to an item with log-odds ``alpha * log(pop_i) + beta * <p_u, q_i>``: popular items are seen
more, and users see (and then score) items they like -- as under a deployed recommender.

Scores follow the same latent affinity plus biases and noise, rounded into 0..4 (DESIGN §2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Synthetic:
    """Triples in the shape of ``TripleStore.snapshot()`` plus the planted truth."""

    user_idx: np.ndarray  # int32 (n,)
    item_idx: np.ndarray  # int32 (n,)
    score: np.ndarray  # float32 (n,)
    user_ids: list[str]
    item_ids: list[str]
    seq: int = 1
    user_factors: np.ndarray | None = None
    item_factors: np.ndarray | None = None
    item_tokens: dict | None = None  # {item index: tokens} (make_synthetic_attributes)
    user_tokens: dict | None = None

    def __len__(self) -> int:
        return len(self.score)

    def subset(self, mask: np.ndarray, seq: int | None = None) -> "Synthetic":
        """The triples where ``mask`` holds (same id maps)."""
        return Synthetic(
            self.user_idx[mask], self.item_idx[mask], self.score[mask], self.user_ids,
            self.item_ids, self.seq if seq is None else seq, self.user_factors, self.item_factors,
            self.item_tokens, self.user_tokens,
        )


def make_synthetic(
    n_users: int = 2000,
    n_items: int = 1000,
    n_triples: int = 100_000,
    rank: int = 8,
    noise: float = 0.4,
    alpha: float = 0.7,
    beta: float = 1.5,
    seed: int = 0,
    user_factors: np.ndarray | None = None,
    item_factors: np.ndarray | None = None,
) -> Synthetic:
    """Generate a planted-structure data set.

    Parameters
    ----------
    n_users, n_items : matrix shape.
    n_triples : approximate number of observed (exposed) pairs; per-user counts are log-normal.
    rank : rank of the planted affinity ``P Q^T`` (unit-variance entries).
    noise : standard deviation of the score noise.
    alpha : exposure weight of log item popularity (Zipf-like popularity).
    beta : exposure weight of the user's affinity for the item (user-dependent exposure).
    seed : RNG seed; the output is a deterministic function of all arguments.
    user_factors, item_factors : planted (n, rank) factors to use instead of the drawn ones
        (:func:`make_synthetic_attributes` plants them from attributes).

    Notes
    -----
    affinity z_ui = <p_u, q_i> / sqrt(rank), with p, q ~ N(0, I);
    exposure: for each user, k_u items drawn without replacement with probabilities
    ∝ exp(alpha * log pop_i + beta * z_ui) (Gumbel top-k);
    score y_ui = clip(round(1.3 + 1.1 * z_ui + c_u + d_i + noise * eps), 0, 4).
    """
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((n_users, rank)).astype(np.float32)
    q = rng.standard_normal((n_items, rank)).astype(np.float32)
    if user_factors is not None:
        p = np.asarray(user_factors, np.float32)
    if item_factors is not None:
        q = np.asarray(item_factors, np.float32)
    scale = 1.0 / np.sqrt(rank)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    rng.shuffle(pop)
    log_pop = np.log(pop).astype(np.float32)
    c_u = (0.3 * rng.standard_normal(n_users)).astype(np.float32)
    d_i = (0.3 * rng.standard_normal(n_items)).astype(np.float32)

    mean_k = n_triples / n_users
    k = np.exp(rng.normal(np.log(mean_k) - 0.18, 0.6, n_users))
    k = np.clip(np.round(k), 3, n_items // 2).astype(np.int64)
    users, items, scores = [], [], []
    chunk = max(1, 2_000_000 // n_items)
    for s in range(0, n_users, chunk):
        e = min(n_users, s + chunk)
        z = (p[s:e] @ q.T) * scale
        gumbel = -np.log(-np.log(rng.random(z.shape, dtype=np.float32) + 1e-12) + 1e-12)
        logits = alpha * log_pop[None, :] + beta * z + gumbel
        kmax = int(k[s:e].max())
        top = np.argpartition(-logits, kmax - 1, axis=1)[:, :kmax]
        order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        keep = np.arange(kmax)[None, :] < k[s:e, None]
        rows = np.broadcast_to(np.arange(s, e)[:, None], top.shape)[keep]
        cols = top[keep]
        zz = z[rows - s, cols]
        y = 1.3 + 1.1 * zz + c_u[rows] + d_i[cols] + noise * rng.standard_normal(len(rows))
        users.append(rows)
        items.append(cols)
        scores.append(np.clip(np.round(y), 0, 4))
    user_idx = np.concatenate(users).astype(np.int32)
    item_idx = np.concatenate(items).astype(np.int32)
    score = np.concatenate(scores).astype(np.float32)
    perm = rng.permutation(len(score))  # arrival order is not user-sorted
    return Synthetic(
        user_idx[perm], item_idx[perm], score[perm],
        [f"u{i}" for i in range(n_users)], [f"i{j}" for j in range(n_items)],
        1, p, q,
    )


def make_synthetic_attributes(
    n_users: int = 2000,
    n_items: int = 1500,
    n_triples: int = 100_000,
    rank: int = 8,
    attribute_share: float = 0.8,
    fields: tuple[tuple[str, int, int], ...] = (("genre", 24, 2), ("maker", 60, 1), ("year", 12, 1)),
    user_fields: tuple[tuple[str, int, int], ...] = (("region", 8, 1), ("age", 6, 1)),
    seed: int = 0,
    **kw,
) -> Synthetic:
    """:func:`make_synthetic` with attribute structure planted in the factors.

    Each item draws, per field ``(name, n_values, per_item)``, ``per_item`` values; each value
    has a latent vector, and the item's planted factor is
    ``sqrt(share) * normalised mean of its values' vectors + sqrt(1 - share) * own noise``
    (``attribute_share`` of the affinity is predictable from the attributes). Users get tokens
    the same way (``user_fields``, with the same share). Tokens are ``name=value`` strings as
    ingest makes them; ``year`` values are integers (``year=2003``).
    """
    rng = np.random.default_rng(seed + 7919)

    def planted(n, flds, prefix):
        parts = np.zeros((n, rank))
        tokens = [[] for _ in range(n)]
        for name, n_values, per in flds:
            centers = rng.standard_normal((n_values, rank))
            for r in range(n):
                vals = rng.choice(n_values, size=per, replace=False)
                parts[r] += centers[vals].mean(0) * np.sqrt(per)
                for v in vals:
                    tokens[r].append(f"{name}={2000 + v if name == 'year' else f'{prefix}{v}'}")
        parts /= np.sqrt(len(flds))
        own = rng.standard_normal((n, rank))
        fac = np.sqrt(attribute_share) * parts + np.sqrt(1 - attribute_share) * own
        return fac.astype(np.float32), {r: tuple(sorted(t)) for r, t in enumerate(tokens)}

    q, item_tokens = planted(n_items, fields, "v")
    p, user_tokens = planted(n_users, user_fields, "g") if user_fields else (None, None)
    syn = make_synthetic(n_users, n_items, n_triples, rank, seed=seed, user_factors=p,
                         item_factors=q, **kw)
    syn.item_tokens, syn.user_tokens = item_tokens, user_tokens
    return syn


def make_stream(
    n_users: int = 800,
    n_items: int = 600,
    n_exposures: int = 30_000,
    new_item_fraction: float = 0.6,
    rank: int = 8,
    half_life: float = 0.08,
    alpha: float = 1.0,
    beta: float = 2.0,
    seed: int = 0,
    ts0: int = 1_764_000_000_000,
    attributes: bool = False,
    attribute_share: float = 0.8,
) -> list[dict]:
    """A time-ordered event stream where new items keep arriving and popularity drifts.

    Parameters
    ----------
    n_users, n_items : sizes; ``n_items * (1 - new_item_fraction)`` items exist at the start,
        the others are born at uniform times during the stream.
    n_exposures : exposures (each one ``impression`` event, maybe followed by positives).
    half_life : an item's popularity halves every ``half_life`` × stream length after its birth
        (fresh items draw the traffic: the drift that retraining alone lags behind).
    alpha, beta : exposure log-odds weights of log popularity and of the user's affinity.
    seed : RNG seed; the output is a deterministic function of all arguments.
    attributes : plant the item factors in attribute tokens (``genre`` 2 of 24 values,
        ``maker`` 1 of 60; ``attribute_share`` of the affinity predictable from them, as in
        :func:`make_synthetic_attributes`) and send each item's attribute message
        ``{"item_id", "attributes", "ts"}`` (DESIGN §1a) at its birth, before its first exposure.

    Returns
    -------
    list of event dicts ``{"user_id", "item_id", "action", "ts"}`` in time order (DESIGN §1),
    with the attribute messages among them when ``attributes``.

    Notes
    -----
    affinity z_ui = <p_u, q_i> / sqrt(rank); at time t (0..1) the exposure of user u (drawn with
    log-normal activity) goes to an item born before t with probability
    ∝ exp(alpha * (log base_i − (t − birth_i) ln2 / half_life) + beta * z_ui) (Gumbel top-1); it is
    clicked with probability σ(2 z_ui − 1), and each further positive action with σ(2 z_ui − 2).
    """
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((n_users, rank))
    q = rng.standard_normal((n_items, rank))
    item_attrs = None
    if attributes:
        arng = np.random.default_rng(seed + 104729)
        g_c, m_c = arng.standard_normal((24, rank)), arng.standard_normal((60, rank))
        genres = np.stack([arng.choice(24, 2, replace=False) for _ in range(n_items)])
        makers = arng.integers(0, 60, n_items)
        part = (g_c[genres].mean(1) * np.sqrt(2) + m_c[makers]) / np.sqrt(2)
        q = np.sqrt(attribute_share) * part + np.sqrt(1 - attribute_share) * arng.standard_normal((n_items, rank))
        item_attrs = [{"genre": [f"g{g}" for g in genres[j]], "maker": f"m{makers[j]}"} for j in range(n_items)]
    n_old = int(round(n_items * (1 - new_item_fraction)))
    birth = np.zeros(n_items)
    birth[n_old:] = np.sort(rng.uniform(0.0, 1.0, n_items - n_old))
    log_base = np.log(1.0 / np.arange(1, n_items + 1) ** 0.7)[rng.permutation(n_items)]
    activity = np.exp(rng.normal(0, 0.8, n_users))
    activity /= activity.sum()
    z_all = (p @ q.T) / np.sqrt(rank)
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    events: list[dict] = []
    if item_attrs is not None:  # the catalogue at the start
        events += [{"item_id": f"i{j}", "attributes": item_attrs[j], "ts": ts0 - 1} for j in range(n_old)]
        announced = n_old
    block = 200
    for s in range(0, n_exposures, block):
        m = min(block, n_exposures - s)
        t = (s + np.arange(m)) / n_exposures
        users = rng.choice(n_users, size=m, p=activity)
        z = z_all[users]
        age = t[:, None] - birth[None, :]
        logits = alpha * (log_base[None, :] - np.maximum(age, 0) * np.log(2) / half_life) + beta * z
        logits[age < 0] = -np.inf  # not born yet
        logits += rng.gumbel(size=logits.shape)
        items = np.argmax(logits, axis=1)
        zz = z[np.arange(m), items]
        draws = rng.random((m, 4))
        if item_attrs is not None:  # items born by the end of this block: their attributes first
            while announced < n_items and birth[announced] <= t[-1]:
                events.append({"item_id": f"i{announced}", "attributes": item_attrs[announced],
                               "ts": ts0 + s * 10})
                announced += 1
        for j in range(m):
            u, i = f"u{users[j]}", f"i{items[j]}"
            ts = ts0 + (s + j) * 10
            events.append({"user_id": u, "item_id": i, "action": "impression", "ts": ts})
            if draws[j, 0] < sig(2 * zz[j] - 1):
                events.append({"user_id": u, "item_id": i, "action": "click", "ts": ts + 1})
                for k, action in enumerate(("like", "collect", "share"), start=1):
                    if draws[j, k] < sig(2 * zz[j] - 2):
                        events.append({"user_id": u, "item_id": i, "action": action, "ts": ts + 2})
    return events

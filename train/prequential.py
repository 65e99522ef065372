r"""Prequential (test-then-train) evaluation of a time-ordered event stream: what freshness buys.

``mcrecall evaluate --prequential FILE.jsonl`` replays the events in file order. For each
positive event on a (user, item) pair that had no positive before, every strategy first recalls
10 items for the user — leaving out the items the user already has a positive triple for (an
impression alone does not count as seen: it comes right before the click) — and scores a hit if
the item is among them; then the event is applied. Every ``retrain_every`` events a model
version is trained on all triples so far with the configured objective (the trainer's own
``fit_model``). Strategies, all on the same versions:

* ``periodic retrain only``: the version's stored vectors; users it does not know get its most
  popular items (what serve does without fold-in).
* ``+ user fold-in``: users whose triples changed since the version are folded in
  (:func:`mcrecall.train.foldin.fold_in`) against the version's item vectors — serve's default.
* ``+ item refresh``: also, every ``refresh_every`` events, items whose triples changed get
  :func:`mcrecall.train.foldin.fold_in_item` vectors against the version's users (``mcrecall refresh``),
  so new items become recallable before the next version; fold-in then sees them too.
* ``most popular``: the items with the most positive pairs so far (updated every event).
* ``+ attributes`` (only when the stream holds attribute messages, DESIGN §1a, and ``[train]
  attributes`` is on): ``+ item refresh`` on versions of the hybrid model (train/attributes.py),
  trained on the same triples: an item with attributes is recallable from its attribute part
  before its first interaction, a refreshed item is pulled towards it, and a user without
  interactions is served from the user's attribute part.

Search is exact (in process, the ``exact`` backend's answer:
:func:`mcrecall.plugins.metric.ranked` on :func:`~mcrecall.plugins.metric.cross_scores`, and
:func:`~mcrecall.plugins.metric.popular_fallback` for users without a vector, the functions the
client and :class:`mcrecall.models.MatrixFactorization` use) so that the comparison measures
the model, not an index. Hits are counted from the first version on (before it every
strategy is "most popular").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from mcrecall.ingest.events import ACTION_BITS, POSITIVE_BITS, BadEvent, parse_event, score_of
from mcrecall.plugins.metric import cross_scores, popular_fallback, ranked, usable_vector
from mcrecall.train.foldin import fold_in, fold_in_item

STRATEGIES = ("periodic retrain only", "+ user fold-in", "+ item refresh", "most popular")
ATTRIBUTES = "+ attributes"


@dataclass
class _Version:
    U: np.ndarray  # (n_users_v, d) published user vectors (zero rows: no vector)
    I: np.ndarray  # noqa: E741  (n_items_v, d) published item vectors (the notation's A, B: U, I)
    user_has: np.ndarray
    item_has: np.ndarray
    meta: dict  # {"foldin": ...}
    user_ctr: np.ndarray  # per-user change counter when trained
    popular: np.ndarray  # item indices, best first
    gram: np.ndarray | None  # implicit: Σ a aᵀ over its users
    tables: dict | None = None  # the hybrid model's token tables (the attributes strategy)


@dataclass
class PrequentialResult:
    """Hits and positives per strategy, and the cumulative Recall@k curve."""

    k: int
    events: int
    positives: int  # positive events counted (first positive of a pair, after version 1)
    hits: dict = field(default_factory=dict)
    curve: dict = field(default_factory=dict)  # strategy -> [(events seen, Recall@k so far)]
    versions: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    def recall(self, strategy: str) -> float:
        return self.hits[strategy] / self.positives if self.positives else float("nan")

    def table(self) -> str:
        """A markdown table of Recall@k per strategy."""
        rows = [f"| strategy | Recall@{self.k} | hits |", "| --- | ---: | ---: |"]
        for s in self.hits:  # STRATEGIES, then the attributes strategy when measured
            r = self.recall(s)  # n/a: no positive event was scored (e.g. a file of one event)
            rows.append(f"| {s} | {'n/a' if r != r else format(r, '.4f')} | {self.hits[s]:,} |")
        rows.append(f"\n{self.positives:,} positive events scored of {self.events:,} events, "
                    f"{self.versions} version{'s' if self.versions != 1 else ''} "
                    f"({', '.join(f'{k} {v}' for k, v in self.settings.items())}), {self.seconds:.1f} s")
        return "\n".join(rows)

    def to_json(self) -> dict:
        return {"k": self.k, "events": self.events, "positives": self.positives,
                # null, not NaN (which is no JSON): nothing was scored
                "recall": {s: (None if self.recall(s) != self.recall(s) else self.recall(s))
                           for s in self.hits}, "hits": self.hits,
                "versions": self.versions, "settings": self.settings, "seconds": self.seconds}


class _Ids:
    def __init__(self):
        self.index: dict[str, int] = {}
        self.ids: list[str] = []

    def get(self, x: str) -> int:
        j = self.index.get(x)
        if j is None:
            j = self.index[x] = len(self.ids)
            self.ids.append(x)
        return j


def read_events(path) -> list[tuple]:
    """(user_id, item_id, action bits) of every line; an attribute message (DESIGN §1a) is
    ``(None, None, AttributeUpdate)``; a bad line is a one-line ValueError."""
    from mcrecall.ingest.attributes import BadAttributes, parse_attribute_message

    out = []
    from mcrecall.core.eventfile import open_event_file

    with open_event_file(path) as f:  # a leading BOM is skipped, as by every event-file reader
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            raw = line.rstrip(b"\r\n")
            try:
                up = parse_attribute_message(raw)
                if up is not None:
                    out.append((None, None, up))
                    continue
                e = parse_event(raw)
            except (BadEvent, BadAttributes) as err:
                raise ValueError(f"{path}:{n}: bad event: {err.reason}") from None
            out.append((e.user_id, e.item_id, ACTION_BITS[e.action]))
    return out


def prequential(events, tc, *, retrain_every: int = 5000, refresh_every: int = 100,
                k: int = 10, curve_points: int = 50, log=lambda s: None) -> PrequentialResult:
    """Replay ``events`` ((user_id, item_id, bits) in time order) and score every strategy.

    Parameters
    ----------
    tc : core.config.TrainConfig — objective (squared or implicit), similarity, dim, λ, α...
    retrain_every : events between two trainings (the first after this many events).
    refresh_every : events between two item refreshes (``mcrecall refresh --every``'s cadence).
    """
    import torch

    from mcrecall.train.fit import fit_model
    from mcrecall.train.objectives import objective_spec, rows_with_data

    if not objective_spec(tc.objective).item_step:
        raise ValueError(f"prequential evaluation needs an ALS objective (squared or implicit), "
                         f"not {tc.objective!r}: item refresh has no closed form for it")
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    t0 = time.perf_counter()
    users, items = _Ids(), _Ids()
    mask: dict[tuple[int, int], int] = {}
    by_user: dict[int, dict[int, int]] = {}
    by_item: dict[int, dict[int, int]] = {}
    user_ctr: list[int] = []
    pos_count: list[int] = []
    changed_items: set[int] = set()
    # the attributes strategy (module docstring): tokens as the stream last set them
    tokens: dict[str, dict[int, tuple]] = {"item": {}, "user": {}}
    with_attrs = getattr(tc, "attributes", True) and any(e[0] is None for e in events)
    strategies = STRATEGIES + ((ATTRIBUTES,) if with_attrs else ())
    ver_a: _Version | None = None
    I_ref_a = avail_ref_a = None
    changed_a: set[int] = set()
    res = PrequentialResult(k=k, events=len(events), positives=0,
                            hits={s: 0 for s in strategies},
                            settings={"objective": tc.objective, "similarity": tc.similarity,
                                      "dim": tc.dim, "retrain_every": retrain_every,
                                      "refresh_every": refresh_every})
    curve_every = max(1, len(events) // curve_points)
    ver: _Version | None = None
    I_ref = avail_ref = None  # the refreshed item matrix of the current version
    ref_gen = 0
    foldin_cache: dict[tuple, np.ndarray | None] = {}

    def train(attributes: bool = False) -> _Version:
        keys = np.array(list(mask.keys()), dtype=np.int64).reshape(-1, 2)
        sc = np.array([score_of(m) for m in mask.values()], dtype=np.float32)

        class Snap:  # the shape fit_model reads
            user_idx, item_idx, score = keys[:, 0].astype(np.int32), keys[:, 1].astype(np.int32), sc
            user_ids, item_ids = list(users.ids), list(items.ids)
            item_tokens = dict(tokens["item"]) if attributes else None
            user_tokens = dict(tokens["user"]) if attributes else None
        snap = Snap()
        model, _, _ = fit_model(snap, replace(tc, attributes=attributes), device="cpu",
                                train_mask=np.ones(len(sc), bool), log=lambda s: None)
        U, I = model.published()  # noqa: E741  (the notation's user and item matrices)
        uh = rows_with_data(snap.user_idx, sc, len(users.ids), tc.objective)
        ih = rows_with_data(snap.item_idx, sc, len(items.ids), tc.objective)
        tables = model.token_tables() if attributes else None
        if tables and "item" in tables:  # items with attributes have their attribute part
            ih = ih | np.array([bool(tokens["item"].get(j)) for j in range(len(items.ids))], bool)
        meta = {"foldin": model.foldin_section(I, ih, tc.seed)}
        pop = np.bincount(snap.item_idx[sc > 0], minlength=len(items.ids))
        gram = None
        if tc.objective == "implicit":
            Uh = U[uh].astype(np.float64)
            gram = Uh.T @ Uh
        order = np.argsort(-pop, kind="stable")[:200]
        return _Version(U, I, uh, ih, meta, np.array(user_ctr), order[pop[order] > 0], gram, tables)

    def topk(M, avail, vec, seen) -> set:
        # the exact backend's answer: the k best available, unseen items by the model's score
        excluded = ~avail
        excluded[[j for j in seen if j < len(excluded)]] = True
        cols, _ = ranked(cross_scores(np.asarray(vec)[None, :], M, tc.similarity), k, excluded)[0]
        return set(cols.tolist())

    def popular_top(order, seen) -> set:
        return {int(j) for j in popular_fallback(order, k, seen)}

    def user_vec(v: _Version, u: int, fold: bool, M: np.ndarray, avail: np.ndarray, gen: int):
        stored = usable_vector(v.U[u]) if u < len(v.U) and v.user_has[u] else None
        if not fold or (u < len(v.user_ctr) and user_ctr[u] == v.user_ctr[u]):
            return stored
        key = (id(v), u, user_ctr[u], gen)  # two versions live at once (the attributes strategy)
        if key in foldin_cache:
            x = foldin_cache[key]
            return stored if x is None else x
        hist = by_user.get(u, {})
        its = np.fromiter((i for i in hist if i < len(M) and avail[i]), dtype=np.int64)
        x = None
        prior = _part(v, "user", tokens["user"].get(u))
        if len(its):
            sc = np.array([score_of(hist[i]) for i in its], dtype=np.float64)
            x = usable_vector(fold_in(M[its], sc, v.meta, **({"prior": prior} if prior is not None else {})))
        foldin_cache[key] = x
        return stored if x is None else x

    def _after(n: int) -> None:
        """Retrain, refresh and the curve after event ``n`` (test-then-train's "then")."""
        nonlocal ver, I_ref, avail_ref, ref_gen, ver_a, I_ref_a, avail_ref_a
        if (n + 1) % retrain_every == 0:
            ver = train()
            res.versions += 1
            I_ref, avail_ref = ver.I.copy(), ver.item_has.copy()
            changed_items.clear()
            if with_attrs:
                ver_a = train(attributes=True)
                I_ref_a, avail_ref_a = ver_a.I.copy(), ver_a.item_has.copy()
                changed_a.clear()
            foldin_cache.clear()
            log(f"prequential: version {res.versions} after {n + 1:,} events "
                f"({len(mask):,} triples)")
        elif ver is not None and (n + 1) % refresh_every == 0 and (changed_items or changed_a):
            if changed_items:
                I_ref, avail_ref = _refresh(ver, I_ref, avail_ref, changed_items, by_item)
                changed_items.clear()
            if ver_a is not None and changed_a:
                I_ref_a, avail_ref_a = _refresh(ver_a, I_ref_a, avail_ref_a, changed_a, by_item,
                                                tokens["item"])
                changed_a.clear()
            ref_gen += 1
        if (n + 1) % curve_every == 0 and res.positives:
            for s in strategies:
                res.curve.setdefault(s, []).append((n + 1, res.hits[s] / res.positives))

    for n, (uid, iid, bits) in enumerate(events):
        if uid is None:  # an attribute message: the entity's whole set, as the store keeps it
            ids = items if bits.kind == "item" else users
            j = ids.get(bits.entity_id)
            if bits.kind == "item" and j == len(pos_count):
                pos_count.append(0)
            if bits.kind == "user" and j == len(user_ctr):
                user_ctr.append(0)
            tokens[bits.kind][j] = bits.tokens
            if bits.kind == "item":
                changed_a.add(j)
            else:
                user_ctr[j] += 1  # fold-in sees the new attribute part
            _after(n)
            continue
        u, i = users.get(uid), items.get(iid)
        if u == len(user_ctr):
            user_ctr.append(0)
        if i == len(pos_count):
            pos_count.append(0)
        old = mask.get((u, i), 0)
        first_positive = bool(bits & POSITIVE_BITS) and not (old & POSITIVE_BITS)
        if first_positive and ver is not None:  # test ...
            res.positives += 1
            seen = {j for j, m in by_user.get(u, {}).items() if m & POSITIVE_BITS}
            vmodes = []
            for fold, M, avail, gen in ((False, ver.I, ver.item_has, 0), (True, ver.I, ver.item_has, 0),
                                        (True, I_ref, avail_ref, ref_gen)):
                vec = user_vec(ver, u, fold, M, avail, gen)
                vmodes.append(popular_top(ver.popular, seen) if vec is None
                              else topk(M, avail, vec, seen))
            counts = np.array(pos_count)
            order = np.argsort(-counts, kind="stable")
            vmodes.append(popular_top(order[counts[order] > 0], seen))
            if ver_a is not None:
                vec = user_vec(ver_a, u, True, I_ref_a, avail_ref_a, ref_gen)
                if vec is None:
                    vec = _part(ver_a, "user", tokens["user"].get(u))
                vmodes.append(popular_top(ver_a.popular, seen) if vec is None
                              else topk(I_ref_a, avail_ref_a, vec, seen))
            for s, top in zip(strategies, vmodes, strict=False):
                res.hits[s] += i in top
        new = old | bits  # ... then train
        if new != old:
            mask[(u, i)] = new
            by_user.setdefault(u, {})[i] = new
            by_item.setdefault(i, {})[u] = new
            user_ctr[u] += 1
            changed_items.add(i)
            changed_a.add(i)
            if first_positive:
                pos_count[i] += 1
        _after(n)
    res.seconds = time.perf_counter() - t0
    return res


def _part(v: _Version, kind: str, toks) -> np.ndarray | None:
    """The attribute part of ``toks`` under version ``v``'s token table (None: none)."""
    if not toks or not v.tables or kind not in v.tables:
        return None
    from mcrecall.train.attributes import build_tokens

    vocab, E = v.tables[kind]
    x = build_tokens(1, [toks], vocab=vocab).parts(E)[0]
    return x if x.any() else None


def _refresh(v: _Version, I_ref, avail_ref, changed: set, by_item,
             item_tokens: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Item refresh against version ``v``'s users (as train/refresh.py does in the store);
    with ``item_tokens`` (the attributes strategy) pulled to, or made of, the attribute part."""
    n = max(len(I_ref), max(changed) + 1)
    if n > len(I_ref):
        I_ref = np.vstack([I_ref, np.zeros((n - len(I_ref), I_ref.shape[1]), I_ref.dtype)])
        avail_ref = np.concatenate([avail_ref, np.zeros(n - len(avail_ref), bool)])
    for i in changed:
        hist = by_item.get(i, {})
        us = np.fromiter((u for u in hist if u < len(v.U) and v.user_has[u]), dtype=np.int64)
        prior = _part(v, "item", (item_tokens or {}).get(i))
        sc = np.array([score_of(hist[u]) for u in us], dtype=np.float64)
        if not len(us) or (v.gram is not None and not (sc > 0).any()):
            if prior is not None:
                I_ref[i] = prior
                avail_ref[i] = True
            continue
        x = fold_in_item(v.U[us], sc, v.meta, user_gram=v.gram,
                         **({"prior": prior} if prior is not None else {}))
        if x is not None and np.isfinite(x).all() and x.any():
            I_ref[i] = x
            avail_ref[i] = True
    return I_ref, avail_ref

"""A synthetic interaction stream for the demo: users with tastes, items in clusters, popularity
skew, impressions without actions, redelivered duplicates and a few malformed messages.

Each user likes one or two item clusters. An exposure comes from the user's clusters (a deployed
recommender's personalised feed) or from the global popularity distribution; the chance of each
positive action rises with the user's affinity, so exposure and interest both carry the taste.
"""

from __future__ import annotations

import json

import numpy as np

MALFORMED = [
    (b"\x89PNG not an event", "not UTF-8"),
    (b"{'user_id': 1}", "not JSON"),
    (b'["click", 1, 2]', "not an object"),
    (b'{"user_id": "u1", "item_id": "i1"}', "missing action"),
    (b'{"user_id": 1.5, "item_id": "i1", "action": "click"}', "float id"),
    (b'{"user_id": "u1", "item_id": "i1", "action": "purchase"}', "unknown action"),
    (b'{"user_id": "", "item_id": "i1", "action": "click"}', "empty id"),
    (json.dumps({"user_id": "u1", "item_id": "i1", "action": "click", "blob": "x" * 70_000}).encode(),
     "oversized"),
]


class DemoWorld:
    """The planted truth behind the demo's stream."""

    def __init__(self, n_users: int = 3000, n_items: int = 1500, n_clusters: int = 12, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.n_users, self.n_items, self.n_clusters = n_users, n_items, n_clusters
        self.item_cluster = self.rng.integers(0, n_clusters, n_items)
        pop = 1.0 / np.arange(1, n_items + 1) ** 0.9  # Zipf-like popularity
        self.popularity = pop[self.rng.permutation(n_items)]
        self.popularity /= self.popularity.sum()
        n_tastes = self.rng.integers(1, 3, n_users)
        self.tastes = [self.rng.choice(n_clusters, k, replace=False) for k in n_tastes]
        self.cluster_items = [np.nonzero(self.item_cluster == c)[0] for c in range(n_clusters)]
        self._sent: list[bytes] = []

    def user_id(self, u: int) -> str:
        return f"u{u}"

    def item_id(self, i: int) -> str:
        return f"i{i}"

    def cluster_of(self, item_id: str) -> int:
        return int(self.item_cluster[int(item_id[1:])])

    def _exposures(self, users: np.ndarray) -> np.ndarray:
        """One exposed item per user entry, sampled in bulk (per-call sampling is far too slow)."""
        n = len(users)
        items = np.empty(n, dtype=np.int64)
        personal = self.rng.random(n) < 0.6
        glob = np.nonzero(~personal)[0]
        cdf = np.cumsum(self.popularity)
        items[glob] = np.minimum(np.searchsorted(cdf, self.rng.random(len(glob)) * cdf[-1]), self.n_items - 1)
        pers = np.nonzero(personal)[0]
        clusters = np.array([t[self.rng.integers(len(t))] for t in (self.tastes[u] for u in users[pers])])
        for c in range(self.n_clusters):
            rows = pers[clusters == c]
            members = self.cluster_items[c]
            if len(rows) == 0 or len(members) == 0:
                continue
            ccdf = np.cumsum(self.popularity[members])
            pick = np.minimum(np.searchsorted(ccdf, self.rng.random(len(rows)) * ccdf[-1]), len(members) - 1)
            items[rows] = members[pick]
        return items

    def events(self, n: int, dup_rate: float = 0.03, ts0: int = 1_764_000_000_000) -> list[bytes]:
        """About ``n`` event lines: an impression per exposure, then positive actions."""
        m = max(1, int(n / 2.0))  # about 2 events per exposure
        users = self.rng.integers(0, self.n_users, m)
        items = self._exposures(users)
        liked = np.array([self.item_cluster[i] in self.tastes[u]
                          for u, i in zip(users.tolist(), items.tolist(), strict=True)])
        a = np.where(liked, 0.55, 0.04)
        draws = self.rng.random((m, 5))
        out: list[bytes] = []
        base = ts0 + len(self._sent)
        for k, (u, i) in enumerate(zip(users.tolist(), items.tolist(), strict=False)):
            uid, iid, ts = f"u{u}", f"i{i}", base + k
            out.append(_line(uid, iid, "impression", ts))
            if draws[k, 0] < a[k]:
                out.append(_line(uid, iid, "click", ts + 1))
                for j, action in enumerate(("like", "collect", "share"), start=1):
                    if draws[k, j] < a[k]:
                        out.append(_line(uid, iid, action, ts + 2))
            if draws[k, 4] < dup_rate:  # an at-least-once producer redelivers
                out.append(out[int(self.rng.integers(max(0, len(out) - 50), len(out)))])
        self._sent.extend(out)
        return out

    def attribute_lines(self, ts: int = 1_763_999_999_000) -> list[bytes]:
        """The catalogue and the user profiles as attribute messages (DESIGN §1a): an item's
        ``category`` is its cluster (plus a ``shelf`` that carries nothing), a user's
        ``interests`` their clusters (for a third of the users: profiles are often missing)."""
        out = [json.dumps({"item_id": self.item_id(i), "ts": ts,
                           "attributes": {"category": f"c{int(c)}", "shelf": int(i % 7)}},
                          separators=(",", ":")).encode()
               for i, c in enumerate(self.item_cluster.tolist())]
        out += [json.dumps({"user_id": self.user_id(u), "ts": ts,
                            "attributes": {"interests": [f"c{int(c)}" for c in t]}},
                           separators=(",", ":")).encode()
                for u, t in enumerate(self.tastes) if u % 3 == 0]
        return out

    def new_user_clicks(self, user_id: str, cluster: int, n: int = 6) -> list[bytes]:
        items = self.cluster_items[cluster]
        p = self.popularity[items] / self.popularity[items].sum()
        picked = self.rng.choice(items, size=min(n, len(items)), replace=False, p=p)
        return [_line(user_id, self.item_id(int(i)), a, None)
                for i in picked for a in ("impression", "click", "like")]


def _line(user_id: str, item_id: str, action: str, ts: int | None) -> bytes:
    obj = {"user_id": user_id, "item_id": item_id, "action": action}
    if ts is not None:
        obj["ts"] = int(ts)
    return json.dumps(obj, separators=(",", ":")).encode()

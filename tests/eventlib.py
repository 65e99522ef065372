"""Event streams for the ingest tests and the reference score they must produce (DESIGN §2)."""

from __future__ import annotations

import json
import random

POSITIVE = ("click", "like", "collect", "share")
ACTIONS = ("impression",) + POSITIVE


def random_events(n: int, n_users: int, n_items: int, seed: int = 0, dup_rate: float = 0.2) -> list[bytes]:
    """``n`` event lines with about ``dup_rate`` exact re-deliveries of earlier events."""
    rng = random.Random(seed)
    out: list[bytes] = []
    while len(out) < n:
        if out and rng.random() < dup_rate:
            out.append(out[rng.randrange(len(out))])
            continue
        u = rng.randrange(n_users)
        i = rng.randrange(n_items)
        action = rng.choices(ACTIONS, weights=(6, 3, 1, 1, 1))[0]
        obj = {"user_id": u if rng.random() < 0.5 else str(u), "item_id": f"i{i}", "action": action,
               "ts": 1_700_000_000_000 + len(out)}
        out.append(json.dumps(obj).encode())
    return out


def expected_scores(lines) -> dict[tuple[str, str], int]:
    """Reference scores computed independently of the worker: distinct positive actions per pair."""
    seen: dict[tuple[str, str], set] = {}
    for raw in lines:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(obj, dict) or obj.get("action") not in ACTIONS:
            continue
        u, i = obj.get("user_id"), obj.get("item_id")
        if isinstance(u, bool) or isinstance(i, bool):
            continue
        if not isinstance(u, (int, str)) or not isinstance(i, (int, str)) or u == "" or i == "":
            continue
        acts = seen.setdefault((str(u), str(i)), set())
        if obj["action"] != "impression":
            acts.add(obj["action"])
    return {k: len(v) for k, v in seen.items()}


def store_scores(store) -> dict[tuple[str, str], int]:
    return {(u, i): s for u, i, s in store.iter_triples()}

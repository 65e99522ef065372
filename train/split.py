"""The fixed held-out rule: a pair is held out iff a hash of its external ids is below a fraction.

A hash of (user id, item id) -- not of dense indices, not a random draw -- keeps every pair on the
same side of the split in every run and every store: a warm-started model never trains on a pair
that an earlier version was evaluated on, and figures of successive versions are comparable.
"""

from __future__ import annotations

import hashlib

import numpy as np

SPLIT_RULE = (
    "holdout iff splitmix64(h(user_id) XOR splitmix64(h(item_id))) / 2**64 < fraction, "
    "h(x) = first 8 bytes (little-endian) of blake2b(utf8(x), digest_size=8)"
)
SPLIT_RULE_VERSION = 1

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_G = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _G
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def id_hashes(ids: list[str]) -> np.ndarray:
    """uint64 blake2b hash of each id (computed once per id, not per pair)."""
    out = np.empty(len(ids), dtype=np.uint64)
    for j, s in enumerate(ids):
        digest = hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest()
        out[j] = int.from_bytes(digest, "little")
    return out


def pair_keys(user_hash: np.ndarray, item_hash: np.ndarray) -> np.ndarray:
    """A uint64 key per (user, item) pair from the two id hashes (stable across snapshots and
    stores: it depends on the external ids only)."""
    return _splitmix64(user_hash ^ _splitmix64(item_hash))


def pair_hash_unit(user_hash: np.ndarray, item_hash: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) value per pair from the two id hashes."""
    h = _splitmix64(user_hash ^ _splitmix64(item_hash))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def holdout_mask(user_idx, item_idx, user_ids, item_ids, fraction: float) -> np.ndarray:
    """Boolean (n,) mask of held-out triples under :data:`SPLIT_RULE`."""
    return holdout_from_hashes(user_idx, item_idx, id_hashes(user_ids), id_hashes(item_ids), fraction)


def holdout_from_hashes(user_idx, item_idx, user_hash, item_hash, fraction: float) -> np.ndarray:
    """:func:`holdout_mask` for callers that keep the id hashes (the trainer reuses them)."""
    return pair_hash_unit(user_hash[user_idx], item_hash[item_idx]) < fraction


def split_metadata(fraction: float) -> dict:
    return {"rule": SPLIT_RULE, "rule_version": SPLIT_RULE_VERSION, "fraction": fraction}

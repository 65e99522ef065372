"""Warm start: a new model's factor table begins from a published version's rows.

The one rule both trainers (:mod:`mcrecall.train.als`, :mod:`mcrecall.train.sgd`) follow: a row given in the
warm-start table replaces the random initial row; a row with any NaN (the user or item has no
vector in that version) keeps its random start.
"""

from __future__ import annotations

import numpy as np
import torch


def overlay_known_rows(table: torch.Tensor, init) -> int:
    """Copy the rows of ``init`` without NaN into ``table`` (in place); return how many.

    Parameters
    ----------
    table : (n, k) float tensor, the randomly initialised factors (CPU).
    init : (n, k) array-like or None (then nothing changes); NaN rows are unknown.
    """
    if init is None:
        return 0
    init = torch.from_numpy(np.asarray(init, dtype=np.float32))
    known = ~torch.isnan(init).any(1)
    table[known] = init[known]
    return int(known.sum())

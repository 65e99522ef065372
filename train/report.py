"""The evaluation table (no torch import: `mcrecall status` prints it too)."""

from __future__ import annotations

import math
from typing import Callable


def format_table(ev: dict) -> str:
    """A small fixed-width table of the figures."""
    # "squared baseline": the original matrix-completion objective (squared error on observed
    # scores, docs/design.md §9) fitted on the same split, when it was measured; the gate's pair
    # of figures: the new model on version N's held-out pairs, beside version N's figure on them
    # (stored with it)
    g = ev.get("gate") or {}
    rows = [("model", ev.get("model")),
            (f" on v{g.get('version')}'s pairs", g.get("model")),
            (f"v{g.get('version')} (same pairs)", g.get("current")),
            ("squared baseline", ev.get("squared")),
            ("global mean", ev.get("global_mean")), ("most popular", ev.get("popular"))]
    cols = ["rmse", "mae", "recall@10", "ndcg@10"]
    lines = [f"  {'':<16}" + "".join(f"{c:>11}" for c in cols)]
    for name, fig in rows:
        if fig is None:
            continue
        cells = "".join(f"{'—' if fig.get(c) is None else format(fig[c], '.4f'):>11}"
                        for c in cols)
        lines.append(f"  {name:<16}{cells}")
    lines.append(f"  held-out triples {ev.get('n_test')}, ranked users {ev.get('n_eval_users')}")
    cold = ev.get("cold_items")
    if cold:  # the hybrid model (train/cold.py): cold items ranked among themselves
        def f(v):
            return "—" if v is None else format(v, ".4f")
        lines.append(f"  cold items (Recall@20 among {cold.get('n_cold_items')} held-out items, "
                     f"{cold.get('n_eval_users')} users):")
        lines.append(f"  {'model':<22}{f(cold.get('recall@20')):>11}")
        lines.append(f"  {'attribute popularity':<22}{f(cold.get('attribute_popularity', {}).get('recall@20')):>11}")
        lines.append(f"  {'two-stage mapping':<22}{f(cold.get('two_stage_mapping', {}).get('recall@20')):>11}")
    if g:
        lines.append(f"  gate: on version {g['version']}'s {g['n_test']} held-out pairs still in the store "
                     f"(ranked users {g['n_eval_users']})")
    return "\n".join(lines)


def end_epoch(history: list[dict], rec: dict, model, epochs: int, on_sweep, log: Callable[[str], None],
              word: str, count: int, unit: str) -> None:
    """Add ``on_sweep``'s figures to ``rec``, keep it in ``history`` and log one progress line:
    ``word ep/epochs  loss ...  <other figures>  seconds  <count/seconds> M unit/s``."""
    if on_sweep is not None:
        rec.update(on_sweep(rec["epoch"], model))
    history.append(rec)
    extra = "".join(f"  {k} {v:.4f}" for k, v in rec.items()
                    if k not in ("epoch", "seconds", "loss") and isinstance(v, float)
                    and not math.isnan(v))
    dt = rec["seconds"]
    log(f"  {word} {rec['epoch']:>3}/{epochs}  loss {rec['loss']:.4f}{extra}  {dt:6.2f} s  "
        f"{count / max(dt, 1e-9) / 1e6:.2f}M {unit}/s")

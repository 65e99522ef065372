"""The first fold-in recall after a version loads (the case where the file backends used to build
their id -> row map on the request path), at 100k and 1M items, exact backend, dim 64.

    python benchmarks/bench_first_foldin.py [--items 100000 1000000]

A brand-new user with 100 triples appears right after (wait 0 s) or 1 s after the client first
touched the version; the time is that user's first ``recall(user, 10)``, which includes the
search itself (see the bare exact search in serve.md). Writes its section of
``benchmarks/results/serve.md`` (replacing its previous one) and re-renders that file's summary.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcrecall.core.config import load_config
from mcrecall.ingest.store import TripleStore
from mcrecall.plugins import open_vector_store
from mcrecall.serve import RecallClient
from mcrecall.serve.testing import publish_vectors
from mcrecall.train.versions import ModelRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import FIRST_FOLDIN, RESULTS, render
from resultsfile import add_run, machine_note, table_md


def measure(n: int, rng) -> list[tuple]:
    d = tempfile.mkdtemp(prefix="bench-foldin-")
    items = [f"i{k}" for k in range(n)]
    users = [f"u{k}" for k in range(1000)]
    iv = rng.normal(size=(n, 64)).astype(np.float32) / 8
    uv = rng.normal(size=(1000, 64)).astype(np.float32)
    store = TripleStore(d)
    store.put_scores(["seed"], ["i0"], [1])
    cfg = load_config(environ={}).with_overrides(store={"data_dir": d},
                                                 index={"backend": "exact", "index_type": "FLAT"})
    publish_vectors(ModelRegistry(d), open_vector_store("exact", data_dir=d), user_ids=users,
                    user_vectors=uv, item_ids=items, item_vectors=iv, store_seq=store.seq)
    rows = []
    for wait in (0.0, 1.0):
        client = RecallClient(cfg)
        t = time.perf_counter()
        client.recall("u1", 10)  # the client loads the version
        load_ms = (time.perf_counter() - t) * 1e3
        time.sleep(wait)
        new = f"new-{wait}"
        store.put_scores([new] * 100, rng.choice(items, 100, replace=False).tolist(), [2] * 100)
        t = time.perf_counter()
        res = client.recall(new, 10)
        rows.append((n, wait, load_ms, (time.perf_counter() - t) * 1e3, res[0].source))
        client.close()
    return rows


def section(rows: list[tuple], note: str) -> str:
    """This benchmark's section of serve.md: rows (items, wait s, load ms, fold-in ms, source)."""
    table = table_md(["items", "new user arrives", "first recall (loads version) ms",
                      "first fold-in recall ms", "source"],
                     [[f"{n:,}", f"{wait:g} s after load", f"{load_ms:.1f}", f"{ms:.1f}", source]
                      for n, wait, load_ms, ms, source in rows], "rlrrl")
    return (f"{FIRST_FOLDIN} (`benchmarks/bench_first_foldin.py`, exact backend, dim 64)\n\n"
            "A brand-new user with 100 triples arrives right after, or 1 s after, the client first "
            "touched a version. The first recall of any user loads the version's files once per "
            "process (\"loads version\"); the new user's first recall is a fold-in plus the search. "
            f"{note}\n\n{table}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = [row for n in args.items for row in measure(n, rng)]
    text = section(rows, machine_note() + ".")
    print(text)
    render(args.out, add_run(args.out, text, append=True, replaces=FIRST_FOLDIN))


if __name__ == "__main__":
    main()

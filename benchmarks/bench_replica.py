"""Replica transfer: time from publication to current on a replica, and the log's bytes per version.

    python benchmarks/bench_replica.py [--users 100000] [--items 10000] [--dim 64]
                                       [--versions 3] [--backend faiss] [--out benchmarks/results/replica.md]

A local broker (tansu) runs as a process; ``mcrecall replica --no-events`` runs as a process on its
own empty data dir. The primary publishes ``--versions`` versions of random vectors (users x dim,
items x dim) through the real :func:`mcrecall.train.publish.publish` with ``[replication] publish``:
the version is written locally, then to the model log (acks=all), then made current. Measured per
version, medians reported:

* primary publish (with log): the whole ``publish`` call;
* primary publish without the log (baseline, same run, another data dir): the same call with
  ``[replication] publish = false``;
* publication -> current on the replica: from ``publish`` returning (the control record is
  acknowledged) until the replica's ``users.lmdb`` says the version is current, i.e. fetched,
  staged, verified, users written, index built, pointer flipped;
* log bytes per version: keys + values of the version's records (vectors as float32, ids).

Writes benchmarks/results/replica.md whole (``--append`` keeps its earlier runs): one section a
run, and a summary computed from their tables (``--render`` rewrites the file from its run
sections without measuring).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from resultsfile import RESULTS, add_run, machine_note, marked, num, parse_tables, run_sections, table_md, write_file  # noqa: E402

from mcrecall.core.config import load_config  # noqa: E402
from mcrecall.ingest.broker import LocalBroker  # noqa: E402
from mcrecall.ingest.kafka_io import ensure_topic  # noqa: E402
from mcrecall.plugins import vector_store_from_config  # noqa: E402
from mcrecall.serve.testing import publish_vectors  # noqa: E402
from mcrecall.train.model_log import ModelLog, version_records  # noqa: E402
from mcrecall.train.versions import ModelRegistry  # noqa: E402

TITLE = "Replica transfer (issue 18)"
INTRO = ("Produced by `benchmarks/bench_replica.py`: a version published with `[replication] "
         "publish = true` until `mcrecall replica` serves it. Target: <= 10 s for 100k users x 64 dims.")
TARGET_S = 10.0  # publication -> current on the replica (issue 18) ...
TARGET_SIZE = (100_000, 64)  # ... for this many users x dims
_RUN_HEADING = re.compile(r"## ([\d,]+) users × (\d+) dims, ([\d,]+) items, (\S+), (\d+) versions")


def host(tmp: Path, name: str, bootstrap: str, backend: str, publish: bool):
    return load_config(environ={}).with_overrides(
        kafka={"bootstrap_servers": bootstrap, "topic": "bench-events", "group_id": f"g-{name}"},
        store={"data_dir": str(tmp / name)},
        index={"backend": backend, "metric": "IP", "index_type": "AUTOINDEX"},
        replication={"publish": publish, "topic": "bench-events.models", "timeout_s": 60.0})


def toml_of(cfg, path: Path) -> None:
    k, i = cfg.kafka, cfg.index
    path.write_text(f'[kafka]\nbootstrap_servers = "{k.bootstrap_servers}"\ntopic = "{k.topic}"\n'
                    f'group_id = "{k.group_id}"\n[store]\ndata_dir = "{cfg.data_dir}"\n'
                    f'[index]\nbackend = "{i.backend}"\nmetric = "IP"\nindex_type = "AUTOINDEX"\n'
                    f'[replication]\ntopic = "{cfg.replication.topic}"\n')


def publish_once(cfg, U, V, users, items, log):
    reg = ModelRegistry(cfg.data_dir)
    vs = vector_store_from_config(cfg)
    try:
        t0 = time.perf_counter()
        v = publish_vectors(reg, vs, user_ids=users, user_vectors=U, item_ids=items, item_vectors=V,
                            model_log=log, index_type="AUTOINDEX")
        return v, time.perf_counter() - t0
    finally:
        vs.close()
        reg.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--versions", type=int, default=3)
    ap.add_argument("--backend", default="faiss")
    ap.add_argument("--out", type=Path, default=RESULTS / "replica.md")
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--render", action="store_true", help="rewrite --out from its run sections")
    args = ap.parse_args()
    if args.render:
        print(render(args.out))
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench-replica-"))
    rng = np.random.default_rng(0)
    users = [f"user-{j}" for j in range(args.users)]
    items = [f"item-{j}" for j in range(args.items)]
    rows: dict[str, list] = {"with": [], "without": [], "to_current": [], "bytes": []}
    broker = LocalBroker(log_file=tmp / "broker.log")
    broker.__enter__()
    proc = None
    try:
        ensure_topic(broker.bootstrap_servers, "bench-events", partitions=1)
        primary = host(tmp, "primary", broker.bootstrap_servers, args.backend, True)
        baseline = host(tmp, "baseline", broker.bootstrap_servers, args.backend, False)
        replica = host(tmp, "replica", broker.bootstrap_servers, args.backend, False)
        toml_of(replica, tmp / "replica.toml")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("MCRECALL_CONFIG", None)
        proc = subprocess.Popen([sys.executable, "-m", "mcrecall", "--config", str(tmp / "replica.toml"),
                                 "replica", "--no-events"], env=env, cwd=ROOT,
                                stdout=open(tmp / "replica.log", "wb"), stderr=subprocess.STDOUT)
        log = ModelLog(primary)
        for _ in range(args.versions):
            U = rng.normal(size=(args.users, args.dim)).astype(np.float32)
            V = rng.normal(size=(args.items, args.dim)).astype(np.float32)
            _, t_base = publish_once(baseline, U, V, users, items, None)
            v, t_pub = publish_once(primary, U, V, users, items, log)
            t_done = time.perf_counter()
            reg = ModelRegistry(replica.data_dir, readonly=True)
            try:
                while reg.current_version() != v:
                    if proc.poll() is not None or time.perf_counter() - t_done > 300:
                        raise SystemExit(f"replica did not reach version {v}:\n"
                                         + (tmp / "replica.log").read_text()[-3000:])
                    time.sleep(0.01)
            finally:
                reg.close()
            to_current = time.perf_counter() - t_done
            line, t_wait = "", time.perf_counter()
            while not line and time.perf_counter() - t_wait < 10:  # the log line follows the flip
                found = [ln for ln in (tmp / "replica.log").read_text().splitlines()
                         if "replica_version_current" in ln and f"version={v} " in ln]
                line = found[-1] if found else ""
                time.sleep(0.1)
            parts = dict(re.findall(r"(\w+)=([\d.]+)", line))
            for key in ("stage_s", "users_s", "index_s"):
                rows.setdefault(key, []).append(float(parts.get(key, "nan")))
            meta = ModelRegistry(primary.data_dir, readonly=True).metadata(v)
            recs, _ = version_records(v, meta, users, U, items, V)
            nbytes = sum(len(k) + len(x) for k, x in recs)
            rows["with"].append(t_pub)
            rows["without"].append(t_base)
            rows["to_current"].append(to_current)
            rows["bytes"].append(nbytes)
            print(f"version {v}: publish {t_pub:.2f} s (without log {t_base:.2f} s), replica current "
                  f"{to_current:.2f} s later, log {nbytes / 1e6:.1f} MB", flush=True)
        log.close()
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        broker.__exit__(None, None, None)
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in rows.items()}
    raw = args.users * args.dim * 4 + args.items * args.dim * 4
    table = table_md(
        ["measure", "median", "ratio"],
        [["primary publish, no log (baseline)", f"{med['without']:.2f} s", "1.00×"],
         ["primary publish, with the model log (acks=all)", f"{med['with']:.2f} s",
          f"{med['with'] / med['without']:.2f}×"],
         ["publication -> current on the replica", f"{med['to_current']:.2f} s",
          f"{med['to_current'] / med['without']:.2f}×"],
         ["publication start -> current on the replica", f"{med['with'] + med['to_current']:.2f} s",
          f"{(med['with'] + med['to_current']) / med['without']:.2f}×"],
         ["  of which: fetch + stage the log's records (replica)", f"{med['stage_s']:.2f} s",
          f"{med['stage_s'] / med['without']:.2f}×"],
         ["  of which: write the user vectors (replica)", f"{med['users_s']:.2f} s",
          f"{med['users_s'] / med['without']:.2f}×"],
         ["  of which: build the index from the item vectors (replica)", f"{med['index_s']:.2f} s",
          f"{med['index_s'] / med['without']:.2f}×"],
         ["log bytes per version", f"{med['bytes'] / 1e6:.1f} MB",
          f"{med['bytes'] / raw:.3f}× the raw float32 vectors"]], "lrr")
    target = "met" if med["to_current"] <= 10 else "NOT met"
    section = (f"## {args.users:,} users × {args.dim} dims, {args.items:,} items, {args.backend}, "
               f"{args.versions} versions\n\n{machine_note()}; local broker tansu (memory storage); "
               f"ratios against the primary's own publication without the log, same run.\n\n{table}\n\n"
               f"Target publication -> current on the replica <= 10 s: **{target}** "
               f"({med['to_current']:.2f} s).")
    render(args.out, add_run(args.out, section, append=args.append))
    print(f"wrote {args.out}")


def render(path: Path, runs: list[str] | None = None) -> str:
    runs = run_sections(path) if runs is None else runs
    return write_file(path, TITLE, INTRO, summary(runs), runs)


def summary(runs: list[str]) -> str:
    """A row a run (backend, size): publication -> current on the replica against the target,
    the primary's publication with the log against without, the log's bytes per version."""
    rows = []
    for run in runs:
        head = _RUN_HEADING.match(run)
        t = next((x for x in parse_tables(run) if x.header[:2] == ["measure", "median"]), None)
        if head is None or t is None:
            continue
        users, dims, items, backend, versions = head.groups()
        got = {r[0]: r for r in t.rows}

        def cell(prefix, col=1, got=got):
            return next((r[col] for k, r in got.items() if k.startswith(prefix)), "—")

        secs = num(cell("publication -> current"))
        if (int(users.replace(",", "")), int(dims)) != TARGET_SIZE:
            met = "— (another size)"
        else:
            met = "met" if secs is not None and secs <= TARGET_S else "NOT met"
        rows.append([backend, f"{users} × {dims}", items, versions, cell("publication -> current"),
                     met, cell("of which: build the index"),
                     cell("primary publish, with the model log", 2),
                     f"{cell('log bytes per version')} ({cell('log bytes per version', 2)})"])
    if not rows:
        return ""
    return marked("replica", "\n\n".join([
        f"Medians of each run (a section of `benchmarks/results/replica.md` each), ratios against the "
        f"primary's publication without the log in the same run; target: publication -> current on "
        f"the replica ≤ {TARGET_S:g} s for {TARGET_SIZE[0]:,} users × {TARGET_SIZE[1]} dims.",
        table_md(["backend", "users × dims", "items", "versions", "publication -> current on the replica",
                  f"target ≤ {TARGET_S:g} s", "of which: index build (replica)",
                  "primary publish with the log / without", "log bytes per version"],
                 rows, "llrrrlrrl")]))


if __name__ == "__main__":
    main()

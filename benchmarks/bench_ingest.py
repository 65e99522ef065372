"""Ingest throughput: the worker (topic -> validated scores in LMDB) with each ``[kafka] client``
(kafka-python, confluent) against the raw consume rate of the same client on the same messages,
measured in the same run; plus a file backfill and the snapshot that the trainer reads.

    python benchmarks/bench_ingest.py [--events 300000] [--backfill 1000000] [--repeats 3]

Rates are measured from the first non-empty poll to the last message handled (the consumer-group
join is excluded from both). Prints a markdown table and writes benchmarks/results/ingest.md
whole (``--render`` rewrites it from its run section without measuring).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from operator import attrgetter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from eventlib import random_events
from kafka import KafkaConsumer
from resultsfile import add_run, machine_note, marked, num, parse_tables, run_sections, table_md, write_file

from mcrecall.core.config import load_config
from mcrecall.ingest.backfill import backfill_file
from mcrecall.ingest.broker import LocalBroker
from mcrecall.ingest.produce import produce_lines
from mcrecall.ingest.store import TripleStore
from mcrecall.ingest.worker import IngestWorker


def raw_consume_rate(bootstrap, topic, n) -> float:
    """kafka-python alone: polls of up to 5,000 (the worker's max_poll_records), each value taken."""
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-{uuid.uuid4().hex[:6]}",
                      auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=6000,
                      heartbeat_interval_ms=2000, max_poll_records=5000,
                      max_partition_fetch_bytes=4 << 20, fetch_max_bytes=16 << 20)
    got, t0 = 0, None
    value = attrgetter("value")
    while got < n:
        recs = c.poll(timeout_ms=500)
        if recs and t0 is None:
            t0 = time.monotonic()
        for batch in recs.values():
            # each value taken as bytes, the least a consumer does with a message: by a C-level
            # pass, as the worker does (a Python loop here would slow the baseline down)
            got += len(list(map(value, batch)))
    t1 = time.monotonic()
    c.close()
    return n / (t1 - t0)


def raw_confluent_rate(bootstrap, topic, n) -> float:
    """confluent-kafka alone: batches of up to 5,000 (consume(num_messages)), each value taken."""
    import confluent_kafka

    c = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:6]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False, "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 2000, "max.partition.fetch.bytes": 4 << 20, "fetch.max.bytes": 16 << 20})
    c.subscribe([topic])
    got, t0 = 0, None
    while got < n:
        msgs = c.consume(num_messages=min(5000, n - got), timeout=0.5)
        if msgs and t0 is None:
            t0 = time.monotonic()
        # each value taken as bytes (and errors skipped) by C-level passes, as the worker does
        values = list(map(confluent_kafka.Message.value, msgs))
        got += len(values) - len(msgs) + list(map(confluent_kafka.Message.error, msgs)).count(None)
    t1 = time.monotonic()
    c.close()
    return n / (t1 - t0)


def worker_rate(bootstrap, topic, n, client="kafka-python") -> tuple[float, dict]:
    d = tempfile.mkdtemp(prefix="bench-ingest-")
    cfg = load_config(environ={}).with_overrides(
        kafka={"bootstrap_servers": bootstrap, "topic": topic, "group_id": f"w-{uuid.uuid4().hex[:6]}",
               "session_timeout_ms": 6000, "client": client}, store={"data_dir": d})
    w = IngestWorker(cfg, progress_every_s=1e9)
    st = w.run(max_events=n)
    return n / (st.last_batch_at - st.first_batch_at), TripleStore(d).counts()


def backfill_rows(n: int, repeats: int) -> list[tuple]:
    """``mcrecall ingest --from-file`` of ``n`` events (a fresh store each time) against reading
    and decoding the same file alone (stdlib json: the baseline; orjson: what the backfill uses),
    alternating, ``repeats`` times; medians."""
    import json

    import orjson

    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as d:
        f = Path(d) / "events.jsonl"
        f.write_bytes(b"\n".join(random_events(n, 100_000, 50_000, seed=2, dup_rate=0.1)) + b"\n")
        parse, fast, fill = [], [], []
        for k in range(repeats):
            for loads, out in ((json.loads, parse), (orjson.loads, fast)):
                t = time.monotonic()
                with open(f, "rb") as fh:
                    for line in fh:
                        loads(line)
                out.append(time.monotonic() - t)
            st = backfill_file(f, TripleStore(Path(d) / f"data{k}"), progress_every_s=1e9)
            assert st.events == n and st.rejected == 0
            fill.append(st.seconds)
    p, o, b = statistics.median(parse), statistics.median(fast), statistics.median(fill)
    return [("read + json.loads only (baseline)", f"{n / p:,.0f} ev/s", "1.00", _spread([n / x for x in parse])),
            ("read + orjson.loads only", f"{n / o:,.0f} ev/s", f"{p / o:.2f}", _spread([n / x for x in fast])),
            (f"backfill {n:,} events from file", f"{n / b:,.0f} ev/s", f"{p / b:.2f}",
             _spread([n / x for x in fill]) + f"; {b:.1f} s total")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--backfill", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest.md"))
    ap.add_argument("--render", action="store_true", help="rewrite --out from its run section")
    args = ap.parse_args()
    if args.render:
        print(render(Path(args.out)))
        return
    import logging
    logging.basicConfig(level=logging.WARNING)

    rows = kafka_rows(args)

    rows += backfill_rows(args.backfill, args.repeats)
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as d:
        # exactly 1,000,000 distinct pairs: 20,000 users x 50 items each
        import numpy as np

        n_pairs = 1_000_000
        store = TripleStore(Path(d))
        rng = np.random.default_rng(3)
        users = np.repeat(np.arange(20_000), n_pairs // 20_000)
        items = (users * 7919 + np.tile(np.arange(n_pairs // 20_000), 20_000) * 613) % 60_000
        for a in range(0, n_pairs, 200_000):
            store.put_scores(users[a:a + 200_000].tolist(), items[a:a + 200_000].tolist(),
                             rng.integers(0, 5, min(200_000, n_pairs - a)).tolist())
        snaps = []
        for _ in range(args.repeats):
            t = time.monotonic()
            snap = store.snapshot()
            snaps.append(time.monotonic() - t)
        rows.append((f"snapshot {len(snap):,} pairs -> numpy", f"{statistics.median(snaps):.2f} s",
                     "", f"target < 2 s; {store.counts()['users']:,} users, {store.counts()['items']:,} items"))

    print(write_results(args, rows))


def kafka_rows(args) -> list[tuple]:
    """Raw consume and worker rates of each client on one topic, alternating, medians."""
    try:
        import confluent_kafka  # noqa: F401

        clients = ("kafka-python", "confluent")
    except ImportError:
        print("confluent-kafka is not installed (the mcrecall[fast] extra): kafka-python only")
        clients = ("kafka-python",)
    raw_fn = {"kafka-python": raw_consume_rate, "confluent": raw_confluent_rate}
    lines = random_events(args.events, 20_000, 10_000, seed=1)
    raw = {c: [] for c in clients}
    work = {c: [] for c in clients}
    with LocalBroker() as broker:
        cfg = load_config(environ={}).with_overrides(
            kafka={"bootstrap_servers": broker.bootstrap_servers, "topic": "bench", "partitions": 4})
        t = time.monotonic()
        produce_lines(lines, cfg)
        produce_s = time.monotonic() - t
        for _ in range(args.repeats):  # alternate, so drift on a noisy machine hits every row
            for c in clients:
                raw[c].append(raw_fn[c](broker.bootstrap_servers, "bench", len(lines)))
                work[c].append(worker_rate(broker.bootstrap_servers, "bench", len(lines), c)[0])
    rows = [("produce (kafka-python, acks=all)", f"{len(lines) / produce_s:,.0f} ev/s", "", "")]
    for c in clients:
        raw_m, work_m = statistics.median(raw[c]), statistics.median(work[c])
        rows.append((f"raw {c} consume (baseline)", f"{raw_m:,.0f} ev/s", "1.00", _spread(raw[c])))
        rows.append((f"worker, client = {c}: validate + score + LMDB txn", f"{work_m:,.0f} ev/s",
                     f"{work_m / raw_m:.2f}", _spread(work[c])))
    return rows


# --- the results file ------------------------------------------------------------------------

TITLE = "Ingest benchmark"
INTRO = ("Written whole by `benchmarks/bench_ingest.py`. The worker (topic -> validated scores in "
         "LMDB) with each `[kafka] client` against the raw consume rate of the same client on the "
         "same messages, measured in the same run, alternating; a file backfill against reading "
         "and parsing the same file; the snapshot the trainer reads.")
WORKER_TARGET = 0.70  # the worker keeps this share of its client's raw consume rate
CONFLUENT_WORKER_TARGET = 100_000  # ev/s, the worker with client = confluent (2 shared cores)
SNAPSHOT_TARGET_S = 2.0  # snapshot of 1,000,000 pairs


def write_results(args, rows) -> str:
    table = table_md(["measurement", "median", "ratio to baseline", "notes"], [list(r) for r in rows])
    section = (f"## Run: `python benchmarks/bench_ingest.py --events {args.events} "
               f"--backfill {args.backfill} --repeats {args.repeats}`\n\n"
               f"{machine_note()}; local tansu broker, 4 partitions, medians of {args.repeats}."
               f"\n\n{table}")
    return render(Path(args.out), add_run(Path(args.out), section, append=False))


def render(path: Path, runs: list[str] | None = None) -> str:
    runs = run_sections(path) if runs is None else runs
    return write_file(path, TITLE, INTRO, summary(runs), runs)


def summary(runs: list[str]) -> str:
    """The latest run's table and what it says against the targets."""
    if not runs:
        return ""
    t = parse_tables(runs[-1])[0]

    def row(prefix):
        return next((r for r in t.rows if r[0].startswith(prefix)), None)

    said = []
    for worker in (r for r in t.rows if r[0].startswith("worker") and num(r[2]) is not None):
        ratio = num(worker[2])
        client = worker[0].split("client = ")[1].split(":")[0] if "client = " in worker[0] else "kafka-python"
        said.append(f"- The worker with {client} keeps {ratio:.2f} of that client's raw consume rate "
                    f"measured in the same run (target >= {WORKER_TARGET:.2f}: "
                    f"{'met' if ratio >= WORKER_TARGET else 'NOT met'}).")
        if client == "confluent" and num(worker[1]) is not None:
            rate = num(worker[1])
            said.append(f"- The worker with confluent runs at {worker[1]} (target >= "
                        f"{CONFLUENT_WORKER_TARGET:,} ev/s: "
                        f"{'met' if rate >= CONFLUENT_WORKER_TARGET else 'NOT met'}).")
    backfill = row("backfill")
    if backfill and num(backfill[2]) is not None:
        said.append(f"- The file backfill runs at {backfill[1]}, {num(backfill[2]):.2f} of the rate "
                    "of reading and parsing the same file alone.")
    snap = row("snapshot")
    if snap and num(snap[1]) is not None:
        secs = num(snap[1])
        what = snap[0].replace(" -> numpy", "").replace("snapshot ", "snapshot of ", 1)
        said.append(f"- The trainer's {what} takes {snap[1]} (target "
                    f"< {SNAPSHOT_TARGET_S:g} s: {'met' if secs < SNAPSHOT_TARGET_S else 'NOT met'}).")
    return marked("ingest", table_md(t.header, t.rows) + "\n\n" + "\n".join(said))


def _spread(xs) -> str:
    return f"runs: {', '.join(f'{x:,.0f}' for x in xs)}"


if __name__ == "__main__":
    main()

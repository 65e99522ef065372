"""``mcrecall demo``: the whole system on embedded defaults, end to end, in a few minutes.

Starts a local Kafka-protocol broker and a local Milvus Lite server, streams a synthetic event
stream (with duplicates and malformed messages) through the ingest worker, trains and publishes
version 1, serves recalls (a brand-new user through fold-in), keeps streaming while version 2
trains from a warm start — meanwhile a brand-new item is recalled seconds after its first clicks
through item refresh (``mcrecall refresh --every 1s``), before version 2 exists — and writes a
report (text + PNG) to the output folder. Every process it starts is stopped on the way out;
``<out>/mcrecall.toml`` then points the ``mcrecall`` command at the demo's data (the item vectors
are read from the Milvus Lite file the demo's server wrote).
"""

from __future__ import annotations

import collections
import json
import shlex
import shutil
import threading
import time
from contextlib import ExitStack
from pathlib import Path

OUT_DEFAULT = "demo-output"
CONFIG_NAME = "mcrecall.toml"


def add_demo_arguments(p) -> None:
    p.add_argument("--out", default=OUT_DEFAULT, help=f"output folder (default: {OUT_DEFAULT})")
    p.add_argument("--events", type=int, default=90_000, help="events in the first stream")
    p.add_argument("--more-events", type=int, default=40_000, help="events streamed during retraining")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objective", default="implicit", choices=["implicit", "squared", "bce"],
                   help="objective of the published versions (default implicit: recall is a ranking "
                        "task); the squared-error baseline (the original matrix-completion objective) is "
                        "always trained alongside for comparison")


class Report:
    """Prints progress and keeps every line for report.txt."""

    def __init__(self):
        self.lines: list[str] = []
        self.t0 = time.monotonic()

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def step(self, text: str) -> None:
        self.say(f"[{time.monotonic() - self.t0:6.1f}s] {text}")


def run_demo(args, cfg) -> int:
    out = Path(args.out)
    # written again at the end: a demo that fails half-way leaves no config pointing at its data
    (out / CONFIG_NAME).unlink(missing_ok=True)
    if (out / "data").exists():
        shutil.rmtree(out / "data")
    out.mkdir(parents=True, exist_ok=True)
    rep = Report()
    with ExitStack() as stack:
        return _demo(args, cfg, out, rep, stack)


def _demo(args, cfg, out: Path, rep: Report, stack: ExitStack) -> int:
    from mcrecall.demo_stream import MALFORMED, DemoWorld
    from mcrecall.ingest.broker import LocalBroker
    from mcrecall.ingest.kafka_io import PLAINTEXT_OVERRIDES, ensure_topic, kafka_security_kwargs
    from mcrecall.ingest.produce import make_producer, produce_lines
    from mcrecall.ingest.store import TripleStore
    from mcrecall.plugins.milvus_server import MilvusLiteServer

    rep.say("mcrecall demo — matrix-completion recall, end to end (embedded defaults)")
    rep.say(f"output folder: {out.resolve()}")
    rep.step("starting the local Kafka-protocol broker (tansu, memory storage) ...")
    broker = LocalBroker(log_file=out / "broker.log").start()
    stack.callback(broker.stop)
    rep.step(f"  broker on {broker.bootstrap_servers} (pid {broker.proc.pid})")
    rep.step("starting the local Milvus Lite server (several processes may share it) ...")
    # the server's data directory is the default Milvus Lite file of the data dir, so that
    # mcrecall.toml can read the versions in file mode once the server is gone
    milvus = MilvusLiteServer(out / "data", log_path=out / "milvus.log")  # serves data/milvus.db
    uri = milvus.start()
    stack.callback(milvus.stop)
    rep.step(f"  Milvus Lite on {uri} (pid {milvus.pid})")

    topic = cfg.kafka.topic
    cfg = cfg.with_overrides(
        # the demo's own broker is plaintext, whatever the environment says about production
        kafka={"bootstrap_servers": broker.bootstrap_servers, "session_timeout_ms": 6000,
               **PLAINTEXT_OVERRIDES},
        store={"data_dir": str(out / "data")},
        index={"backend": "milvus", "uri": uri},
        # a few hundred held-out pairs: Recall@10's standard error is about 0.02, so the default
        # gate (0.01) would refuse version 2 on noise about one run in three
        train={"objective": args.objective,
               "max_recall_regression": max(cfg.train.max_recall_regression, 0.05)})
    security = kafka_security_kwargs(cfg)
    ensure_topic(broker.bootstrap_servers, topic, cfg.kafka.partitions, security=security)

    world = DemoWorld(args.users, args.items, seed=args.seed)
    producer = make_producer(broker.bootstrap_servers, **security)
    stack.callback(producer.close)

    # the worker runs for the whole demo as its own process, as it would in production
    worker = _start_worker(cfg, args, out / "worker.log")
    stack.callback(_stop_process, worker)
    rep.step(f"ingest worker started (pid {worker.pid}, log {out / 'worker.log'})")
    store = TripleStore(cfg.data_dir)

    lines = world.attribute_lines() + world.events(args.events)  # the catalogue first
    bad = [raw for raw, _ in MALFORMED]
    stream = _interleave(lines, bad)
    rep.step(f"producing {len(stream):,} events ({args.users:,} users, {args.items:,} items, "
             f"{len(bad)} malformed) to topic {topic!r} ...")
    t = time.monotonic()
    produce_lines(stream, cfg, validate=False, producer=producer)
    rep.step(f"  produced in {time.monotonic() - t:.1f}s; the worker consumes concurrently")
    _wait_ingested(store, len(stream), rep)
    c = store.counts()
    rep.step(f"  stored: {c['pairs']:,} scored pairs from {c['events']:,} events; "
             f"{c['bad_events']} bad events sent to {topic}.dlq; attributes of "
             f"{c.get('items_with_attributes', 0):,} items and {c.get('users_with_attributes', 0):,} users")

    rep.step(f"training version 1 (objective {cfg.train.objective}, similarity {cfg.train.similarity}, "
             f"metric {cfg.index.metric}, {cfg.index.index_type}) ...")
    v1 = _train(cfg, rep)
    comparisons = _compare_objectives(cfg, _store_copy(store, out, 1) if _fits_comparison(cfg) else None,
                                      rep, v1)
    from mcrecall.serve import RecallClient

    client = RecallClient(cfg)
    stack.callback(client.close)
    rep.step(f"version {client.version} is current; recalls:")
    demo_users = [0, 1, 2]
    for u in demo_users:
        _show_recall(client, world, world.user_id(u), rep, taste=list(world.tastes[u]))

    newbie = "newcomer-1"
    cluster = int(world.tastes[0][0])
    rep.step(f"a brand-new user {newbie!r} clicks a few items of cluster {cluster} ...")
    t = time.monotonic()
    newbie_lines = world.new_user_clicks(newbie, cluster)
    produce_lines(newbie_lines, cfg, validate=True, producer=producer)
    while not store.user_history(newbie)[0] and time.monotonic() - t < 30:
        time.sleep(0.02)
    stored_s = time.monotonic() - t
    _show_recall(client, world, newbie, rep, taste=[cluster], note=f"stored {stored_s:.2f}s after producing; "
                 "no retraining")

    refresher = _start_worker(cfg, args, out / "refresher.log",
                              ["refresh", "--every", "1s"])
    stack.callback(_stop_process, refresher)
    fresh_ok = _fresh_item(client, world, cfg, producer, store, rep, cluster, refresher.pid,
                           out / "refresher.log")
    _attribute_only_item(client, world, cfg, producer, store, rep, cluster)
    _stop_process(refresher)

    rep.step(f"streaming {args.more_events:,} more events while version 2 trains (warm start) ...")
    more = world.events(args.more_events)
    streamer = threading.Thread(target=_stream_slowly, args=(more, cfg, producer), daemon=True)
    streamer.start()
    time.sleep(1.0)
    # the comparison's copy, taken right before version 2's snapshot: nearly the same triples
    # (the stream goes on meanwhile; the table shows both counts)
    copy_v2 = _store_copy(store, out, 2) if _fits_comparison(cfg) else None
    v2 = _train(cfg, rep)
    streamer.join()
    _wait_ingested(store, len(stream) + len(newbie_lines) + len(more), rep)
    for objective, metas_ in _compare_objectives(cfg, copy_v2, rep, v2).items():
        comparisons.setdefault(objective, []).extend(metas_)
    rep.step(f"version {client.version} is current; the same user after retraining:")
    _show_recall(client, world, world.user_id(demo_users[0]), rep, taste=list(world.tastes[demo_users[0]]))

    rep.step("evaluation per version (held-out pairs; baselines measured in the same run):")
    from mcrecall.train.versions import ModelRegistry

    reg = ModelRegistry(cfg.data_dir, readonly=True)
    metas = [reg.metadata(v) for v in (v1, v2) if v is not None and v in reg.versions()]
    rep.say(_versions_table(metas + [m for ms in comparisons.values() for m in ms]))
    rep.say("    (RMSE is meaningless for the ranking objectives, which predict a preference, not a score;\n"
            "     the squared-error baseline (squared error on observed scores only) fits scores yet\n"
            "     ranks below 'most popular', having never seen what users do not choose - while the\n"
            "     implicit objective, negatives from all items, ranks far above it; docs/design.md §9)")
    rep.step(f"dead-letter topic {topic}.dlq:")
    for reason, n in _dlq_reasons(broker.bootstrap_servers, f"{topic}.dlq", len(bad), security=security).most_common():
        rep.say(f"    {n} x {reason}")

    _stop_process(worker)
    from mcrecall.plot import plot_report

    plot_report(metas, out / "report.png", comparisons)
    config_path = write_demo_config(out, cfg)
    failed = "" if fresh_ok else "; FAILED: the fresh item did not reach the top 10 (see above)"
    rep.step(f"done in {time.monotonic() - rep.t0:.0f}s; report: {out / 'report.txt'}, {out / 'report.png'}"
             f"{failed}")
    command = f"{_mcrecall_command()} --config {shlex.quote(str(config_path))}"
    rep.say(f"query the demo's data after it has stopped: {command} status")
    rep.say(f"    (and e.g. {command} recall u0 -k 10)")
    (out / "report.txt").write_text("\n".join(rep.lines) + "\n")
    return 0 if fresh_ok else 1


def _mcrecall_command() -> str:
    """``mcrecall`` when that is on PATH, else this environment's script (``.venv/bin/mcrecall``
    after scripts/demo.sh), relative to the working directory when it lies below it."""
    import os
    import sys

    if shutil.which("mcrecall"):
        return "mcrecall"
    script = Path(sys.prefix) / "bin" / "mcrecall"
    if not script.exists():
        return "mcrecall"
    try:
        return shlex.quote(str(script.relative_to(Path(os.getcwd()))))
    except ValueError:
        return shlex.quote(str(script))


def _toml_string(value: str) -> str:
    # a TOML basic string: JSON's escapes (\" \\ \n \uXXXX for control characters) are TOML's;
    # non-ASCII stays literal (TOML's \u may not encode half a surrogate pair)
    return json.dumps(value, ensure_ascii=False)


def write_demo_config(out: Path, cfg) -> Path:
    """Write ``<out>/mcrecall.toml``: the demo's data dir, objective and vector store, as absolute
    paths (valid from any working directory), readable once the demo's servers are gone."""
    data_dir = Path(cfg.data_dir).resolve()
    text = "\n".join([
        "# Written by `mcrecall demo`: the demo's data, for the mcrecall command after the demo.",
        f"#   mcrecall --config {out / CONFIG_NAME} status",
        "# The demo's broker (memory storage) and Milvus Lite server have stopped: item vectors are",
        "# read from the Milvus Lite file in the data dir (file mode serves one process at a time).",
        "",
        "[store]",
        f"data_dir = {_toml_string(str(data_dir))}",
        "",
        "[train]",
        f"objective = {_toml_string(cfg.train.objective)}",
        f"similarity = {_toml_string(cfg.train.similarity)}",
        "",
        "[index]",
        'backend = "milvus"',
        f"uri = {_toml_string(str(data_dir / 'milvus.db'))}",
        f"collection = {_toml_string(cfg.index.collection)}",
        f"metric = {_toml_string(cfg.index.metric)}",
        "",
    ])
    path = out / CONFIG_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


FRESH_TOP, FRESH_WITHIN_S = 10, 20.0


def _fresh_item(client, world, cfg, producer, store, rep, cluster, refresher_pid, refresher_log) -> bool:
    """A brand-new item is liked by the users of one cluster; the refresher gives it a vector in
    version 1 and a user of that cluster is recalled it in the top 10 — no retraining. Returns
    whether it got there within 20 s (a miss is printed as a failure)."""
    from mcrecall.demo_stream import _line
    from mcrecall.ingest.produce import produce_lines

    item = "fresh-item-1"
    target = world.user_id(0)
    # every other user of the cluster: as liked as the cluster's popular items, so that it
    # earns a top-10 place on the model's own terms (a few fans leave it at rank ~60)
    fans = [u for u in range(1, world.n_users) if cluster in world.tastes[u]]
    lines = [_line(world.user_id(u), item, a, None) for u in fans
             for a in ("impression", "click", "like", "collect")]
    rep.step(f"a brand-new item {item!r}: {len(fans)} users of cluster {cluster} click and like it; "
             f"`mcrecall refresh --every 1s` is running (pid {refresher_pid}, log {refresher_log}) ...")
    t = time.monotonic()
    produce_lines(lines, cfg, validate=True, producer=producer)
    while store.item_seq(item) == 0 and time.monotonic() - t < 30:
        time.sleep(0.01)
    stored = time.monotonic()
    rank = None
    while time.monotonic() - stored < FRESH_WITHIN_S:
        top = [r.item_id for r in client.recall(target, k=100, exclude_seen=True)]
        rank = top.index(item) + 1 if item in top else None
        if rank is not None and rank <= FRESH_TOP:
            break
        time.sleep(0.05)
    recalled = time.monotonic()
    if rank is None or rank > FRESH_TOP:
        where = "not in its top 100" if rank is None else f"only at rank {rank}"
        rep.say(f"    FAILED: {item!r} did not reach {target!r}'s top {FRESH_TOP} within "
                f"{FRESH_WITHIN_S:g} s of being stored ({where}; see {refresher_log})")
        return False
    rep.say(f"    stored {stored - t:.2f}s after producing; in {target!r}'s top {FRESH_TOP} (cluster "
            f"{cluster}) at rank {rank} {recalled - stored:.2f}s after being stored, still on "
            f"version {client.version} (no retraining)")
    _show_recall(client, world, target, rep, taste=list(world.tastes[0]))
    return True


def _attribute_only_item(client, world, cfg, producer, store, rep, cluster):
    """A brand-new item that nobody has touched, only its attribute message: the refresher gives
    it its attribute part (the hybrid model) and a user of its category is recalled it."""
    import json

    from mcrecall.ingest.produce import produce_lines

    item, target = "fresh-item-2", world.user_id(0)
    line = json.dumps({"item_id": item, "attributes": {"category": f"c{cluster}", "shelf": 3}}).encode()
    rep.step(f"a brand-new item {item!r} with only its attributes (category c{cluster}), no interaction yet ...")
    t = time.monotonic()
    produce_lines([line], cfg, validate=True, producer=producer)
    while store.item_seq(item) == 0 and time.monotonic() - t < 30:
        time.sleep(0.01)
    stored, rank = time.monotonic(), None
    while time.monotonic() - stored < 20:
        top = [r.item_id for r in client.recall(target, k=100, exclude_seen=True)]
        if item in top:
            rank = top.index(item) + 1
            break
        time.sleep(0.05)
    if rank is None:
        rep.say(f"    {item!r} was not recalled for {target!r} within 20 s (attributes off, or another "
                "objective than implicit / bce: see refresher.log)")
        return
    rep.say(f"    recalled for {target!r} (likes cluster {cluster}) at rank {rank} among 100, "
            f"{time.monotonic() - stored:.2f}s after being stored, before its first interaction")


def _start_worker(cfg, args, log_path, command=("ingest",)):
    import os
    import subprocess
    import sys

    from mcrecall.ingest.kafka_io import PLAINTEXT_OVERRIDES

    env = dict(os.environ)
    env.update({"MCRECALL_KAFKA_BOOTSTRAP_SERVERS": cfg.kafka.bootstrap_servers,
                "MCRECALL_KAFKA_TOPIC": cfg.kafka.topic,
                "MCRECALL_KAFKA_SESSION_TIMEOUT_MS": str(cfg.kafka.session_timeout_ms),
                "MCRECALL_STORE_DATA_DIR": str(cfg.data_dir),
                "MCRECALL_INDEX_BACKEND": cfg.index.backend, "MCRECALL_INDEX_URI": cfg.index.uri})
    env.update({f"MCRECALL_KAFKA_{k.upper()}": v for k, v in PLAINTEXT_OVERRIDES.items()})
    if args.config:
        env["MCRECALL_CONFIG"] = str(args.config)
    return subprocess.Popen([sys.executable, "-m", "mcrecall", *command], env=env,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def _stop_process(proc, timeout=20):
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _interleave(lines, bad):
    out = list(lines)
    step = max(1, len(out) // (len(bad) + 1))
    for k, raw in enumerate(bad):
        out.insert((k + 1) * step + k, raw)
    return out


def _wait_ingested(store, n, rep, timeout=120):
    t = time.monotonic()
    last = 0.0
    while time.monotonic() - t < timeout:
        c = store.counts()
        done = c["events"] + c["bad_events"] + c.get("attribute_events", 0)
        if done >= n:
            return
        if time.monotonic() - last > 5:
            rep.step(f"  ingesting: {done:,}/{n:,} events stored")
            last = time.monotonic()
        time.sleep(0.1)
    raise RuntimeError(f"the worker did not store {n} events within {timeout}s")


def _train(cfg, rep):
    from mcrecall.train.trainer import train_run

    def say(message: str) -> None:
        for line in message.splitlines():
            rep.say("    " + line)

    res = train_run(cfg, log=say)
    if res.status != "published":
        rep.say(f"    (not published: {res.status})")
    return res.version


def _store_copy(store, out: Path, version: int) -> Path:
    """A consistent copy of the triple store for the comparison with published ``version``."""
    dest = out / "data" / f"compare-v{version}" / "source"
    if dest.parent.exists():
        shutil.rmtree(dest.parent)
    store.backup(dest)
    return dest


def _fits_comparison(cfg) -> bool:
    """Whether :func:`_compare_objectives` trains a model of its own (needs a store copy): the
    trainer measures the squared-error baseline itself unless it is the objective or disabled."""
    squared_measured = cfg.train.objective != "squared" and cfg.train.compare_squared_sweeps > 0
    return cfg.train.objective != "implicit" or not squared_measured


def _compare_objectives(cfg, source: Path | None, rep, version) -> dict[str, list[dict]]:
    """Train the other objectives on the store copy ``source`` (exact backend, not served);
    objective -> [metadata with ``compared_with`` = the published ``version``]."""
    from mcrecall.train.trainer import train_run
    from mcrecall.train.versions import ModelRegistry

    metas: dict[str, list[dict]] = {}
    published = ModelRegistry(cfg.data_dir, readonly=True).metadata(version) if version else {}
    for objective in ("squared", "implicit"):
        if objective == cfg.train.objective or version is None:
            continue
        seed_row = (published.get("evaluation") or {}).get("squared")
        if objective == "squared" and seed_row:
            # the trainer already fitted the squared-error baseline on the same split: don't fit it twice
            metas.setdefault(objective, []).append(_seed_comparison(published, seed_row, version))
            rep.step(f"  for comparison, the squared-error baseline on the same split: "
                     f"RMSE {seed_row['rmse']:.4f}, Recall@10 {seed_row['recall@10']:.4f}")
            continue
        if source is None:
            continue
        scratch = source.parent / objective
        if scratch.exists():
            shutil.rmtree(scratch)
        shutil.copytree(source, scratch)
        ccfg = cfg.with_overrides(store={"data_dir": str(scratch)}, train={"objective": objective},
                                  index={"backend": "exact", "index_type": "FLAT", "uri": ""})
        res = train_run(ccfg, log=lambda m: None)
        if res.version is not None:
            m = ModelRegistry(scratch, readonly=True).metadata(res.version)
            m["version"] = f"{version} ({objective}, not served)"
            m["compared_with"] = version
            metas.setdefault(objective, []).append(m)
            rep.step(f"  for comparison, the {objective} objective on the same triples: "
                     f"RMSE {m['evaluation']['model']['rmse']:.4f}, "
                     f"Recall@10 {m['evaluation']['model']['recall@10']:.4f}")
    return metas


def _seed_comparison(published: dict, seed_row: dict, version: int) -> dict:
    """The trainer's own squared comparison (``evaluation.squared`` of the published version)
    shaped as a comparison version's metadata for the table and the plot."""
    ev = published.get("evaluation") or {}
    return {"version": f"{version} (squared, not served)", "objective": "squared",
            "n_triples": published.get("n_triples", 0), "compared_with": version,
            "evaluation": {"model": seed_row, "global_mean": ev.get("global_mean", {}),
                           "popular": ev.get("popular", {})}}


def _show_recall(client, world, user_id, rep, taste, note=""):
    res = client.recall(user_id, k=10, exclude_seen=True)
    hits = sum(r.item_id[1:].isdigit() and world.cluster_of(r.item_id) in taste for r in res)
    src = res[0].source if res else "-"
    rep.say(f"    recall({user_id!r}, 10, exclude_seen=True)  source={src}  version={client.version}  "
            f"{hits}/10 in the user's clusters {sorted(int(t) for t in taste)}" + (f"  ({note})" if note else ""))
    rep.say("      " + "  ".join(f"{r.item_id}:{r.score:.2f}" for r in res))


def _stream_slowly(lines, cfg, producer, chunks=10, pause=0.5):
    from mcrecall.ingest.produce import produce_lines

    n = max(1, len(lines) // chunks)
    for k in range(0, len(lines), n):
        produce_lines(lines[k:k + n], cfg, validate=True, producer=producer)
        time.sleep(pause)


def _dlq_reasons(bootstrap, dlq, expected, timeout=20, security=None):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **(security or {}))
    tp = TopicPartition(dlq, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    reasons = collections.Counter()
    t = time.monotonic()
    while sum(reasons.values()) < expected and time.monotonic() - t < timeout:
        for recs in c.poll(timeout_ms=500).values():
            for r in recs:
                h = dict(r.headers)
                reasons[h.get("error", b"?").decode()[:90]] += 1
    c.close()
    return reasons


def _versions_table(metas) -> str:
    rows = [("version", "objective", "triples", "RMSE", "Recall@10", "NDCG@10",
             "RMSE mean", "Recall@10 popular")]
    for m in metas:
        ev = m.get("evaluation", {})
        mod, mean, pop = ev.get("model", {}), ev.get("global_mean", {}), ev.get("popular", {})
        rows.append((str(m["version"]), m.get("objective", "?"), f"{m['n_triples']:,}",
                     _f(mod.get("rmse")), _f(mod.get("recall@10")), _f(mod.get("ndcg@10")),
                     _f(mean.get("rmse")), _f(pop.get("recall@10"))))
    w = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("    " + "  ".join(f"{x:>{w[c]}}" for c, x in enumerate(r)) for r in rows)


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"

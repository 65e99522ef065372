"""What freshness is worth: the prequential table, from a real run of the command (issue 20 #12).

    python benchmarks/bench_prequential.py              # the README's setting (~106k events)
    python benchmarks/bench_prequential.py --render     # rewrite the file from its run section

Writes ``mcrecall.train.synthetic.make_stream()``'s events to a JSONL file, then runs
``mcrecall evaluate --prequential FILE --json --plot benchmarks/results/prequential.png`` as a
user would (a subprocess; objective and dim through the environment) and writes
benchmarks/results/prequential.md whole: the run section holds the command and the table it
printed; the summary (the block README.md shows, copied by update_readme.py) is computed from
that table, so the README cannot drift from what the command gives. The baseline ("most
popular") is measured in the same replay; ratios are against it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from resultsfile import RESULTS, add_run, machine_note, marked, num, parse_tables, run_sections, table_md, write_file  # noqa: E402

TITLE = "Prequential benchmark"
INTRO = ("Written whole by `benchmarks/bench_prequential.py` from a real run of "
         "`mcrecall evaluate --prequential` (test-then-train replay of a time-ordered event "
         "file); the baseline, most popular, is measured in the same replay.")
OUT = RESULTS / "prequential.md"
PNG = RESULTS / "prequential.png"
STRATEGIES = ("periodic retrain only", "+ user fold-in", "+ item refresh", "most popular")


def write_stream(path: Path, n_exposures: int, seed: int) -> int:
    sys.path.insert(0, str(ROOT))
    from mcrecall.train.synthetic import make_stream

    events = make_stream(n_exposures=n_exposures, seed=seed)
    with open(path, "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
    return len(events)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exposures", type=int, default=30_000, help="make_stream n_exposures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--objective", default="implicit")
    ap.add_argument("--retrain-every", type=int, default=10_000)
    ap.add_argument("--refresh-every", type=int, default=100)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--plot", default=str(PNG))
    ap.add_argument("--render", action="store_true", help="rewrite --out from its run section")
    a = ap.parse_args(argv)
    if a.render:
        print(render(Path(a.out)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "stream.jsonl"
        n = write_stream(events, a.exposures, a.seed)
        cmd = ["mcrecall", "evaluate", "--prequential", "stream.jsonl", "--retrain-every",
               str(a.retrain_every), "--refresh-every", str(a.refresh_every), "--json",
               "--plot", str(a.plot)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), MCRECALL_TRAIN_OBJECTIVE=a.objective,
                   MCRECALL_TRAIN_DIM=str(a.dim), OMP_WAIT_POLICY="PASSIVE")
        env.pop("MCRECALL_CONFIG", None)
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "mcrecall", *cmd[1:3], str(events), *cmd[4:]],
                           env=env, capture_output=True, text=True, cwd=tmp)
        wall = time.monotonic() - t0
    if p.returncode != 0:
        print(p.stderr, file=sys.stderr)
        return 1
    res = json.loads(p.stdout)
    pop = res["hits"]["most popular"]
    rows = [[s, "n/a" if res["recall"][s] is None else f"{res['recall'][s]:.4f}",
             f"{res['hits'][s]:,}", f"{res['hits'][s] / pop:.2f}×" if pop else "—"]
            for s in STRATEGIES]
    settings = ", ".join(f"{k} {v}" for k, v in res["settings"].items())
    shown = " ".join(cmd).replace(str(a.plot), os.path.relpath(a.plot, ROOT))
    section = "\n".join([
        f"## Run: `python benchmarks/bench_prequential.py --exposures {a.exposures} --seed {a.seed} "
        f"--dim {a.dim} --objective {a.objective}`",
        "",
        f"`mcrecall.train.synthetic.make_stream(n_exposures={a.exposures}, seed={a.seed})` (800 users, "
        "600 items of which 60 % arrive during the stream, popularity halving every 8 % of the "
        f"stream): {n:,} events in time order, written to `stream.jsonl`; then, with "
        f"`MCRECALL_TRAIN_OBJECTIVE={a.objective} MCRECALL_TRAIN_DIM={a.dim}`:",
        "",
        f"    {shown}",
        "",
        f"{res['positives']:,} positive events scored of {res['events']:,} events; "
        f"{res['versions']} versions ({settings}); replay {res['seconds']:.1f} s, whole command "
        f"{wall:.1f} s. {machine_note()}.",
        "",
        table_md(["strategy", f"Recall@{res['k']}", "hits", "hits vs most popular"], rows, "lrrr"),
    ])
    print(render(Path(a.out), add_run(Path(a.out), section, append=False)))
    return 0


def render(path: Path, runs: list[str] | None = None) -> str:
    runs = run_sections(path) if runs is None else runs
    return write_file(path, TITLE, INTRO, summary(runs), runs)


def summary(runs: list[str]) -> str:
    """The README's block: the last run's setting in words and its table (best in bold)."""
    if not runs:
        return ""
    run = runs[-1]
    table = parse_tables(run)[-1]
    rows = table.dicts()
    recall_col = table.header[1]
    best = max((num(r[recall_col]) or -1.0) for r in rows)
    body = [[r["strategy"],
             f"**{r[recall_col]}**" if num(r[recall_col]) == best else r[recall_col],
             r["hits"]] for r in rows]
    lines = run.splitlines()
    setting = next(ln for ln in lines if ln.startswith("`mcrecall.train.synthetic.make_stream("))
    call = re.search(r"`mcrecall\.train\.synthetic\.(make_stream\([^)]*\))`", setting).group(1)
    world = re.search(r"\((800 users[^)]*)\)", setting)
    n_events = re.search(r": ([\d,]+) events in time order", setting).group(1)
    env = dict(re.findall(r"MCRECALL_TRAIN_(OBJECTIVE|DIM)=(\S+?)`?(?=[ `:])", setting))
    counts = next(ln for ln in lines if "positive events scored of" in ln)
    scored = counts.split(" positive events")[0]
    command = next(ln.strip() for ln in lines if ln.startswith("    mcrecall evaluate"))
    command = re.sub(r" --json| --plot \S+", "", command)
    text = (f"On `{call}`" + (f" ({world.group(1)}; {n_events} events, {scored} scored)" if world else "")
            + f", objective `{env.get('OBJECTIVE', '?')}`, dim {env.get('DIM', '?')}: `{command}` "
            "(plot: `benchmarks/results/prequential.png`):")
    return marked("prequential", text + "\n\n" + table_md(["strategy", recall_col, "hits"], body, "lrr"))


if __name__ == "__main__":
    raise SystemExit(main())

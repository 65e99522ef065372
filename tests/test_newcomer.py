"""What a newcomer meets: the demo's data queryable afterwards, fast and clear errors, quiet pipes,
a readable report plot, an installable package."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args, data_dir=None, *, cwd=ROOT, stdout=subprocess.PIPE, timeout=300, **env):
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.pop("MCRECALL_CONFIG", None)
    if data_dir is not None:
        e.update(MCRECALL_STORE_DATA_DIR=str(data_dir), MCRECALL_INDEX_BACKEND="exact")
    e.update(env)
    return subprocess.run([sys.executable, "-m", "mcrecall", *args], env=e, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=timeout, cwd=cwd)


# --- the demo leaves a configuration that queries its data ------------------------------------

@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.milvus
def test_demo_prints_a_command_that_queries_its_data_after_it_stopped(tmp_path):
    out = tmp_path / "demo out's"  # a space and a quote on the way
    p = run(["demo", "--out", str(out), "--events", "12000", "--more-events", "3000",
             "--users", "300", "--items", "200"], timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # issue 20 #1: the fresh item really reaches the top 10, and the refresher's pid is printed
    assert re.search(r"in 'u0''s top 10 \(cluster \d+\) at rank \d+ ", p.stdout), p.stdout[-4000:]
    assert "FAILED" not in p.stdout and "pid in refresher.log" not in p.stdout
    assert re.search(r"refresh --every 1s` is running \(pid \d+, log ", p.stdout), p.stdout[-3000:]
    config = out / "mcrecall.toml"
    assert config.is_file()
    printed = [ln for ln in p.stdout.splitlines() if "--config" in ln and ln.rstrip().endswith("status")]
    assert printed, p.stdout[-2000:]
    assert "mcrecall.toml" in printed[0]
    # another working directory, the demo's broker and Milvus Lite server gone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    st = run(["--config", str(config), "status", "--json"], cwd=elsewhere)
    assert st.returncode == 0, st.stderr
    status = json.loads(st.stdout)
    assert status["version"] == 2 and status["store"]["pairs"] > 0
    assert not (elsewhere / "mcrecall-data").exists()
    rec = run(["--config", str(config), "recall", "u0", "-k", "5"], cwd=elsewhere, timeout=120)
    assert rec.returncode == 0, rec.stderr
    assert "model version 2" in rec.stdout
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    report = (out / "report.txt").read_text()
    assert "2 (squared, not served)" in report  # the squared-error baseline beside every version
    # the hybrid model (issue 21): an item with attributes only is recalled before any interaction
    assert "'fresh-item-2'" in report and "before its first interaction" in report, report[-3000:]
    # ... measured once, by the trainer on the published split, not fitted again on a copy
    assert not list((out / "data").glob("compare-v*")), "the demo fitted the squared objective twice"


def test_demo_config_round_trips_hostile_paths(tmp_path):
    from mcrecall.core.config import load_config
    from mcrecall.demo import write_demo_config

    out = tmp_path / 'q"uote \\back\tslash ünï 1+1==2'
    out.mkdir()
    cfg = load_config(environ={}).with_overrides(store={"data_dir": str(out / "data")},
                                                 train={"objective": "implicit"})
    path = write_demo_config(out, cfg)
    tomllib.loads(path.read_text(encoding="utf-8"))
    loaded = load_config(path, environ={})
    assert loaded.data_dir == (out / "data").resolve()
    assert loaded.index.uri == str((out / "data" / "milvus.db").resolve())
    assert loaded.index.backend == "milvus" and loaded.train.objective == "implicit"


# --- produce without a broker ------------------------------------------------------------------

def test_produce_without_a_broker_says_what_to_do_at_once(tmp_path):
    from mcrecall.ingest.broker import free_port
    from mcrecall.ingest.kafka_io import KafkaUnavailable
    from mcrecall.ingest.produce import check_broker_reachable

    port = free_port()  # nothing listens here
    t = time.monotonic()
    with pytest.raises(KafkaUnavailable, match="mcrecall broker"):
        check_broker_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - t < 5  # kafka-python alone was silent for 30 s

    events = tmp_path / "e.jsonl"
    events.write_text('{"user_id": 1, "item_id": 2, "action": "click"}\n')
    p = run(["produce", str(events)], tmp_path / "data", timeout=60,
            MCRECALL_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}")
    assert p.returncode != 0
    assert "mcrecall broker" in p.stderr and f"127.0.0.1:{port}" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


# --- closed standard output --------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = tmp_path_factory.mktemp("piped") / "data"
    events = data.parent / "events.jsonl"
    events.write_text("".join(
        json.dumps({"user_id": u, "item_id": f"i{(u * 7 + j) % 40}", "action": a}) + "\n"
        for u in range(300) for j in range(8) for a in ("click", "like")))
    assert run(["ingest", "--from-file", str(events)], data).returncode == 0
    p = run(["train"], data, MCRECALL_TRAIN_OBJECTIVE="implicit", MCRECALL_TRAIN_DIM="4",
            MCRECALL_TRAIN_EPOCHS="2")
    assert p.returncode == 0, p.stdout + p.stderr
    return data


def _run_into_closed_pipe(args, data_dir):
    r, w = os.pipe()
    os.close(r)  # the reader has gone before the first write, as `| head` does after a line
    try:
        return run(args, data_dir, stdout=w)
    finally:
        os.close(w)


@pytest.mark.parametrize("args", [["triples"], ["status"], ["status", "--json"],
                                  ["recall", "0", "-k", "5"], ["recall", "0", "-k", "5", "--json"]])
@pytest.mark.slow
def test_a_closed_stdout_ends_quietly(trained, args):
    p = _run_into_closed_pipe(args, trained)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "", p.stderr  # no "[Errno 32] Broken pipe", no "Exception ignored"


def test_triples_into_head_exits_zero(trained):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MCRECALL_STORE_DATA_DIR=str(trained))
    p = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m mcrecall triples | head -2"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "user_id,item_id,score" and p.stderr == ""


def test_stdout_closed_tells_a_gone_reader_from_a_live_one(monkeypatch):
    from mcrecall.cli import stdout_closed

    r, w = os.pipe()
    with os.fdopen(w, "w") as f:
        monkeypatch.setattr(sys, "stdout", f)
        assert not stdout_closed()  # a reader is there: a BrokenPipeError came from elsewhere
        os.close(r)
        assert stdout_closed()
        monkeypatch.undo()


# --- train without a store; import errors ------------------------------------------------------

@pytest.mark.slow
def test_train_without_a_store_creates_nothing(tmp_path):
    p = run(["train"], cwd=tmp_path, MCRECALL_INDEX_BACKEND="exact")
    assert p.returncode == 1
    said = (p.stdout + p.stderr).strip().splitlines()
    assert len(said) == 1 and "no triple store" in said[0]
    assert list(tmp_path.iterdir()) == []  # no mcrecall-data/users.lmdb


def _main_without(module: str, args: list[str], tmp_path):
    code = (f"import sys; sys.modules[{module!r}] = None; from mcrecall.cli import main; "
            f"raise SystemExit(main({args!r}))")
    env = dict(os.environ, PYTHONPATH=str(ROOT), MCRECALL_STORE_DATA_DIR=str(tmp_path / "d"))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.mark.slow
def test_an_import_error_is_reported_as_what_it_is(tmp_path):
    p = _main_without("torch", ["train"], tmp_path)  # fails while the command runs
    assert p.returncode == 2
    assert "torch" in p.stderr and "not built yet" not in p.stderr and "Traceback" not in p.stderr
    p = _main_without("mcrecall.serve.client", ["recall", "u1"], tmp_path)  # fails while the parser is built
    assert p.returncode == 2
    assert "mcrecall.serve.client" in p.stderr and "not built yet" not in p.stderr


# --- the report plot ---------------------------------------------------------------------------

def _meta(version, objective, recall, ndcg, pop_recall, pop_ndcg, losses):
    return {"version": version, "objective": objective,
            "training": {"history": [{"epoch": k + 1, "loss": v} for k, v in enumerate(losses)]},
            "evaluation": {"model": {"recall@10": recall, "ndcg@10": ndcg, "rmse": 1.5},
                           "popular": {"recall@10": pop_recall, "ndcg@10": pop_ndcg}}}


@pytest.mark.slow
def test_report_plot_names_the_objective_and_keeps_legends_off_the_data(tmp_path):
    from mcrecall.plot import draw_panels, plot_report, report_panels

    metas = [_meta(1, "implicit", 0.43, 0.30, 0.17, 0.10, [6.7, 4.1, 3.9, 3.8]),
             _meta(2, "implicit", 0.44, 0.31, 0.17, 0.10, [3.8, 3.75, 3.74, 3.73])]
    squared = [dict(_meta(v, "squared", 0.01, 0.004, 0.17, 0.10, [2.0, 1.5]), compared_with=v)
               for v in (1, 2)]
    panels = report_panels(metas, {"squared": squared})
    fig = draw_panels(panels)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.get_axes()
    assert len(axes) == 3
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel()
        assert "implicit" in ax.get_title()
        legend = ax.get_legend()
        assert legend is not None
        assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
        page = fig.bbox
        for box in (ax.title.get_window_extent(renderer), legend.get_window_extent(renderer)):
            assert box.x0 >= page.x0 and box.x1 <= page.x1, "text cut off at a side"
            assert box.y0 >= page.y0 and box.y1 <= page.y1, "text cut off at the top or bottom"
        # the title clears the top tick labels
        lo, hi = ax.get_ylim()
        top = max(t.get_window_extent(renderer).y1
                  for t, v in zip(ax.get_yticklabels(), ax.get_yticks(), strict=False) if lo <= v <= hi)
        assert ax.title.get_window_extent(renderer).y0 >= top
    labels = [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert any("most popular" in s for s in labels) and any("squared" in s for s in labels)
    squared_line = [ln for ln in axes[1].get_lines() if "squared" in ln.get_label()][0]
    assert list(squared_line.get_ydata()) == [0.01, 0.01]
    path = plot_report(metas, tmp_path / "report.png", {"squared": squared})
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_panel_without_data_says_so(tmp_path):
    from mcrecall.plot import Panel, plot_panels

    path = plot_panels([Panel("nothing yet", "x", "y", [])], tmp_path / "empty.png")
    assert path.stat().st_size > 0


# --- packaging ---------------------------------------------------------------------------------

def test_license_is_an_spdx_string_that_setuptools_takes_without_a_warning():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert not [w for w in caught if "license" in str(w.message).lower()]
    assert dist.metadata.license_expression == "Apache-2.0"


def test_a_vector_store_without_the_current_version_is_named_not_called_churn(trained):
    """users.lmdb says version 1 is current, the configured vector store never had it (pointing
    the CLI at a data dir with another [index]): say so, not 'dropped 4 times'."""
    p = run(["recall", "0", "-k", "5"], trained, timeout=120, MCRECALL_INDEX_COLLECTION="elsewhere")
    assert p.returncode == 1
    assert "does not have it" in p.stderr and "[index]" in p.stderr
    assert "dropped" not in p.stderr and "Traceback" not in p.stderr

"""`mcrecall tune` (issue 11 §5): the search, its TOML, determinism, budget, read-only data dir."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from mcrecall.core.config import load_config
from mcrecall.train.synthetic import make_synthetic
from mcrecall.train.testing import fill_store, small_config
from mcrecall.train.tune import SPACES, TuneError, toml_text, tune

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune") / "data"
    fill_store(d, make_synthetic(n_users=300, n_items=150, n_triples=6000, seed=3))
    return d


def _quiet(_line):
    pass


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p.is_file()}


def _cli(args, env=None, **kw):
    e = {k: v for k, v in os.environ.items() if not k.startswith("MCRECALL_")}
    e.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "mcrecall", *args], env=e, capture_output=True,
                          text=True, timeout=300, cwd=kw.get("cwd", ROOT))


@pytest.mark.slow
def test_cli_writes_a_toml_that_train_accepts(store, tmp_path):
    # the source config's other sections travel into best.toml (same data dir, same backend);
    # a hostile data dir name checks the TOML writer (JSON string escapes are valid TOML)
    d = tmp_path / 'd "q\\b\té'
    fill_store(d, make_synthetic(n_users=200, n_items=100, n_triples=3000, seed=4))
    src = tmp_path / "src.toml"
    src.write_text(f"[store]\ndata_dir = {json.dumps(str(d), ensure_ascii=False)}\n"
                   '[index]\nbackend = "exact"\n[train]\ndim = 16\nthreads = 1\n')
    out = tmp_path / "best.toml"
    p = _cli(["--config", str(src), "tune", "--budget", "2m", "--trials", "4", "--seed", "2",
              "--out", str(out)])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert any("*recall@10" in x for x in lines)  # header names the gate's figure
    rows = [x for x in lines if x.strip()[:1].isdigit()]
    assert len(rows) == 4 and "best" in p.stdout
    assert f"wrote {out}" in p.stdout

    cfg = load_config(out, environ={})
    orig = load_config(src, environ={})
    assert cfg.store == orig.store and cfg.index == orig.index
    assert cfg.data_dir == d
    assert cfg.train.seed == 2 and cfg.train.threads == 1 and cfg.train.objective == "implicit"
    text = out.read_text()
    assert text.startswith("# written by `mcrecall tune`")
    assert set(SPACES["implicit"]) <= set(tomllib.loads(text)["train"])

    t = _cli(["--config", str(out), "train"])
    assert t.returncode == 0, t.stderr
    assert "published version 1" in t.stdout
    assert f"dim {cfg.train.dim}" in t.stdout


@pytest.mark.slow
def test_same_seed_same_trials_and_another_seed_differs(store):
    cfg = small_config(store, threads=1)

    def table(seed, objective):
        r = tune(cfg, budget_s=300, n_trials=4, seed=seed, objective=objective, log=_quiet)
        return [(t["number"], t["params"], t["figures"], t["state"]) for t in r.trials]

    for objective in ("implicit", "bce"):
        a = table(5, objective)
        assert len(a) == 4
        assert a == table(5, objective), objective
        b = table(6, objective)
        assert [t[1] for t in a[1:]] != [t[1] for t in b[1:]]  # trial 0 is the config in both


def test_squared_is_tuned_on_rmse_and_trial0_is_the_configuration(store):
    cfg = small_config(store, objective="squared", dim=12, reg=0.05, epochs=4, threads=1)
    lines = []
    r = tune(cfg, budget_s=300, n_trials=3, seed=0, log=lines.append)
    assert r.metric == "rmse" and r.direction == "minimize"
    assert any("*rmse" in x for x in lines)
    assert r.trials[0]["params"] == {"dim": 12, "epochs": 4, "reg": 0.05}
    done = [t for t in r.trials if t["figures"]]
    assert r.best["figures"]["rmse"] == min(t["figures"]["rmse"] for t in done)


def test_the_data_dir_is_not_changed(store, tmp_path):
    from mcrecall.train.trainer import train_run
    from mcrecall.train.versions import ModelRegistry

    d = tmp_path / "data"
    fill_store(d, make_synthetic(n_users=200, n_items=100, n_triples=3000, seed=4))
    cfg = small_config(d, threads=1, epochs=3)
    assert train_run(cfg, log=_quiet).status == "published"
    before = _tree(d)
    r = tune(cfg, budget_s=300, n_trials=3, log=_quiet, out=tmp_path / "best.toml")
    assert r.best is not None
    lock = str(Path("triples.lmdb") / "lock.mdb")  # LMDB's reader table: a read is a write
    assert {k: v for k, v in _tree(d).items() if k != lock} == \
        {k: v for k, v in before.items() if k != lock}
    reg = ModelRegistry(d)
    try:
        assert reg.current_version() == 1
    finally:
        reg.close()


@pytest.mark.slow
def test_a_short_budget_stops_the_search(store):
    cfg = small_config(store, threads=1)
    t0 = time.monotonic()
    r = tune(cfg, budget_s=2.0, log=_quiet)
    took = time.monotonic() - t0
    assert r.best is not None and len(r.trials) >= 1
    assert took < 2.0 + 5.0  # at most about one trial past the budget, on a busy machine
    # a budget that ends inside the first trial: stopped at an epoch, nothing finished
    with pytest.raises(TuneError, match="no trial finished"):
        tune(small_config(store, threads=1, epochs=500), budget_s=0.05, n_trials=1, log=_quiet)


def test_nothing_to_tune_on_is_one_clear_error(tmp_path):
    with pytest.raises(TuneError, match="no triple store"):
        tune(small_config(tmp_path / "none"), budget_s=5, log=_quiet)
    assert not (tmp_path / "none").exists()


def test_missing_optuna_says_how_to_install(store, monkeypatch, capsys, tmp_path):
    from mcrecall.train.cli import add_tune_arguments, run_tune

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    args = add_tune_arguments(argparse.ArgumentParser()).parse_args(
        ["--out", str(tmp_path / "b.toml")])
    assert run_tune(args, small_config(store)) == 2
    assert "pip install 'mcrecall[tune]'" in capsys.readouterr().err
    assert not (tmp_path / "b.toml").exists()


@pytest.mark.slow
def test_ctrl_c_keeps_the_best_so_far(store, tmp_path):
    out = tmp_path / "best.toml"
    env = {"MCRECALL_STORE_DATA_DIR": str(store), "MCRECALL_TRAIN_THREADS": "1"}
    e = {k: v for k, v in os.environ.items() if not k.startswith("MCRECALL_")}
    e.update(PYTHONPATH=str(ROOT), **env)
    p = subprocess.Popen([sys.executable, "-m", "mcrecall", "tune", "--budget", "1h", "--out",
                          str(out)], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT,
                         # a shell's background job (nohup ... &) ignores SIGINT, and so would
                         # the child: Python then installs no KeyboardInterrupt handler
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in p.stdout:
            if line.rstrip().endswith("best"):
                break
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "interrupted" in rest and f"wrote {out}" in rest
    assert load_config(out, environ={}).train.objective == "implicit"


@pytest.mark.parametrize("text", ['q"uote', "back\\slash", "new\nline\ttab", "nul\0del\x7f",
                                  "é ✓ 😀", "${expr} 'single'"])
def test_toml_writer_round_trips_hostile_strings(text):
    sections = {"index": {"collection": text, "timeout_s": 1e-05, "secure": False},
                "serve": {"max_k": 7, "x": float("inf")}}
    assert tomllib.loads(toml_text(sections, ["a comment"])) == sections


@pytest.mark.parametrize("argv", [["--budget", "0"], ["--budget", "10x"], ["--trials", "0"],
                                  ["--seed", "-1"], ["--objective", "rmse"]])
def test_bad_arguments_are_refused_by_the_parser(argv, capsys):
    from mcrecall.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["tune", *argv])
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_budget_units_parse():
    from mcrecall.cli import build_parser

    for text, secs in (("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400)):
        assert build_parser().parse_args(["tune", "--budget", text]).budget == secs


@pytest.mark.slow
def test_cli_on_a_missing_data_dir_or_out_dir_says_so(tmp_path):
    p = _cli(["tune", "--budget", "5s"], env={"MCRECALL_STORE_DATA_DIR": str(tmp_path / "no")})
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "no").exists()
    d = tmp_path / "empty"
    d.mkdir()
    p = _cli(["tune", "--budget", "5s"], env={"MCRECALL_STORE_DATA_DIR": str(d)})
    assert p.returncode == 1 and "no triple store" in p.stderr, p.stderr
    p = _cli(["tune", "--out", str(tmp_path / "nodir" / "b.toml")],
             env={"MCRECALL_STORE_DATA_DIR": str(d)})
    assert p.returncode == 1 and "--out" in p.stderr, p.stderr
    assert os.listdir(d) == []


def test_a_store_too_small_for_a_hold_out_is_one_clear_error(tmp_path):
    data = make_synthetic(n_users=5, n_items=5, n_triples=6, seed=0)
    fill_store(tmp_path / "d", data)
    with pytest.raises(TuneError, match="tuning needs more data"):
        tune(small_config(tmp_path / "d"), budget_s=5, log=_quiet)

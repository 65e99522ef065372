"""The `mcrecall` command as a user runs it: status, triples, backfill, train and recall."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args, data_dir, **env):
    e = dict(os.environ, MCRECALL_STORE_DATA_DIR=str(data_dir), MCRECALL_INDEX_BACKEND="exact",
             PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-m", "mcrecall", *args], env=e, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_status_of_an_empty_data_dir_is_readable(tmp_path):
    p = run(["status"], tmp_path / "nothing")
    assert p.returncode == 0, p.stderr
    assert "no version published yet" in p.stdout
    assert not (tmp_path / "nothing").exists()


@pytest.mark.slow
def test_backfill_train_recall_triples_status(tmp_path):
    data = tmp_path / "data"
    events = tmp_path / "events.jsonl"
    lines = []
    for u in range(60):  # two tastes: even users like items a*, odd users like items b*
        group = "a" if u % 2 == 0 else "b"
        for i in range(12):
            if (u + i) % 5:  # leave some items unseen
                lines.append(json.dumps({"user_id": u, "item_id": f"{group}{i}", "action": "click"}))
                lines.append(json.dumps({"user_id": u, "item_id": f"{group}{i}", "action": "like"}))
            lines.append(json.dumps({"user_id": u, "item_id": f"{'b' if group == 'a' else 'a'}{i}",
                                     "action": "impression"}))
    lines.append("not json")
    events.write_text("\n".join(lines) + "\n")

    p = run(["ingest", "--from-file", str(events)], data)
    assert p.returncode == 0, p.stderr
    assert "1 rejected" in p.stdout
    assert (tmp_path / "events.jsonl.rejected.jsonl").exists()

    p = run(["train"], data, MCRECALL_TRAIN_OBJECTIVE="implicit", MCRECALL_TRAIN_DIM="8")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "published version 1" in p.stdout + p.stderr

    p = run(["recall", "0", "-k", "3", "--exclude-seen"], data)
    assert p.returncode == 0, p.stderr
    assert "version" in p.stdout and "source" in p.stdout
    rows = [line.split() for line in p.stdout.splitlines()]
    recalled = [tok for row in rows for tok in row if tok[:1] in "ab" and tok[1:].isdigit()]
    assert recalled and all(t.startswith("a") for t in recalled), p.stdout

    p = run(["recall", "0", "-k", "0"], data)
    assert p.returncode != 0 and "positive integer" in p.stderr and "Traceback" not in p.stderr

    p = run(["triples"], data)
    rows = list(csv.reader(io.StringIO(p.stdout)))
    assert rows[0] == ["user_id", "item_id", "score"]
    assert ["0", "a1", "2"] in rows and ["0", "b1", "0"] in rows

    p = run(["status", "--json"], data)
    st = json.loads(p.stdout)
    assert st["version"] == 1 and st["store"]["pairs"] == len(rows) - 1
    # issue 20 #11: the rejected line went to events.jsonl.rejected.jsonl, not to the DLQ topic
    assert st["dead_letters"]["count"] == 0 and st["backfill_rejected"]["count"] == 1
    assert "recall@10" in json.dumps(st["evaluation"])
    p = run(["status"], data)
    assert "version 1 is current" in p.stdout and "recall@10" in p.stdout
    assert [ln for ln in p.stdout.splitlines() if "dead letters" in ln and " 0 -> " in ln], p.stdout
    assert [ln for ln in p.stdout.splitlines() if "backfill rejects" in ln and "1 -> " in ln
            and "rejected.jsonl" in ln], p.stdout


# ------------------------------------------------------------------ data-dir problems: one line
import shutil  # noqa: E402

EVERY_DATA_DIR_COMMAND = [["status"], ["status", "--json"], ["recall", "u1"], ["triples"], ["train"],
                          ["ingest", "--until-idle", "1"], ["ingest", "--from-file", os.devnull], ["milvus"]]


def _one_line_failure(p, *expected):
    assert p.returncode != 0, p.stdout
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for e in expected:
        assert e in lines[0], lines[0]


@pytest.mark.parametrize("args", EVERY_DATA_DIR_COMMAND, ids=" ".join)
def test_a_data_dir_that_is_a_file_is_one_line_for_every_command(tmp_path, args):
    f = tmp_path / "data"
    f.write_text("not a directory")
    _one_line_failure(run(args, f), f"data dir {f} is not a directory")


@pytest.mark.parametrize("args", [["train"], ["ingest", "--from-file", os.devnull]], ids=" ".join)
def test_a_data_dir_under_a_file_cannot_be_created_and_says_so(tmp_path, args):
    (tmp_path / "f").write_text("x")
    _one_line_failure(run(args, tmp_path / "f" / "data"), "cannot be created", "is not a directory")


@pytest.mark.parametrize("args", [["recall", "u1"], ["triples"]], ids=" ".join)
def test_a_missing_data_dir_is_one_line_for_reading_commands(tmp_path, args):
    _one_line_failure(run(args, tmp_path / "nothing"), "does not exist")
    assert not (tmp_path / "nothing").exists()


def test_status_says_a_missing_data_dir_does_not_exist(tmp_path):
    p = run(["status", "--json"], tmp_path / "nothing")
    assert p.returncode == 0 and json.loads(p.stdout)["data_dir_exists"] is False
    assert "does not exist" in run(["status"], tmp_path / "nothing").stdout


@pytest.mark.parametrize("env,key", [({"MCRECALL_KAFKA_SESSION_TIMEOUT_MS": "-5"}, "session_timeout_ms"),
                                     ({"MCRECALL_STORE_MAP_SIZE_GB": "-1"}, "map_size_gb")])
@pytest.mark.parametrize("args", [["ingest", "--until-idle", "1"], ["status"], ["train"]], ids=" ".join)
def test_an_out_of_range_setting_stops_every_command_at_once(tmp_path, env, key, args):
    p = run(args, tmp_path / "data", **env)
    assert p.returncode == 2
    _one_line_failure(p, "configuration error", key, "out of range")


# A read-only data dir, two ways, so that the test can fail even when run as root (as in CI),
# for whom permission bits mean nothing: a read-only bind mount in a private mount namespace
# (EROFS holds for root too), and permission bits without write access, the command run with
# every capability dropped when we are root (then the bits hold for root as for anybody).
def _can_unshare_mounts() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


def _set_write_bits(data, on: bool):
    for p in [data, *data.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | 0o200 if on else mode & ~0o222)


def _readonly_prefix(mode, data):
    if mode == "read-only mount":
        if not _can_unshare_mounts():
            pytest.skip("needs root and unshare(1) for a private read-only bind mount")
        return ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(data)]
    _set_write_bits(data, False)
    if os.geteuid() != 0:
        return []
    drop = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    if not shutil.which("setpriv") or subprocess.run([*drop, "true"], capture_output=True).returncode:
        _set_write_bits(data, True)
        pytest.skip("running as root and cannot drop capabilities (setpriv)")
    return drop


@pytest.fixture(scope="module")
def published_data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ro")
    data = root / "data"
    events = root / "events.jsonl"
    events.write_text("".join(json.dumps({"user_id": u, "item_id": f"i{(u + i) % 9}", "action": "click"}) + "\n"
                              for u in range(30) for i in range(4)))
    assert run(["ingest", "--from-file", str(events)], data).returncode == 0
    p = run(["train"], data, MCRECALL_TRAIN_DIM="4", MCRECALL_TRAIN_EPOCHS="2")
    assert p.returncode == 0, p.stderr
    yield data
    _set_write_bits(data, True)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["read-only mount", "no write permission"])
def test_reading_commands_work_on_a_read_only_data_dir_and_writing_ones_say_why_not(published_data_dir, mode):
    data = published_data_dir
    prefix = _readonly_prefix(mode, data)

    def run_ro(args, **env):
        e = dict(os.environ, MCRECALL_STORE_DATA_DIR=str(data), MCRECALL_INDEX_BACKEND="exact",
                 PYTHONPATH=str(ROOT), **env)
        return subprocess.run([*prefix, sys.executable, "-m", "mcrecall", *args], env=e, capture_output=True,
                              text=True, timeout=300, cwd=ROOT)

    before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    try:
        p = run_ro(["status", "--json"])
        assert p.returncode == 0, p.stderr
        st = json.loads(p.stdout)
        assert st["version"] == 1 and st["store"]["pairs"] == 120
        p = run_ro(["recall", "3", "-k", "2", "--json"])
        assert p.returncode == 0, p.stderr
        assert len(json.loads(p.stdout)["items"]) == 2
        p = run_ro(["triples"])
        assert p.returncode == 0, p.stderr
        assert len(p.stdout.splitlines()) == 121
        # refresh too (issue 20 #13: it printed a raw [Errno 30])
        for args in (["ingest", "--from-file", os.devnull], ["train", "--force"], ["refresh"],
                     ["refresh", "--every", "1s"]):
            _one_line_failure(run_ro(args), f"data dir {data} is not writable")
    finally:
        _set_write_bits(data, True)
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == before, "a reader changed the data dir"


# ------------------------------------------------------------------ issue 20 #13: small ones
def test_global_options_are_accepted_after_the_subcommand(tmp_path):
    cfg = tmp_path / "x.toml"
    cfg.write_text('[kafka]\ntopic = "from.the.file"\n')  # status names its .dlq topic
    for args in (["status", "--config", str(cfg)], ["--config", str(cfg), "status"],
                 ["status", "--config", str(cfg), "-v"]):
        p = run(args, tmp_path / "data")
        assert p.returncode == 0, p.stderr
        assert "from.the.file.dlq" in p.stdout, p.stdout


def test_a_negative_duration_is_named_as_such(tmp_path):
    for args in (["tune", "--budget", "-5s"], ["train", "--every", "-1m"]):
        p = run(args, tmp_path / "data")
        assert p.returncode == 2 and "expected one argument" not in p.stderr, p.stderr
        assert "duration must be positive, got '-" in p.stderr, p.stderr

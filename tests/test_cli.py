"""The `mcrecall` command as a user runs it: status, triples, backfill, train and recall."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert st["dead_letters"]["count"] == 1
    assert "recall@10" in json.dumps(st["evaluation"])
    p = run(["status"], data)
    assert "version 1 is current" in p.stdout and "recall@10" in p.stdout

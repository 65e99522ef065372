"""The pipeline without a broker or a server: backfill a JSONL file, train once, recall.

    python examples/backfill_train_recall.py

1. write a small time-ordered event file (``{"user_id", "item_id", "action", "ts"}`` per line,
   DESIGN §1) and a configuration whose data dir is a temporary folder and whose vector store
   is ``exact`` (numpy files under the data dir: no Milvus);
2. ``mcrecall ingest --from-file`` (the backfill: the same validation and scoring as the Kafka
   worker) and ``mcrecall train``, run as the commands an operator types;
3. recall in this process with the client, ``from mcrecall.serve import RecallClient``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mcrecall.serve import RecallClient
from mcrecall.train.synthetic import make_stream


def mcrecall(config: Path, *args: str) -> str:
    """Run one ``mcrecall`` command (``python -m mcrecall``); its output, or exit on failure."""
    p = subprocess.run([sys.executable, "-m", "mcrecall", "--config", str(config), *args],
                       capture_output=True, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if p.returncode != 0:
        sys.exit(f"mcrecall {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p.stdout + p.stderr


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mcrecall-example-") as tmp:
        tmp = Path(tmp)
        events = make_stream(n_users=300, n_items=200, n_exposures=6000, seed=1)
        jsonl = tmp / "events.jsonl"
        jsonl.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
        config = tmp / "mcrecall.toml"
        config.write_text(f"""\
[store]
data_dir = {json.dumps(str(tmp / "data"))}

[index]
backend = "exact"

[train]
dim = 16
epochs = 6
device = "cpu"
""", encoding="utf-8")
        print(f"wrote {len(events)} events to {jsonl.name}")

        out = mcrecall(config, "ingest", "--from-file", str(jsonl))
        print("ingest: " + out.strip().splitlines()[-1].partition("backfill_done ")[2])
        out = mcrecall(config, "train")
        print(next(line for line in out.splitlines() if "published version" in line).strip())

        with RecallClient.from_config(config) as client:
            print(f"client: version {client.version}")
            users = sorted({e["user_id"] for e in events})[:3]
            for user in users:
                got = client.recall(user, k=5, exclude_seen=True)
                print(f"recall {user}: " + ", ".join(f"{r.item_id} ({r.score:.3f}, {r.source})" for r in got))
            got = client.recall("somebody-new", k=5)
            print("recall somebody-new: " + ", ".join(f"{r.item_id} ({r.source})" for r in got))
    return 0


if __name__ == "__main__":
    sys.exit(main())

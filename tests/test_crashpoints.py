"""core/crashpoints.py: the one crash-test hook. Each hook kills a process at the named step
with the exit status the crash tests expect, and does nothing for any other step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcrecall.core import crashpoints
from mcrecall.train import publish, refresh

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ("import sys\nfrom mcrecall.core import crashpoints as c\n"
          "hook = getattr(c, sys.argv[1])\n"
          "try:\n    c.crash_point('other', hook)\n    print('passed other', flush=True)\n"
          "    c.crash_point('step', hook)\nfinally:\n    print('cleanup ran', flush=True)\n"
          "print('survived')\n")


@pytest.mark.parametrize(("hook", "code"), [("TRAIN", -9), ("REFRESH", 87)])
def test_a_hook_kills_at_its_step_and_runs_no_cleanup(hook, code):
    env = {**os.environ, getattr(crashpoints, hook).env: "step"}
    p = subprocess.run([sys.executable, "-c", SCRIPT, hook], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == code, p.stderr
    assert p.stdout == "passed other\n"  # no `finally`, nothing after the step


def test_no_hook_set_runs_through():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCR_")}
    p = subprocess.run([sys.executable, "-c", SCRIPT, "TRAIN"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.endswith("survived\n"), p.stderr


def test_the_parts_use_the_one_module():
    assert (publish.CRASH_ENV, publish.CRASH_EXIT_CODE) == ("MCR_TRAIN_CRASH_AT", -9)
    assert (refresh.CRASH_ENV, refresh.CRASH_EXIT_CODE) == ("MCR_REFRESH_CRASH_AT", 87)
    assert publish.crash_point is crashpoints.crash_point
    # no second implementation: nothing else reads the hook variables
    for path in [*ROOT.glob("*/*.py")]:
        if path.parts[-2] in ("core", "ingest", "train", "serve", "plugins", "mcrecall") \
                and path.name != "crashpoints.py":
            text = path.read_text(encoding="utf-8")
            assert "_CRASH_AT\"" not in text and "os._exit(" not in text, path

"""One import name (issue 17 §1): the wheel holds one top-level package, ``mcrecall``; a user's own
``train.py``, ``serve.py``, ``core/`` or ``plugins/`` never shadows a part; importing the client
loads neither the CLI nor argparse; the vector-store entry points name the new modules."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("core", "ingest", "train", "serve", "plugins")


def _clean_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # only the installed package, as a user has it
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (whl,) = out.glob("mcrecall-*.whl")
    return whl


@pytest.mark.slow
def test_the_wheel_holds_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
        assert top == {"mcrecall"}, top
        for part in PARTS:
            assert f"mcrecall/{part}/__init__.py" in names, part
        tops = [n for n in names if n.endswith("top_level.txt")]
        if tops:
            assert z.read(tops[0]).decode().split() == ["mcrecall"]
        ep = next(n for n in names if n.endswith("entry_points.txt"))
        text = z.read(ep).decode()
    assert "mcrecall.plugins.faiss_store:FaissVectorStore" in text
    assert "= plugins." not in text


def test_the_installed_entry_points_load_the_new_modules():
    eps = {ep.name: ep for ep in entry_points(group="mcrecall.vector_stores")}
    assert {"milvus", "faiss", "hnswlib", "exact"} <= set(eps)
    for ep in eps.values():
        assert ep.value.startswith("mcrecall.plugins."), ep.value
    assert eps["exact"].load().__module__ == "mcrecall.plugins.exact_store"


@pytest.mark.slow
def test_every_part_imports_beside_a_users_own_train_serve_core_plugins(tmp_path):
    # the folder of a typical ML project: these names used to shadow our top-level packages
    for name in ("train.py", "serve.py", "ingest.py"):
        (tmp_path / name).write_text("raise SystemExit('the user module was imported, not mcrecall')\n")
    for name in ("core", "plugins"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise SystemExit('the user package was imported')\n")
    code = ("import mcrecall.core.config, mcrecall.ingest.worker, mcrecall.train.trainer, "
            "mcrecall.plugins, mcrecall.serve\n"
            "from mcrecall.serve import RecallClient, recall\n"
            "import mcrecall.plugins as p\n"
            "assert p.open_vector_store\n"
            "print('ok')\n")
    # `python -c` puts the working directory first on sys.path, as a notebook does
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr


def test_importing_the_client_loads_neither_the_cli_nor_argparse(tmp_path):
    code = ("import sys\nimport mcrecall.serve\n"
            "bad = sorted(m for m in sys.modules if m == 'argparse' or m == 'mcrecall.cli'"
            " or m.startswith('mcrecall.cli.'))\nprint(bad)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]", p.stdout


def test_the_old_top_level_names_are_gone(tmp_path):
    for part in PARTS:
        p = subprocess.run([sys.executable, "-c", f"import {part}.__init__"], cwd=tmp_path, env=_clean_env(),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode != 0 and "No module named" in p.stderr, (part, p.stderr)

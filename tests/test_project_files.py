"""The files a newcomer opens first: LICENSE is the license pyproject declares, CONTRIBUTING.md
names the layers and the commands that exist, CHANGELOG.md has the unreleased changes on top,
and docs/interfaces.md describes every public name of the library model."""

from __future__ import annotations

import inspect
import tomllib
from pathlib import Path

from mcrecall.models import MatrixFactorization

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_the_apache_2_text_pyproject_declares():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    assert "Apache License" in text[:200] and "Version 2.0, January 2004" in text[:200]
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000


def test_contributing_names_the_layers_and_the_commands():
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    for part in ("mcrecall.core", "mcrecall.ingest", "mcrecall.plugins", "mcrecall.train",
                 "mcrecall.serve", "mcrecall.models"):
        assert f"`{part}`" in text, part
    for needle in ("bash scripts/test.sh --fast", "ruff check", "mcrecall.vector_stores",
                   "VectorStoreBehaviour", "OBJECTIVES", "ObjectiveSpec", "@pytest.mark.slow"):
        assert needle in text, needle
    for path in ("train/objectives.py", "examples/custom_vector_store.py", "tests/test_layers.py",
                 "plugins/metric.py", "core/ids.py", "train/fit.py"):
        assert (ROOT / path).is_file() and path in text, path


def test_changelog_has_the_unreleased_changes_above_0_1_0():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert 0 < text.index("## Unreleased") < text.index("## 0.1.0")
    unreleased = text[text.index("## Unreleased"):text.index("## 0.1.0")]
    assert "mcrecall.models.MatrixFactorization" in unreleased and "from mcrecall.serve import" in unreleased


def test_interfaces_describe_every_public_name_of_the_library_model():
    text = (ROOT / "docs" / "interfaces.md").read_text(encoding="utf-8")
    section = text[text.index("## The model as a library"):]
    public = [n for n, _ in inspect.getmembers(MatrixFactorization) if not n.startswith("_")]
    assert {"fit", "recommend", "score", "similar_items", "save", "load", "user_factors"} <= set(public)
    missing = [n for n in public if n not in section]
    assert not missing, missing

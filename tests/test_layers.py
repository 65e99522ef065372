"""The layers: which package may import which (README "The parts", docs/design.md).

The folders read in data-flow order with the ground below and the shell on top::

    core      ground: config, logs, loopback helpers, id rules; imports no part
    ingest    -> core
    plugins   -> core                      (vector stores know nothing of training)
    train     -> core, ingest, plugins     (reads triples, publishes into a vector store)
    serve     -> core, ingest, train, plugins
    models    -> core, train, plugins      (mcrecall/models.py, the model as a library: no
                                            ingest, so no Kafka or LMDB; no serve)
    mcrecall  the application shell (CLI, demo, status, plots): may import anything;
              nothing else may import it
    tests/, benchmarks/: free

Every import counts, top-level and inside functions (a lazy import is still an
edge), ``from . import x`` resolved against the importing module. A forbidden edge
is reported as ``file:line: part -> part (import ...)``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "ingest": {"core"},
    "plugins": {"core"},
    "train": {"core", "ingest", "plugins"},
    "serve": {"core", "ingest", "train", "plugins"},
    "models": {"core", "train", "plugins"},
    "mcrecall": {"core", "ingest", "train", "plugins", "serve", "models"},
}
# Parts that live inside the shell's folder, not a folder of their own: their modules.
IN_SHELL = {"models": "mcrecall/models.py"}


def imported_modules(tree: ast.AST, module: str, is_package: bool):
    """Yield (lineno, dotted name) for every import in ``tree``, relative ones resolved."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from pkg import module` names a module too
                yield node.lineno, f"{target}.{alias.name}"


def part_of(name: str) -> str | None:
    """The part a dotted module name belongs to: ``mcrecall.train.als`` -> ``train``;
    ``mcrecall.cli`` (the shell's own modules) -> ``mcrecall``; others None. The bare root
    ``mcrecall`` (its ``__init__`` holds the version only) is imported by every part's import."""
    bits = name.split(".")
    if bits[0] != "mcrecall" or len(bits) == 1:
        return None
    if len(bits) > 1 and bits[1] in ALLOWED and bits[1] != "mcrecall":
        return bits[1]
    return "mcrecall"


def files_of(part: str, root: Path = ROOT) -> list[Path]:
    """The source files of ``part``: its folder, or (:data:`IN_SHELL`) its module in the shell's."""
    if part in IN_SHELL:
        return [p for p in [root / IN_SHELL[part]] if p.is_file()]
    skip = {root / f for f in IN_SHELL.values()} if part == "mcrecall" else set()
    return [p for p in sorted((root / part).rglob("*.py")) if p not in skip]


def forbidden_edges(root: Path = ROOT) -> list[str]:
    """All imports from one of our packages into a package it may not import."""
    found = []
    for part, allowed in ALLOWED.items():
        for path in files_of(part, root):
            rel = path.relative_to(root)
            is_package = path.name == "__init__.py"
            parts = rel.with_suffix("").parts[:-1] if is_package else rel.with_suffix("").parts
            # the folder `ingest/` is the package `mcrecall.ingest` (pyproject's package-dir)
            module = ".".join(parts if part == "mcrecall" else ("mcrecall", *parts))
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
            seen = set()
            for lineno, name in imported_modules(tree, module, is_package):
                top = part_of(name)
                if top is not None and top != part and top not in allowed and (lineno, top) not in seen:
                    seen.add((lineno, top))
                    found.append(f"{rel}:{lineno}: {part} -> {top} ({name})")
    return found


def test_every_part_exists():
    for part in ALLOWED:
        if part in IN_SHELL:
            assert (ROOT / IN_SHELL[part]).is_file(), IN_SHELL[part]
        else:
            assert (ROOT / part / "__init__.py").is_file(), f"{part}/ is not a package"


def test_the_library_model_is_its_own_layer(tmp_path):
    """mcrecall.models may not import ingest or serve; train may not import models."""
    assert part_of("mcrecall.models") == "models"
    for part, src in [("models", "from mcrecall.serve import recall\n"),
                      ("models", "import mcrecall.ingest.store\n"),
                      ("train", "from mcrecall.models import MatrixFactorization\n")]:
        root = tmp_path / part
        target = root / (IN_SHELL.get(part) or f"{part}/x.py")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(src)
        assert forbidden_edges(root), (part, src)


def test_no_forbidden_import_edges():
    edges = forbidden_edges()
    assert not edges, "forbidden import edges (see this file's docstring):\n" + "\n".join(edges)


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from mcrecall.cli import main", "mcrecall.ingest.x", "mcrecall.cli"),
        ("def f():\n    import mcrecall.train.als\n", "mcrecall.plugins.base", "mcrecall.train.als"),
        ("from ...train import als", "mcrecall.serve.sub.x", "mcrecall.train.als"),
        ("from . import base", "mcrecall.plugins.x", "mcrecall.plugins.base"),
        ("from mcrecall import train", "mcrecall.plugins.x", "mcrecall.train"),
    ],
)
def test_the_checker_sees_every_kind_of_import(source, module, expected):
    names = {name for _, name in imported_modules(ast.parse(source), module, False)}
    assert expected in names


def test_part_of_reads_the_namespace():
    assert part_of("mcrecall.train.als") == "train"
    assert part_of("mcrecall.cli") == "mcrecall" and part_of("mcrecall.demo") == "mcrecall"
    assert part_of("mcrecall.models") == "models"
    assert part_of("mcrecall") is None
    assert part_of("train.als") is None  # a user's own top-level `train` is not ours

"""Copy the benchmark blocks of ``benchmarks/results/*.md`` into the docs.

Every block between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in a results file
replaces the block with the same markers in README.md or a page of docs/ (docs/benchmarks.md
holds most; docs/guide.md the tuning table), so the published tables are exactly what the
bench scripts wrote. Each results block is shown in exactly one page.

    python benchmarks/update_docs.py           # rewrite the pages whose blocks changed
    python benchmarks/update_docs.py --check   # exit 1 if a page differs from the results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from resultsfile import RESULTS, marked_blocks, replace_marked

ROOT = Path(__file__).resolve().parents[1]


def doc_pages(root: Path = ROOT) -> list[Path]:
    """README.md and every page of docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def results_blocks(results_dir: Path = RESULTS) -> dict[str, str]:
    """name -> block body, from every results file (a name used twice is an error)."""
    blocks: dict[str, str] = {}
    for path in sorted(Path(results_dir).glob("*.md")):
        for name, body in marked_blocks(path.read_text(encoding="utf-8")).items():
            if name in blocks:
                raise SystemExit(f"benchmark block {name!r} is marked in two results files")
            blocks[name] = body
    return blocks


def updated_page(text: str, blocks: dict[str, str], name: str = "the page") -> str:
    """``text`` with every marked block replaced by the results' block of the same name.

    Raises
    ------
    SystemExit
        The page marks a block that no results file has.
    """
    missing = sorted(set(marked_blocks(text)) - set(blocks))
    if missing:
        raise SystemExit(f"{name} marks benchmark blocks no results file has: {missing}")
    return replace_marked(text, blocks)


def shown_in(pages: list[Path]) -> dict[str, list[str]]:
    """block name -> the pages that mark it."""
    where: dict[str, list[str]] = {}
    for page in pages:
        for name in marked_blocks(page.read_text(encoding="utf-8")):
            where.setdefault(name, []).append(str(page.relative_to(ROOT)))
    return where


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when out of date")
    args = ap.parse_args(argv)
    blocks = results_blocks()
    pages = doc_pages()
    twice = {n: p for n, p in shown_in(pages).items() if len(p) > 1}
    if twice:
        raise SystemExit(f"benchmark blocks shown in more than one page: {twice}")
    stale = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        new = updated_page(text, blocks, str(page.relative_to(ROOT)))
        if new == text:
            continue
        stale.append(page)
        if not args.check:
            page.write_text(new, encoding="utf-8")
            print(f"updated {page.relative_to(ROOT)}")
    if args.check and stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"{names} out of date: run python benchmarks/update_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

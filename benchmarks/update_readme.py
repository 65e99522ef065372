"""Copy the benchmark blocks of ``benchmarks/results/*.md`` into README.md.

Every block between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in a results file
replaces the block with the same markers in README.md, so the README's benchmark tables are
exactly what the bench scripts wrote.

    python benchmarks/update_readme.py           # rewrite README.md
    python benchmarks/update_readme.py --check   # exit 1 if README.md differs from the results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from resultsfile import RESULTS, marked_blocks, replace_marked  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def results_blocks(results_dir: Path = RESULTS) -> dict[str, str]:
    """name -> block body, from every results file (a name used twice is an error)."""
    blocks: dict[str, str] = {}
    for path in sorted(Path(results_dir).glob("*.md")):
        for name, body in marked_blocks(path.read_text(encoding="utf-8")).items():
            if name in blocks:
                raise SystemExit(f"benchmark block {name!r} is marked in two results files")
            blocks[name] = body
    return blocks


def updated_readme(readme_text: str, blocks: dict[str, str]) -> str:
    """README text with every marked block replaced by the results' block of the same name.

    Raises
    ------
    SystemExit
        README marks a block that no results file has.
    """
    missing = sorted(set(marked_blocks(readme_text)) - set(blocks))
    if missing:
        raise SystemExit(f"README.md marks benchmark blocks no results file has: {missing}")
    return replace_marked(readme_text, blocks)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when out of date")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new = updated_readme(text, results_blocks())
    if args.check:
        if new != text:
            print(f"{args.readme} is out of date: run python benchmarks/update_readme.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

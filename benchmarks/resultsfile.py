"""Results files (``benchmarks/results/<part>.md``) written whole by their bench scripts.

A results file is a title, a generated summary and one section per run (``## ...``), each written
by the run that measured it. Summaries are computed from the tables of the run sections, never
typed, so they cannot disagree with them; re-render a file from its runs (no measuring) with
``python benchmarks/bench_<part>.py --render``. The blocks between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` are copied into the docs (README.md, docs/*.md) by ``benchmarks/update_docs.py``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SUMMARY_HEADING = "## Summary"
_MARK = re.compile(r"<!-- bench:([A-Za-z0-9_.-]+) -->(.*?)<!-- /bench:\1 -->", re.S)


def marked(name: str, body: str) -> str:
    """``body`` between the markers that update_docs.py copies."""
    return f"<!-- bench:{name} -->\n{body.strip()}\n<!-- /bench:{name} -->"


def marked_blocks(text: str) -> dict[str, str]:
    """name -> body of every marked block in ``text``."""
    return {m.group(1): m.group(2).strip("\n") for m in _MARK.finditer(text)}


def replace_marked(text: str, blocks: dict[str, str]) -> str:
    """``text`` with the body of each marked block named in ``blocks`` replaced."""
    def sub(m):
        name = m.group(1)
        return marked(name, blocks[name]) if name in blocks else m.group(0)

    return _MARK.sub(sub, text)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def dicts(self) -> list[dict[str, str]]:
        return [dict(zip(self.header, r, strict=False)) for r in self.rows]


def parse_tables(text: str) -> list[Table]:
    """The markdown pipe tables in ``text``, cells as strings."""
    tables, lines, k = [], text.splitlines(), 0
    while k < len(lines):
        if (lines[k].startswith("|") and k + 1 < len(lines)
                and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[k + 1].strip())):
            header = _cells(lines[k])
            rows = []
            k += 2
            while k < len(lines) and lines[k].startswith("|"):
                rows.append(_cells(lines[k]))
                k += 1
            tables.append(Table(header, rows))
        else:
            k += 1
    return tables


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def num(cell: str) -> float | None:
    """The first number in a cell ("1,508" 1508.0, "8.2×" 8.2, "28,926 ev/s" 28926.0); None for
    "—", "-", "≈0 (...)" and empty cells."""
    if cell is None or cell.startswith("≈"):
        return None
    m = re.search(r"-?\d[\d,]*(?:\.\d+)?", cell)
    return float(m.group(0).replace(",", "")) if m else None


def table_md(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A pipe table; ``align`` one letter per column: l (default) or r."""
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, rule, *rows])


def split_sections(text: str) -> tuple[str, list[str]]:
    """(text before the first ``## `` heading, [each ``## `` section with its heading])."""
    parts = re.split(r"(?m)^(?=## )", text)
    return parts[0], [p.strip("\n") for p in parts[1:]]


def run_sections(path: Path) -> list[str]:
    """The run sections of a results file (the generated summary left out)."""
    if not Path(path).exists():
        return []
    _, sections = split_sections(Path(path).read_text(encoding="utf-8"))
    return [s for s in sections if not s.startswith(SUMMARY_HEADING)]


def add_run(path: Path, section: str, *, append: bool, replaces: str | None = None) -> list[str]:
    """The run sections after this run: ``section`` added to the file's runs (``append``) or
    alone; with ``replaces``, earlier sections whose heading starts with it are dropped."""
    runs = run_sections(path) if append else []
    if replaces:
        runs = [s for s in runs if not s.startswith(replaces)]
    return [*runs, section.strip("\n")]


def write_file(path: Path, title: str, intro: str, summary: str, runs: list[str]) -> str:
    """Write the whole results file (atomically) and return its text."""
    parts = [f"# {title}", intro.strip()]
    if summary.strip():
        parts.append(f"{SUMMARY_HEADING}\n\n_Generated from the tables below by the bench script "
                     f"(`--render` rewrites it without measuring)._\n\n{summary.strip()}")
    parts += runs
    text = "\n\n".join(p for p in parts if p) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return text


def machine_note() -> str:
    """Where the figures were measured, with the load average: these machines are shared."""
    import platform

    try:
        load = ", load average {:.1f} / {:.1f} / {:.1f} (1 / 5 / 15 min) at the end".format(
            *os.getloadavg())
    except OSError:
        load = ""
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
            f"{load}")


def span(values, fmt: str = "{:.3g}", unit: str = "") -> str:
    """"a" or "a–b" over the values that are not None."""
    vs = sorted(v for v in values if v is not None)
    if not vs:
        return "—"
    lo, hi = fmt.format(vs[0]), fmt.format(vs[-1])
    return (lo if lo == hi else f"{lo}–{hi}") + unit

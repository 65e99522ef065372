"""``mcrecall recall USER_ID -k K``: print a user's top-k as a table."""

from __future__ import annotations

import argparse
import json
import sys

from mcrecall.serve.client import RecallClient
from mcrecall.serve.types import NoModelError, VersionChurnError


def add_recall_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user_id", help="external user id")
    parser.add_argument("-k", type=int, default=10, help="number of items (default 10)")
    parser.add_argument("--exclude-seen", action="store_true",
                        help="leave out items the user already has triples for")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def format_table(user_id: str, result) -> str:
    """The readable table: rank, item, score, source, version."""
    rows = [(str(r + 1), it.item_id, f"{it.score:.4f}", it.source, str(result.version))
            for r, it in enumerate(result.items)]
    head = ("rank", "item", "score", "source", "version")
    widths = [max(len(h), *(len(row[c]) for row in rows)) if rows else len(h)
              for c, h in enumerate(head)]
    right = (True, False, True, False, True)

    def line(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right)).rstrip()

    out = [f"user {user_id}: {len(rows)} item(s) from model version {result.version} "
           f"(source {result.source})", line(head), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def run_recall(args, cfg) -> int:
    client = RecallClient(cfg)
    try:
        result = client.recall_result(args.user_id, args.k, exclude_seen=args.exclude_seen)
    except (NoModelError, VersionChurnError) as e:
        print(f"mcrecall recall: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if args.json:
        print(json.dumps({"user_id": args.user_id, "version": result.version,
                          "items": [it._asdict() for it in result.items]}))
    else:
        print(format_table(args.user_id, result))
    return 0

"""The ``mcrecall`` command (placeholder; subcommands are wired in as the parts land)."""

import sys


def main(argv=None) -> int:
    print("mcrecall: not built yet", file=sys.stderr)
    return 2

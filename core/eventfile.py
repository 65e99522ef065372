"""One rule for every reader of an event file (``ingest --from-file``, ``produce``,
``evaluate --prequential``): a UTF-8 byte-order mark at the very start of the file is no part of
its first line and is skipped; anywhere else it is data (and makes that line invalid JSON)."""

from __future__ import annotations

import os
from typing import BinaryIO

BOM = b"\xef\xbb\xbf"


def open_event_file(path: str | os.PathLike) -> BinaryIO:
    """``open(path, "rb")``, positioned after a leading UTF-8 BOM if there is one."""
    f = open(path, "rb")
    try:
        if f.peek(len(BOM))[:len(BOM)] == BOM:
            f.read(len(BOM))
    except BaseException:
        f.close()
        raise
    return f

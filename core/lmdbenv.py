"""One LMDB environment per path per process, reference-counted (the one handle cache).

py-lmdb refuses to open one environment twice in a process, and serve, train and ingest may
share a process (the demo, the tests, an application that embeds them). Every handle on
``triples.lmdb`` (mcrecall.ingest.store) and ``users.lmdb`` (mcrecall.train.versions) goes through here:

* lifetime: :func:`acquire` opens the environment on first use and counts holders; the last
  :func:`release` closes it. A handle that is never released keeps it open until the process
  ends.
* map size: the first writer's map size is the environment's. A later writer asking for MORE
  than the open environment has is refused with :class:`MapSizeMismatchError` (one line,
  naming both sizes); growing an open map under other threads' read transactions is unsafe.
  A writer asking for less, or a reader (``map_size=None``), shares it as it is.

A ground module: it imports no part.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import lmdb

_ENVS: dict[str, list] = {}  # realpath -> [environment, holders]
_LOCK = threading.Lock()


class MapSizeMismatchError(RuntimeError):
    """The environment is already open in this process with a smaller map than asked for."""


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.4g} GiB"


def acquire(path: Path, opener: Callable[[], lmdb.Environment],
            map_size: int | None = None) -> lmdb.Environment:
    """The process's environment at ``path``, opened by ``opener()`` if none is open.

    Parameters
    ----------
    path : the environment directory.
    opener : opens it (the owner's options: map size, max_dbs, read-only fallback...).
    map_size : the map size this writer needs, or None (a reader: any size will do).

    Every call must be matched by one :func:`release`.
    """
    key = os.path.realpath(path)
    with _LOCK:
        entry = _ENVS.get(key)
        if entry is None:
            entry = _ENVS[key] = [opener(), 0]
        elif map_size is not None:
            have = int(entry[0].info()["map_size"])
            if int(map_size) > have:
                raise MapSizeMismatchError(
                    f"{path} is already open in this process with a {_gib(have)} map; this "
                    f"handle asks for {_gib(int(map_size))} (use one [store] map_size_gb per "
                    "process)")
        entry[1] += 1
        return entry[0]


def release(path: Path) -> None:
    """One holder of ``path``'s environment is done; the last one closes it."""
    key = os.path.realpath(path)
    with _LOCK:
        entry = _ENVS.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            entry[0].close()
            del _ENVS[key]


def holders(path: Path) -> int:
    """How many handles hold ``path``'s environment in this process (0: closed)."""
    entry = _ENVS.get(os.path.realpath(path))
    return 0 if entry is None else entry[1]

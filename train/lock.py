"""The publisher lock: one process at a time changes what a version serves (publish, refresh).

Minimal version of the serving issue's lock (same API): ``fcntl.flock`` on
``<data_dir>/publish.lock``; the kernel releases it when the holder dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path


class PublisherBusyError(RuntimeError):
    """Another process holds the publisher lock."""


@contextlib.contextmanager
def publisher_lock(data_dir, *, wait: bool = True, timeout_s: float | None = None):
    """Hold ``<data_dir>/publish.lock`` exclusively for the ``with`` block.

    Parameters
    ----------
    wait : block until the lock is free (bounded by ``timeout_s``); False: fail at once.
    timeout_s : give up waiting after this long (None: wait forever).

    Raises
    ------
    PublisherBusyError
        The lock is held elsewhere and ``wait`` is False or ``timeout_s`` passed.
    """
    path = Path(data_dir) / "publish.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout_s is None else time.monotonic() + float(timeout_s)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if (not wait or deadline) else 0))
                break
            except BlockingIOError:
                if not wait or (deadline is not None and time.monotonic() >= deadline):
                    raise PublisherBusyError(
                        f"another process is publishing or refreshing ({path} is locked)") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

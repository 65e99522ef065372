"""One publisher at a time: an exclusive lock on ``<data_dir>/publish.lock``.

Every process that allocates, publishes or drops model versions (``mcrecall train``, the demo,
tools) holds this lock meanwhile, so version numbers are allocated without races and cleanup
never drops another publisher's version in flight. It is an ``flock`` on an open file: the
kernel releases it when its holder dies, however it dies (SIGKILL included), so a crashed
trainer never blocks the next one and its leftovers can be recognised as such.

Re-entrant within a thread (a publisher may call code that takes it again); other threads of
the same process wait like other processes do.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = "publish.lock"
_POLL_S = 0.05


class PublisherBusyError(RuntimeError):
    """Another publisher holds the lock (and the caller chose not to wait, or timed out)."""


class _Held:
    """This process's hold on one lock file: the fd, the owning thread and the depth."""

    def __init__(self):
        self.mutex = threading.Lock()  # serialises threads of this process
        self.owner: int | None = None
        self.depth = 0
        self.fd: int | None = None


_HELD: dict[str, _Held] = {}
_HELD_LOCK = threading.Lock()


def lock_path(data_dir) -> Path:
    return Path(data_dir) / LOCK_FILE


def holder(data_dir) -> str:
    """Who holds the lock, as its holder wrote it (``pid N (ROLE) on HOST since T``), or ""."""
    try:
        return lock_path(data_dir).read_text().strip()
    except OSError:
        return ""


def _busy(data_dir, why: str) -> PublisherBusyError:
    who = holder(data_dir)
    return PublisherBusyError(
        f"another publisher holds {lock_path(data_dir)}"
        + (f" ({who})" if who else "") + f"; {why}")


@contextmanager
def publisher_lock(data_dir, *, wait: bool = True, timeout_s: float | None = None,
                   role: str = "a publisher"):
    """Hold the publisher lock of ``data_dir`` for the ``with`` block.

    Parameters
    ----------
    data_dir : path-like
        The mcrecall data directory (created if missing).
    wait : bool
        Wait for the current holder to finish (default). False: raise at once if held.
    timeout_s : float, optional
        With ``wait``, give up after this many seconds (None: wait as long as it takes).
    role : str
        Who takes it (``"mcrecall train"``, ``"mcrecall refresh"``), written in the lock file
        so that a process kept waiting can say who holds it (:func:`holder`).

    Raises
    ------
    PublisherBusyError
        The lock is held by another process or thread and ``wait`` is False, or
        ``timeout_s`` passed.
    """
    if timeout_s is not None and not timeout_s >= 0:
        raise ValueError(f"timeout_s must be >= 0 or None, got {timeout_s!r}")
    path = lock_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    with _HELD_LOCK:
        held = _HELD.setdefault(key, _Held())
    me = threading.get_ident()
    if held.owner == me:  # re-entered by the thread that holds it
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
        return
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if not held.mutex.acquire(blocking=wait, timeout=-1 if deadline is None else timeout_s):
        raise _busy(data_dir, "not waiting" if not wait else f"gave up after {timeout_s:g} s")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _flock(fd, data_dir, wait, deadline, timeout_s)
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({role}) on {os.uname().nodename} since "
                          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode(), 0)
        except OSError:  # who holds it is information only
            pass
        held.owner, held.depth, held.fd = me, 1, fd
        try:
            yield
        finally:
            held.owner, held.depth, held.fd = None, 0, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # closing the only descriptor releases the flock
    finally:
        held.mutex.release()


def _flock(fd: int, data_dir, wait: bool, deadline: float | None, timeout_s) -> None:
    if wait and deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not wait:
                raise _busy(data_dir, "not waiting") from None
            if time.monotonic() >= deadline:
                raise _busy(data_dir, f"gave up after {timeout_s:g} s") from None
            time.sleep(_POLL_S)


def is_locked(data_dir) -> bool:
    """True if some process (this one included) holds the lock now."""
    path = lock_path(data_dir)
    if not path.exists():
        return False
    held = _HELD.get(os.path.realpath(path))
    if held is not None and held.owner is not None:
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextmanager
def publisher_lock_logged(data_dir, *, wait: bool = True, log=print, what: str = "train"):
    """:func:`publisher_lock`, saying so in ``log`` when it has to wait for another holder."""
    try:
        with publisher_lock(data_dir, wait=False, role=f"mcrecall {what}"):
            yield
            return
    except PublisherBusyError:
        if not wait:
            raise
    log(f"{what}: waiting for the publisher lock {lock_path(data_dir)} held by "
        f"{holder(data_dir) or 'another process'} (one publisher at a time)")
    with publisher_lock(data_dir, wait=True, role=f"mcrecall {what}"):
        log(f"{what}: got the publisher lock")
        yield

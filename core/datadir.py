"""Checks of ``[store] data_dir`` before a command touches it: one line that says what is wrong.

Without them a data dir that is a file surfaces as ``NotADirectoryError`` deep in LMDB (or as an
empty status), and a read-only one as ``lmdb.ReadonlyError`` from every command. Read-only
commands (``status``, ``recall``, ``triples``) only need to read: the stores open their LMDB
environments read-only and without the lock file where the directory is not writable.
"""

from __future__ import annotations

import os
from pathlib import Path

# the LMDB environments a writing command may open inside the data dir
_ENVS = ("triples.lmdb", "users.lmdb")
_HINT = "[store] data_dir / MCRECALL_STORE_DATA_DIR"


class DataDirError(RuntimeError):
    """The data directory cannot serve this command (message: one line, what to do)."""


FULL_BELOW_BYTES = 4 << 20  # a filesystem with less free space than this reads as full


def disk_full(path: str | os.PathLike) -> bool:
    """Whether the filesystem holding ``path`` (or its nearest existing parent) is full.

    LMDB reports a full disk as ENOSPC, or — where the write goes through its memory map, as on
    tmpfs — as a bare ``Input/output error`` (EIO): the free space tells them apart."""
    import shutil

    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free < FULL_BELOW_BYTES
    except OSError:
        return False


def is_disk_full_error(e: BaseException, path: str | os.PathLike) -> bool:
    """Whether ``e`` (an LMDB or OS error while writing under ``path``) means the disk is full."""
    errno = getattr(e, "errno", None)
    text = str(e)
    if errno == 28 or "No space left" in text:
        return True
    return (errno == 5 or "Input/output error" in text) and disk_full(path)


def disk_full_message(path: str | os.PathLike, e: BaseException, what: str) -> str:
    """One line: the disk is full, where, what was not written, and that a rerun is safe."""
    import shutil

    where = Path(path)
    try:
        u = shutil.disk_usage(where if where.exists() else where.parent)
        space = f" ({u.free / 1e6:.1f} MB free of {u.total / 1e6:.0f} MB)"
    except OSError:
        space = ""
    return (f"the disk holding {where} is full{space}: {what} was not written (the transaction "
            f"rolled back; LMDB said: {' '.join(str(e).split())}). Free space or "
            f"move {_HINT}, then run the command again: a rerun is safe, nothing is half-written")


def writable(path: Path) -> bool:
    """Whether this process may create and change files in directory ``path``.

    ``os.access`` answers for the real uid and for read-only mounts (EROFS), so a data dir on a
    read-only volume reads as not writable even for root.
    """
    return os.access(path, os.W_OK | os.X_OK)


def lmdb_env_writable(env_dir: Path) -> bool:
    """Whether an LMDB environment directory can be opened for writing (lock file included)."""
    if not env_dir.exists():
        return writable(env_dir.parent) if env_dir.parent.is_dir() else False
    return writable(env_dir) and all(
        os.access(env_dir / f, os.W_OK) for f in ("data.mdb", "lock.mdb") if (env_dir / f).exists())


def check_data_dir(path: str | os.PathLike, *, write: bool, must_exist: bool = True) -> Path:
    """Raise :class:`DataDirError` when ``path`` cannot serve a command; return it as a Path.

    Parameters
    ----------
    write : the command creates or changes files there (ingest, train, milvus).
    must_exist : for a read-only command, a missing directory is an error (recall, triples);
        ``status`` passes False and reports the absence itself.
    """
    p = Path(path)
    where = f"data dir {p}"
    if p.exists() and not p.is_dir():
        raise DataDirError(f"{where} is not a directory (check {_HINT})")
    if not p.exists():
        if not write:
            if must_exist:
                raise DataDirError(f"{where} does not exist: nothing ingested yet, or {_HINT} "
                                   "points elsewhere")
            return p
        parent = next((a for a in p.absolute().parents if a.exists()), None)
        if parent is None or not parent.is_dir():
            raise DataDirError(f"{where} cannot be created: {parent} is not a directory")
        if not writable(parent):
            raise DataDirError(f"{where} cannot be created: {parent} is not writable")
        return p
    if not os.access(p, os.R_OK | os.X_OK):
        raise DataDirError(f"{where} is not readable by this user")
    if write:
        if not writable(p):
            raise DataDirError(f"{where} is not writable (read-only mount or permissions); "
                               "status, recall and triples can still read it")
        for name in _ENVS:
            env = p / name
            if env.exists() and (not env.is_dir() or not lmdb_env_writable(env)):
                raise DataDirError(f"{env} is not a writable LMDB directory (owner or mode?)")
    return p

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

"""Crash points: the one hook the crash tests use to kill a process at a named step.

A crash test runs a command with ``<hook env>=<step>`` in its environment; the process dies
the moment it reaches ``crash_point(<step>, hook)``: no ``finally``, no ``atexit``, no flush,
as after a power cut or ``kill -9``. Then the test checks that what the process left behind
is consistent (the previous version still served, the next run repairs the rest).

Hooks (the environment variables have no ``MCRECALL_`` prefix: the config loader owns those):

* :data:`TRAIN` — ``MCR_TRAIN_CRASH_AT``: the publication steps of ``mcrecall train``
  (train/publish.py ``CRASH_POINTS``) and the file store's rename
  (``file-store-rename``, plugins/file_store.py); the process SIGKILLs itself
  (``subprocess`` reports ``-9``).
* :data:`REFRESH` — ``MCR_REFRESH_CRASH_AT``: the steps of ``mcrecall refresh``
  (train/refresh.py ``CRASH_POINTS``); the process leaves with ``os._exit(87)``.
* :data:`REPLICA` — ``MCR_REPLICA_CRASH_AT``: the steps of ``mcrecall replica``
  (serve/replica.py ``CRASH_POINTS``); SIGKILL.

A ground module (imports no part), so every part may call it.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class CrashHook:
    """One crash-test hook: the environment variable naming the step, and how the process dies.

    Attributes
    ----------
    env : str
        The environment variable; its value is the name of the step to die at.
    exit_code : int
        The exit status a parent sees (``subprocess`` ``returncode``): negative = killed by
        that signal (``-9``: SIGKILL), otherwise ``os._exit(exit_code)``.
    """

    env: str
    exit_code: int


TRAIN = CrashHook("MCR_TRAIN_CRASH_AT", -int(signal.SIGKILL))
REFRESH = CrashHook("MCR_REFRESH_CRASH_AT", 87)
REPLICA = CrashHook("MCR_REPLICA_CRASH_AT", -int(signal.SIGKILL))
HOOKS = (TRAIN, REFRESH, REPLICA)


def crash_point(name: str, hook: CrashHook = TRAIN) -> None:
    """Die at once if ``hook``'s environment variable names the step ``name`` (crash tests only).

    Parameters
    ----------
    name : str
        The step just completed (``"users"``, ``"current"``, ``"solved"``...).
    hook : CrashHook
        :data:`TRAIN` (default) or :data:`REFRESH`.
    """
    if os.environ.get(hook.env) == name:
        if hook.exit_code < 0:
            os.kill(os.getpid(), -hook.exit_code)
        os._exit(hook.exit_code if hook.exit_code >= 0 else 128 - hook.exit_code)

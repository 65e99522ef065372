"""Structured logging for the workers: ``ts level logger event key=value ...`` on stderr.

Call sites log an event name as the message and the fields as ``extra={...}``; every line is
greppable and the counters in it are cumulative, so a log is also a progress record.
"""

from __future__ import annotations

import logging
import sys
import time

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_SECRETS: set[str] = set()


def redact_in_logs(*secrets: str) -> None:
    """Replace these strings by ``<redacted>`` in every line this module's formatter writes (a
    library may log its whole configuration at debug level: kafka-python's admin client does)."""
    _SECRETS.update(s for s in secrets if s)


def redact(text: str) -> str:
    """``text`` with every secret registered by :func:`redact_in_logs` replaced."""
    for secret in _SECRETS:
        text = text.replace(secret, "<redacted>")
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(
            f"{k}={_fmt(v)}" for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        )
        line = f"{ts} {record.levelname.lower():5s} {record.name} {record.getMessage()}"
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    s = str(v)
    return f'"{s}"' if (" " in s or not s) else s


def setup_logging(verbosity: int = 0) -> None:
    """Quiet by default (mcrecall info lines only); ``-v`` adds debug, ``-vv`` library logs."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING if verbosity < 2 else logging.DEBUG)
    logging.getLogger("mcrecall").setLevel(logging.INFO if verbosity == 0 else logging.DEBUG)
    # kafka-python logs every reconnect attempt at ERROR/WARNING; we report outages ourselves
    logging.getLogger("kafka").setLevel(logging.CRITICAL if verbosity < 2 else logging.DEBUG)

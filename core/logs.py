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
    for s in secrets:
        if s:
            _SECRETS.update(_spellings(s))


def _spellings(s: str) -> set[str]:
    """``s`` as written and as a log line may spell it: inside the repr() of a str or of bytes
    (kafka-python's debug lines show its config dict and the SASL bytes on the wire), with the
    quote escaped or not (that depends on the text around it), and as JSON."""
    import json

    out = {s, json.dumps(s)[1:-1], json.dumps(s, ensure_ascii=False)[1:-1]}
    for r in (repr(s + "'\"")[1:-4], repr(s.encode("utf-8") + b"'\"")[2:-4]):
        out |= {r, r.replace("\\'", "'")}  # repr escapes ' only when the text holds both quotes
    return out


def redact(text: str) -> str:
    """``text`` with every secret registered by :func:`redact_in_logs` replaced."""
    for secret in sorted(_SECRETS, key=len, reverse=True):  # longest first: no partial leftovers
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


# Libraries that log failures mcrecall reports itself, in its own words (one line): silenced by
# the command line below -vv. pymilvus configures its own handler when imported (after
# setup_logging), so its loggers are quietened again where it is imported (quiet_library).
_QUIET_LIBRARIES = {"pymilvus": False, "milvus_lite": False}
# loggers a library configures apart (own level and handler, no propagation)
_SUBLOGGERS = {"pymilvus": ("pymilvus.milvus_client", "pymilvus.bulk_writer", "pymilvus.decorators")}


def quiet_library(name: str) -> None:
    """Apply the command line's choice to library ``name``'s loggers (no-op outside the CLI)."""
    if _QUIET_LIBRARIES.get(name):
        for n in (name, *_SUBLOGGERS.get(name, ())):
            logging.getLogger(n).setLevel(logging.CRITICAL)


def setup_logging(verbosity: int = 0) -> None:
    """Quiet by default (mcrecall info lines only); ``-v`` adds debug, ``-vv`` library logs."""
    for name in _QUIET_LIBRARIES:
        _QUIET_LIBRARIES[name] = verbosity < 2
        quiet_library(name)
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

"""Dead letters: bad events forwarded to ``<topic>.dlq`` with their coordinates (DESIGN §1).

A dead letter is the bad message unchanged when key, value and headers fit in ``[ingest]
max_message_bytes``; otherwise key and value are cut to fit (header ``truncated: true``;
``original-size`` is always the value's size in bytes). Headers: ``error`` (the reason, at most
1 KiB), ``source-topic``, ``source-partition``, ``source-offset``, ``original-size``,
``truncated`` (and ``original-key-size`` when the key had to be cut).

:func:`forward` sends a poll's dead letters and retries the ones the topic refused, a bounded
number of times; it returns those that stay unwritten, which the worker then counts as bad in the
transaction that moves the offset past them. No message can stop ingest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

ERROR_HEADER_MAX = 1024
# key/value lengths + header names and values are counted exactly; this covers the record's own
# framing (varints, timestamp and offset deltas) and a share of its batch's header
FRAMING_BYTES = 256
# after a size rejection the broker's limit is below ours: one more try at a size every Kafka takes
FALLBACK_BYTES = 64 * 1024
ATTEMPTS = 2


@dataclass(frozen=True)
class DeadLetter:
    """A bad message and where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str


def _cut_utf8(data: bytes, n: int) -> bytes:
    """``data`` cut to at most ``n`` bytes on a UTF-8 character boundary."""
    if len(data) <= n:
        return data
    return data[:n].decode("utf-8", "ignore").encode("utf-8")


def build_record(dl: DeadLetter, max_bytes: int) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of ``dl``'s dead letter, at most ``max_bytes`` in all (with
    :data:`FRAMING_BYTES`): unchanged if it fits, else the key cut to at most half of the room
    left by the headers and the value to the rest."""
    key, value = dl.key, dl.value if dl.value is not None else b""
    # a reason quoting hostile input (a lone surrogate) must not stop ingest either
    headers = [("error", _cut_utf8(dl.reason.encode("utf-8", "backslashreplace"), ERROR_HEADER_MAX)),
               ("source-topic", dl.topic.encode()),
               ("source-partition", str(dl.partition).encode()),
               ("source-offset", str(dl.offset).encode()),
               ("original-size", str(len(value)).encode())]
    # room for the "truncated" and "original-key-size" headers, whichever way the cut goes
    reserve = len("truncated") + len("false") + len("original-key-size") + 20
    room = max(0, max_bytes - FRAMING_BYTES - reserve - sum(len(n) + len(v) for n, v in headers))
    klen = len(key) if key is not None else 0
    if klen + len(value) <= room:
        return key, value, headers + [("truncated", b"false")]
    if key is not None and klen > room // 2:
        headers.append(("original-key-size", str(klen).encode()))
        key = key[:room // 2]
        klen = len(key)
    return key, value[:room - klen], headers + [("truncated", b"true")]


def _is_size_error(err: BaseException) -> bool:
    # kafka-python: MessageSizeTooLargeError / RecordTooLargeError; librdkafka: MSG_SIZE_TOO_LARGE
    text = f"{type(err).__name__} {err}".lower()
    return "toolarge" in text or "too large" in text or "too_large" in text


def forward(producer, dlq: str, letters: list[DeadLetter], max_bytes: int,
            timeout_s: float) -> list[tuple[DeadLetter, str]]:
    """Send ``letters`` to topic ``dlq`` and wait until the broker has them.

    Parameters
    ----------
    producer : a client with ``send(topic, key=, value=, headers=) -> future`` (``future.get(timeout=)``)
        and ``flush(timeout=)``, whose delivery timeout is at most ``timeout_s``.
    max_bytes : ``[ingest] max_message_bytes``.
    timeout_s : the wait for one round; at most :data:`ATTEMPTS` rounds.

    Returns
    -------
    The letters still unwritten after the last round, each with its last error.
    """
    pending = [(dl, max_bytes) for dl in letters]
    failed: list[tuple[DeadLetter, str]] = []
    for _ in range(ATTEMPTS):
        sent = []
        for dl, budget in pending:
            key, value, headers = build_record(dl, budget)
            try:
                sent.append((dl, budget, producer.send(dlq, key=key, value=value, headers=headers)))
            except Exception as e:  # refused before it left (too large, no metadata, closed)
                sent.append((dl, budget, e))
        try:
            producer.flush(timeout=timeout_s)
        except Exception:  # a flush that times out: the futures below say which ones failed
            pass
        deadline = time.monotonic() + 1.0
        pending, failed = [], []
        for dl, budget, fut in sent:
            err = fut if isinstance(fut, BaseException) else None
            if err is None:
                try:
                    fut.get(timeout=max(0.05, deadline - time.monotonic()))
                    continue
                except Exception as e:
                    err = e
            failed.append((dl, f"{type(err).__name__}: {err}"))
            pending.append((dl, min(budget, FALLBACK_BYTES) if _is_size_error(err) else budget))
        if not pending:
            return []
    return failed

"""Stored offsets checked against the partition's range when a worker is assigned a partition.

The store's offset ``s`` of a partition is the next offset to consume; it is *in range* when
``beginning <= s <= end`` (``end`` = the high watermark, the offset the next message will get).
Outside, the broker no longer has what the store expects: it lost its data or the topic was
recreated (``s > end``), or retention removed messages never consumed (``s < beginning``).
Consuming on would wait silently at an offset that will not exist for a long time, or skip data;
``[kafka] offset_reset`` says what to do instead:

- ``fail`` (default): record the state in the store (``mcrecall status`` shows it) and stop with
  one line naming topic, partition, stored offset and range;
- ``earliest``: move the stored offset to ``beginning`` (re-reading merges idempotently);
- ``latest``: move it to ``end`` (what lies between is skipped).

The Kafka calls live in the worker; this module decides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

POLICIES = ("fail", "earliest", "latest")


class OffsetOutOfRangeError(RuntimeError):
    """A stored offset is outside its partition's range and ``[kafka] offset_reset = "fail"``."""


@dataclass(frozen=True)
class PartitionRange:
    """A stored offset and the range the broker reports for its partition."""

    topic: str
    partition: int
    stored: int
    beginning: int
    end: int

    @property
    def in_range(self) -> bool:
        return self.beginning <= self.stored <= self.end

    def describe(self) -> str:
        return (f"{self.topic}[{self.partition}] stored offset {self.stored} not in "
                f"[{self.beginning}, {self.end}]")

    def note(self, state: str, **extra) -> dict:
        """What ``mcrecall status`` shows for the partition (kept in the store)."""
        return {"state": state, "stored": self.stored, "beginning": self.beginning, "end": self.end,
                "at_unix": round(time.time(), 3), **extra}


def reset_target(policy: str, r: PartitionRange) -> int:
    """The offset ``earliest`` / ``latest`` moves an out-of-range stored offset to."""
    if policy == "earliest":
        return r.beginning
    if policy == "latest":
        return r.end
    raise ValueError(f"no reset target for offset_reset = {policy!r}")


def failure_message(problems: list[PartitionRange]) -> str:
    """One line for ``offset_reset = fail``."""
    return (f"{'; '.join(p.describe() for p in problems)}: the broker no longer has what the store "
            "expects (its data lost, the topic recreated, or retention removed unread messages). "
            "Nothing was consumed. To go on, set [kafka] offset_reset = \"earliest\" (re-read the "
            "partition; merging is idempotent) or \"latest\" (skip to its end), e.g. "
            "MCRECALL_KAFKA_OFFSET_RESET=earliest, for one run")

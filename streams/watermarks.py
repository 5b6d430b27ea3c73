"""Event-time watermarks of the join's two input streams, per source partition.

A stream (the predictions, or the outcomes) is read from several partitions, each in its own order. Its
watermark is the event time below which no more of its events are expected: the *smallest* of its
partitions' latest plausible event times, less the out-of-order allowance, so a partition read behind the
others (after a restart, or a backlog) holds the watermark back instead of being passed by it. Only
plausible event times (:mod:`schemas.eventtime`) reach it: one bad timestamp cannot move it.

A partition that the router reports idle no longer holds the watermark back, as in Flink's
``withIdleness``, with one more condition: idle is quiet for the idle timeout *and* read to the end of its
log (the offset read is at the high watermark the consumer knows, :meth:`streams.routing.Router.reports`).
Quiet alone is not caught up: a slow consumer or a stalled fetch leaves a quiet partition with unread
events, and a watermark passing them would expire predictions whose outcomes are still to be read. When
every partition of a stream is idle the stream has no watermark of its own; the join decides what that
means for each stream.

Watermarks only ever advance: a partition coming back from idle behind the others does not pull it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: What :meth:`StreamClock.candidate` returns when every partition of the stream is idle.
ALL_IDLE = None
#: The least latest event time of a stream none of whose partitions is active (below any event time).
_NONE_ACTIVE = -(2**63)


@dataclass
class SourceClock:
    """One source partition: its latest plausible event time (``-1`` before any), and whether it is idle."""

    latest: int = -1
    idle: bool = False


@dataclass
class StreamClock:
    """One input stream's partitions and its watermark (ms, ``-1`` before it is known)."""

    #: How many partitions the source topic has (``0``: not told; the partitions seen so far are all).
    partitions: int = 0
    sources: dict[int, SourceClock] = field(default_factory=dict)
    watermark: int = -1
    #: The least latest event time of the active partitions (:data:`_NONE_ACTIVE` with none), kept while
    #: nothing can have moved it (``None``: to be found again). The join asks at every event, and an event
    #: moves the least only when it comes from the partition that had it: its clock is dropped then.
    _low: int | None = field(default=None, init=False, repr=False, compare=False)

    def observe(self, source: int, ts: int) -> None:
        """A plausible event at ``ts`` came from ``source``."""
        clock = self.sources.get(source)
        if clock is None:
            clock = self.sources[source] = SourceClock()
            self._low = None
        if clock.idle:
            clock.idle = False
            self._low = None
        if ts > clock.latest:
            if self._low is not None and clock.latest <= self._low:
                self._low = None  # it may have been the least
            clock.latest = ts

    def expect(self, partitions: int) -> None:
        """The source topic has ``partitions`` partitions: until each has been heard of, none moves it."""
        self.partitions = max(self.partitions, partitions)

    def report(self, source: int, latest: int, idle: bool, partitions: int) -> None:
        """What the router knows of ``source``: its latest plausible event time, and whether it is idle."""
        self.partitions = max(self.partitions, partitions)
        clock = self.sources.get(source)
        if clock is None:
            clock = self.sources[source] = SourceClock()
        clock.latest = max(clock.latest, latest)
        clock.idle = idle
        self._low = None

    def candidate(self, out_of_order_ms: int) -> int | None:
        """The watermark its partitions allow now (``-1``: none yet), or :data:`ALL_IDLE`."""
        if self.partitions and len(self.sources) < self.partitions:
            return -1  # a partition not heard of yet may still hold anything
        low = self._low
        if low is None:
            low = self._low = min(
                (c.latest for c in self.sources.values() if not c.idle), default=_NONE_ACTIVE
            )
        if low == _NONE_ACTIVE:
            return ALL_IDLE if self.sources else -1
        return low - out_of_order_ms if low >= 0 else -1

    def advance(self, to: int) -> bool:
        """Move the watermark to ``to`` if that is later; whether it moved."""
        if to > self.watermark:
            self.watermark = to
            return True
        return False

    def as_dict(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "watermark": self.watermark,
            "sources": {str(s): {"latest": c.latest, "idle": c.idle} for s, c in self.sources.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StreamClock:
        sources = {int(s): SourceClock(int(c["latest"]), bool(c["idle"])) for s, c in d["sources"].items()}
        return cls(int(d["partitions"]), sources, int(d["watermark"]))


@dataclass
class Clocks:
    """The join's clocks: one per input stream."""

    predictions: StreamClock = field(default_factory=StreamClock)
    outcomes: StreamClock = field(default_factory=StreamClock)

    def stream(self, name: str) -> StreamClock:
        return self.predictions if name == "predictions" else self.outcomes

    def as_dict(self) -> dict[str, Any]:
        return {"predictions": self.predictions.as_dict(), "outcomes": self.outcomes.as_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Clocks:
        return cls(StreamClock.from_dict(d["predictions"]), StreamClock.from_dict(d["outcomes"]))

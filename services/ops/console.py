"""The ops console behind ``modelwatch tail``: follow contract topics, one readable line per event.

Each message becomes a :class:`TailEvent` (decoded and validated with the contract's codec, or marked bad
with the reason), passes the :class:`Filters`, and is drawn by :class:`LineFormatter`
(:mod:`services.ops.lines`) as one line::

    12:00:01.123 model-commands  ▶ deploy    20261124T034100-3f2a9c1b  c-5b1e0d  by ops: weekly retrain
    12:00:01.423 model-events    ✓ activated 20261124T034100-3f2a9c1b  c-5b1e0d  serve-1  +300 ms
    12:01:30.002 alerts          FIRING      20261124T034100-3f2a9c1b  critical f1-drop: f1 0.210 < 0.350

Commands and acknowledgements share their columns (action or event, version, command id) so a deploy and
its acks read side by side. The console reads with its own consumer and ``assign()``: it joins no group and
commits nothing, so it can never take partitions from, or move the offsets of, the services it watches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from rich.console import Console
from rich.text import Text

from schemas import topics as contract
from schemas.errors import KafkaClientError
from services import kafka
from services.config import Settings
from services.ops.lines import LineFormatter, TailEvent

State = Literal["firing", "resolved"]


def resolve_topics(names: Sequence[str], prefix: str) -> list[contract.Topic]:
    """The contract topics named by ``names`` (with or without ``prefix``); all of them when empty.

    Raises ``ValueError`` naming the unknown topic and the known ones.
    """
    if not names:
        return list(contract.ALL)
    chosen: list[contract.Topic] = []
    for name in names:
        topic = contract.resolve(name, prefix) or contract.BY_SUFFIX.get(name)
        if topic is None:
            known = ", ".join(t.suffix for t in contract.ALL)
            raise ValueError(f"{name!r} is not a contract topic (known: {known}, with or without {prefix!r})")
        if topic not in chosen:
            chosen.append(topic)
    return chosen


@dataclass(frozen=True)
class Filters:
    """Which events to show. An unset filter admits everything.

    A valid event is shown only when it carries the filtered field with that value (``--version`` keeps
    predictions, metrics, alerts, commands and acks of that version, and hides requests). A bad event is
    shown unless its parsed fields visibly name another value: a filter cannot tell where an unreadable
    message belongs, and bad messages are what an operator must not miss.
    """

    version: str | None = None
    state: State | None = None
    instance: str | None = None
    #: ``--model``: the events of one model; an event that names none is ``default_model``'s.
    model: str | None = None
    default_model: str | None = None

    def _wanted(self) -> list[tuple[str, str]]:
        pairs = [("model_version", self.version), ("state", self.state), ("instance", self.instance)]
        return [(field, value) for field, value in pairs if value is not None]

    def _model_admits(self, fields: dict[str, Any]) -> bool:
        if self.model is None:
            return True
        named = fields.get("model")
        return (named if isinstance(named, str) else self.default_model or self.model) == self.model

    def admits(self, ev: TailEvent) -> bool:
        wanted = self._wanted()
        if ev.event is not None:
            return self._model_admits(ev.event) and all(ev.event.get(f) == value for f, value in wanted)
        fields = ev.loose or {}
        if "model" in fields and not self._model_admits(fields):
            return False
        return all(field not in fields or fields[field] == value for field, value in wanted)


@dataclass(frozen=True)
class TailResult:
    shown: int
    bad: int
    #: True when ``max_events`` was given and reached (False when the timeout or Ctrl-C came first).
    reached_max: bool


def _emit(
    batch: list[TailEvent], formatter: LineFormatter, as_json: bool, out: Console, err: Console
) -> None:
    """Print one poll batch in one write: a busy request topic costs one print, not thousands."""
    if as_json:
        valid = [orjson.dumps(ev.event) for ev in batch if ev.event is not None]
        for ev in batch:
            if ev.event is None:
                err.print(formatter.format(ev), soft_wrap=True)
        if valid:
            out.file.write(b"\n".join(valid).decode() + "\n")
            out.file.flush()
    elif batch:
        # soft_wrap: one event stays one line whatever the console's width (grep, less -S).
        out.print(Text("\n").join(formatter.format(ev) for ev in batch), soft_wrap=True)


def _assignment(
    consumer: Consumer, names: Iterable[str], from_beginning: bool, timeout: float
) -> list[TopicPartition]:
    """Every partition of ``names``, at the beginning or at the end as of now.

    The end is read as concrete offsets rather than OFFSET_END, which librdkafka resolves only at the first
    fetch: an event written between start-up and that fetch would be lost, and "new events" would not
    mean "written after tail started".
    """
    wanted = list(names)
    try:
        meta = consumer.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaClientError(f"cannot read topic metadata: {exc.args[0].str()}") from exc
    out: list[TopicPartition] = []
    for name in wanted:
        tmeta = meta.topics.get(name)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            raise KafkaClientError(f"topic {name} does not exist (run `modelwatch topics create`)")
        for p in sorted(tmeta.partitions):
            if from_beginning:
                out.append(TopicPartition(name, p, OFFSET_BEGINNING))
            else:
                out.append(TopicPartition(name, p, kafka.watermarks(consumer, name, p, timeout)[1]))
    return out


def tail(
    settings: Settings,
    topics: Sequence[str] = (),
    *,
    filters: Filters | None = None,
    from_beginning: bool = False,
    max_events: int | None = None,
    timeout: float | None = None,
    as_json: bool = False,
    out: Console | None = None,
    err: Console | None = None,
    on_ready: Callable[[], None] | None = None,
) -> TailResult:
    """Follow ``topics`` (all contract topics when empty) and print one line per event to ``out``.

    With ``as_json`` each valid event is printed as one compact JSON line, and bad messages go to ``err``
    so stdout stays parseable. Stops after ``max_events`` shown events, after ``timeout`` seconds, or on
    Ctrl-C, and always closes its consumer. ``on_ready`` is called once the start offsets are fixed:
    every event written after it is seen.
    """
    chosen = resolve_topics(topics, settings.topic_prefix)
    by_name = {t.name(settings.topic_prefix): t for t in chosen}
    filters = filters or Filters()
    out = out or Console(highlight=False, soft_wrap=True)
    err = err or Console(stderr=True, highlight=False, soft_wrap=True)
    formatter = LineFormatter()
    consumer = Consumer(
        kafka.client_config(
            settings,
            **{
                # Required by librdkafka, never used: assign() joins no group and nothing is committed.
                "group.id": f"{settings.topic_prefix}tail",
                "enable.auto.commit": False,  # a console leaves no committed offsets behind
            },
        )
    )
    shown = bad = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        consumer.assign(_assignment(consumer, by_name, from_beginning, timeout=10.0))
        if on_ready is not None:
            on_ready()
        while max_events is None or shown < max_events:
            wait = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if wait <= 0:
                break
            batch: list[TailEvent] = []
            for msg in consumer.consume(500, timeout=wait):
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaClientError(f"tail: {error.str()}")
                    if error.code() != KafkaError._PARTITION_EOF:
                        err.print(f"modelwatch tail: kafka: {error.str()}", markup=False, style="dim")
                    continue
                topic = by_name.get(msg.topic() or "")
                if topic is None:
                    continue
                ev = TailEvent.decode(
                    topic,
                    msg.value(),
                    partition=msg.partition() or 0,
                    offset=msg.offset() or 0,
                    key=msg.key(),
                    timestamp_ms=msg.timestamp()[1],
                )
                if filters.admits(ev):
                    batch.append(ev)
            # Topics arrive in no particular order; within a batch, time order puts a command before its
            # acks (the sort is stable, so a partition's own order holds for equal times).
            batch.sort(key=lambda ev: ev.ts_ms or 0)
            if max_events is not None:
                batch = batch[: max_events - shown]
            shown += len(batch)
            bad += sum(ev.bad for ev in batch)
            _emit(batch, formatter, as_json, out, err)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return TailResult(shown, bad, max_events is not None and shown >= max_events)

"""The experiments' side of :class:`streams.app.Monitor`: their evidence out of the join, their comparison in
the watch agent, their events and commands (:mod:`streams.experiments`).

The join agent hands :meth:`ExperimentAgents.experiment_messages` each batch's labelled requests and shadow
pairs; while the command log says an experiment runs, they go on, as that experiment's evidence, to the
labelled topic. The watch agent hands the evidence messages it reads to :meth:`count_experiments`, which
feeds the comparison, sends the experiment events to ``rec.experiments`` and the decision's command to the
command topic (on the broker before the state that says it was sent is written), and writes the state to
the ``windows`` table (its changelog is what a restarted worker resumes from).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import faust

from schemas import codec
from services.config import Settings
from streams.evidence import evidence_messages, evidence_rows
from streams.experiments import Experiments
from streams.fleet import Fleet
from streams.history import CommandFollower
from streams.join import Joiner, Labelled
from streams.tables import PartitionedTable
from streams.watermarks import ALL_IDLE

log = logging.getLogger("modelwatch.monitor")

#: A batch without evidence sends the experiment's clock once it has moved this much event time (ms)...
CLOCK_EVERY_MS = 1000
#: ...or, when it has moved less, once this long (s) has passed since the last one: a clock that stops a
#: little past the last one sent (traffic that pauses or ends) still reaches the experiment. The monitor's
#: own clock only paces the messages; the source reader's reports, repeated while the sources are quiet,
#: bring the join a batch at least every second (streams.source_reader), so it is sent within two or so.
CLOCK_EVERY_S = 1.0


def event_clock(joiners: Iterable[Joiner], out_of_order_ms: int) -> int | None:
    """The join's event-time clock, an experiment's clock: the latest of this worker's join partitions'
    prediction watermarks and outcome watermarks as their event times alone allow (never the processing
    time an idle outcome stream falls back to); ``None`` before any. Each is the least of its source
    partitions' latest plausible event times (:mod:`streams.watermarks`), so one far-future timestamp does
    not move it."""
    times = []
    for joiner in joiners:
        times.append(joiner.clocks.predictions.watermark)
        outcomes = joiner.clocks.outcomes.candidate(out_of_order_ms)
        if outcomes is not ALL_IDLE:
            times.append(outcomes)
    clock = max(times, default=-1)
    return clock if clock >= 0 else None


class ExperimentAgents:
    """Mixed into :class:`streams.app.Monitor`, which sets these attributes up."""

    settings: Settings
    app: faust.App
    labelled: faust.TopicT
    commands_out: faust.TopicT
    windows: PartitionedTable
    follower: CommandFollower
    joiners: dict[int, Joiner]
    _generation: int
    _owned: set[int]
    experiments: Experiments
    experiments_out: faust.TopicT
    _experiments_generation: int = -1
    #: The clock last sent for the running experiment (this worker's join), and when (time.monotonic()),
    #: to pace the clock-only ones.
    _clock_sent: tuple[str, int, float] | None = None

    def _install_experiments(self, signing_key: str | None, signer: Any) -> None:
        self.experiments_out = self.app.topic(
            self.settings.topic("experiments"), key_type=str, value_type=bytes, value_serializer="raw"
        )
        self.experiments = Experiments(
            self.settings.experiments,
            model=self.settings.model_name,
            signer=signer,
            signing_key=signing_key,
            every_ms=int(self.settings.monitor.emit_every_s * 1000),
        )
        # A pre-period ends a label window before the start: all labelled by then (streams.pre_periods).
        self.experiments.pre_periods.lag_ms = int(self.settings.monitor.label_window_s * 1000)

    def experiment_messages(self, by_version: dict[str, list[Labelled]]) -> list[tuple[str, bytes]]:
        """The join's side: this batch's evidence for the running experiment (the shadow pairs the joiners
        labelled, or a canary's arms), as labelled-topic messages, with the join's event-time clock; a
        batch without evidence still sends the clock when it has moved (:meth:`_clock_due`): an
        experiment nobody's outcomes reach still ends at its ``max_duration_s``."""
        paired = [p for joiner in self.joiners.values() for p in joiner.take_paired()]
        if not self.follower.ready.is_set():
            return []  # which experiment runs is not known yet; its evidence starts a little later
        _, running = self.follower.experiment()
        if running is None:
            return []
        clock = event_clock(self.joiners.values(), int(self.settings.monitor.out_of_order * 1000))
        labelled = [item for items in by_version.values() for item in items]
        arms, pairs = evidence_rows(running, labelled, paired)
        if not (arms or pairs) and not self._clock_due(running.experiment_id, clock):
            return []  # nothing to count, and the clock has not moved, or hardly and only just
        if clock is not None:
            self._clock_sent = (running.experiment_id, clock, time.monotonic())
        return evidence_messages(running, arms, pairs, clock)

    def _clock_due(self, experiment_id: str, clock: int | None) -> bool:
        """Whether a batch without evidence sends ``clock``: it has moved :data:`CLOCK_EVERY_MS` since the
        last one sent, or moved at all and :data:`CLOCK_EVERY_S` has passed since."""
        last = self._clock_sent
        if clock is None:
            return False
        if last is None or last[0] != experiment_id:
            return True
        moved = clock - last[1]
        return moved >= CLOCK_EVERY_MS or (moved > 0 and time.monotonic() - last[2] >= CLOCK_EVERY_S)

    def _restore_experiments(self) -> Experiments:
        runs = self.experiments
        if self._experiments_generation != self._generation:
            runs.restore(self.windows.items(), self._owned)
            self._experiments_generation = self._generation
        return runs

    def count_pre_periods(
        self, items: list[Labelled], partition: int, offset: int, fleet: Fleet | None
    ) -> None:
        """The watch's side, for each bundle of labelled requests it counts: the served version's users'
        pre-periods (streams.pre_periods), written with the experiments' state by count_experiments."""
        if fleet is None or not items or items[0].model_version != fleet.served:
            return  # only the version serving everyone: the incumbent of an experiment to come
        runs = self._restore_experiments()
        runs.hold_pre_periods()
        runs.pre_periods.add_labelled(items, partition, offset)

    async def count_experiments(self, messages: list[tuple[bytes, int, int]]) -> None:
        """The watch's side (under its lock): evidence counted, events and decisions sent, state written."""
        runs = self._restore_experiments()
        for value, partition, offset in messages:
            runs.count(value, partition, offset)
        if not runs.runs and not runs.dirty and not runs.pre_periods.dirty:
            return
        now_ms = int(time.time() * 1000)
        sent = []
        if self.follower.ready.is_set():  # nothing decided before the command log has been read
            applied, running = self.follower.experiment()
            for command in runs.decide(applied, running, now_ms):
                value = codec("model-command").encode(command)
                sent.append(
                    await self.commands_out.send(key=self.settings.model_name, value=value, force=True)
                )
        for event in runs.events(now_ms):
            value = codec("experiment").encode({**event, "model": self.settings.model_name})
            sent.append(await self.experiments_out.send(key=event["experiment_id"], value=value, force=True))
        if sent:
            await asyncio.gather(*sent)  # on the broker before the state that says it was sent
        for key, partition, state in runs.take_dirty():
            self.windows.writing_partition = partition
            if state is not None:
                self.windows[key] = state
            elif key in self.windows:
                del self.windows[key]

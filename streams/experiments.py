"""The monitor's side of an experiment: the comparison fed from the labelled stream, and its decision.

**Where the evidence comes from.** The join (:mod:`streams.join`) labels each request with its outcome;
while the command log says an experiment runs (:func:`services.deployment.experiments.running`), the join
agent also sends that batch's evidence for it, in one message keyed by the incumbent version, on the
labelled topic (:mod:`streams.evidence`). The key puts an experiment's evidence on one labelled
partition, so one worker (the owner of that partition) runs its comparison; it is the incumbent's
partition, where that worker keeps the users' pre-periods a canary is adjusted by
(:mod:`streams.pre_periods`).

- *Canary*: each arm's labelled requests from its own users (the same salted hash the replicas use,
  :func:`services.serving.experiment.on_candidate`: the candidate's answers to the candidate's users, the
  incumbent's to the others), each with its user: the comparison's units are the users.
- *Shadow*: the pairs of the incumbent's and the candidate's shadow prediction of one request labelled by
  the same outcome (:class:`streams.join.Paired`). A shadow prediction is never a labelled request of its
  version: it reached no user, so it counts in no version's windows, alerts or rollbacks.

**Since the experiment started** (:mod:`streams.experiment_counting`). Nothing in a prediction says which
command was in force when it was made, and a command's ``ts`` is its issuer's clock. The experiment's start
in event time is therefore the earliest request time of the first candidate evidence (a canary's candidate
answers nobody before the command, a shadow scores nothing before it); the incumbent's requests from before
it are left out.

**The decision** (:class:`streams.comparison.Comparison`) becomes a command the monitor sends itself:
``promote`` or ``abort`` (an inconclusive experiment is aborted, saying why), naming the candidate and the
experiment, signed with the monitor's key like its rollbacks, the evidence in ``reason``. Its id is
:func:`command_id`, derived from the experiment and the decision: before sending, the command log is
checked for it (a restart, a second worker), and a decision already sent (kept in the state) is never
sent again. **Stages** (``[experiments] canary_after_shadow``): a shadow it would promote goes on to a
canary at that share of users instead, by a ``canary`` command (id ``experiment:<id>:canary``, its
``experiment_id`` :func:`canary_of` the shadow's, both derived, so one command whoever sends it), and that
canary decides in its turn. A promote, abort, deploy or rollback by anyone else that ends the experiment
first ends it here too, without a command.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from schemas.errors import ExperimentError
from services.config import ExperimentSettings
from services.deployment import commands
from services.deployment.experiments import Experiment
from services.registry.keys import Signer
from streams.comparison import Comparison, Decision, Mode
from streams.experiment_counting import add_rows, deadline, fresh_rows, run_clock
from streams.experiment_replays import CountedRequests
from streams.markers import MarkerRecord
from streams.pre_periods import KEY_PREFIX as PRE_PERIOD_KEYS
from streams.pre_periods import PrePeriods
from streams.rollback import ISSUER

log = logging.getLogger("modelwatch.monitor")

#: Keys of the labelled topic (and of the ``windows`` table) that hold an experiment, not a version.
KEY_PREFIX = "experiment:"
#: Ended experiments remembered (in memory) against their late evidence.
FINISHED_KEPT = 100


def command_id(experiment_id: str, decision: Decision | str) -> str:
    """The monitor's command for ``decision`` (or ``"canary"``, a shadow's next stage) of the experiment:
    the same id on every try."""
    step = decision.value if isinstance(decision, Decision) else decision
    return f"{KEY_PREFIX}{experiment_id}:{step}"


def canary_of(shadow_id: str) -> str:
    """The id of the canary a promoted shadow goes on to: derived from the shadow's, so a restarted or
    second worker names the same experiment (and the replicas split its users alike)."""
    return f"{shadow_id}-canary"


@dataclass
class Run:
    """One experiment as the monitor runs it."""

    experiment: Experiment
    comparison: Comparison
    partition: int  # the labelled partition of its evidence (its state is written there too)
    offset: int = -1  # the last evidence message counted: a message read again is not counted twice
    commanded: str | None = None  # the decision's command id, once it is on its way
    changed: bool = True  # counted since its last experiment event
    #: The monitor's event-time clock when it first saw the experiment run (not before the command was
    #: issued): its start for the deadline while no candidate evidence says more
    #: (:func:`streams.experiment_counting.deadline`).
    since_ms: int | None = None
    #: The requests counted lately, against the join's replays (:mod:`streams.experiment_replays`).
    counted: CountedRequests = field(init=False)

    def __post_init__(self) -> None:
        self.counted = CountedRequests(f"{KEY_PREFIX}{self.experiment.experiment_id}")

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX}{self.experiment.experiment_id}|state"

    def as_dict(self) -> dict[str, Any]:
        return {
            "experiment": asdict(self.experiment),
            "comparison": self.comparison.to_dict(),
            "partition": self.partition,
            "offset": self.offset,
            "commanded": self.commanded,
            "since_ms": self.since_ms,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Run:
        return cls(
            Experiment(**d["experiment"]),
            Comparison.from_dict(d["comparison"]),
            int(d["partition"]),
            int(d["offset"]),
            d.get("commanded"),
            changed=False,
            since_ms=d.get("since_ms"),
        )

    def event(self, ts: int) -> dict[str, Any]:
        e = self.experiment
        traffic = e.traffic if e.traffic is not None else 1.0  # a shadow scores every request
        return self.comparison.event(
            experiment_id=e.experiment_id,
            candidate=e.candidate,
            incumbent=e.incumbent,
            traffic=traffic,
            ts=ts,
        )


@dataclass
class Experiments:
    """The experiments this worker runs (those whose evidence partition it owns): feed it the evidence
    messages, ask it for the commands to send; it knows nothing of Faust."""

    settings: ExperimentSettings
    #: The model whose experiments these are (named in each command, inside its signed body).
    model: str | None = None
    signer: Signer | None = None
    signing_key: str | None = None
    runs: dict[str, Run] = field(default_factory=dict)
    invalid: int = 0
    #: Experiment events at most this often (each decision at once).
    every_ms: int = 5000
    #: Keys of the ``windows`` table to write after this evaluation: (partition, the run's state, or
    #: ``None`` to delete it).
    dirty: dict[str, tuple[int, dict[str, Any] | str | None]] = field(default_factory=dict)
    _last_event: dict[str, int] = field(default_factory=dict)
    #: The last run that ended on this worker, as its final event: the metrics still show its decision.
    ended: dict[str, Any] | None = None
    #: Experiments that ended here: evidence the join sent before it saw the end is not counted afresh.
    finished: dict[str, None] = field(default_factory=dict)
    #: The users' pre-periods under the versions whose labelled stream this worker counts: a canary's
    #: covariate (streams.pre_periods); its records are written with the runs' (take_dirty).
    pre_periods: PrePeriods = field(default_factory=PrePeriods)

    def __post_init__(self) -> None:
        self.pre_periods.pre_period_s = self.settings.pre_period_s
        self.pre_periods.max_users = self.settings.pre_period_users

    def restore(self, records: Iterable[tuple[str, Any]], owned: Collection[int]) -> None:
        self.runs = {}
        counted: dict[str, list[MarkerRecord]] = {}
        records = list(records)
        self.pre_periods.restore(records, owned)
        for key, value in records:
            if key.startswith(PRE_PERIOD_KEYS):
                continue
            if not key.startswith(KEY_PREFIX):
                continue
            if (seen := CountedRequests.parse_key(key)) is not None:  # a string (a dict, from older monitors)
                counted.setdefault(seen[0], []).append((seen[1], seen[2], value))
                continue
            if not isinstance(value, dict):
                continue
            try:
                run = Run.from_dict(value)
            except (ExperimentError, KeyError, TypeError, ValueError) as exc:
                log.warning("experiment state %s unreadable, left: %r", key, exc)
                continue
            if run.partition in owned:
                self.runs[run.experiment.experiment_id] = run
        for run in self.runs.values():
            run.counted = CountedRequests.load(run.counted.key, counted.get(run.counted.key, []))
            log.info(
                "restored experiment %s: %s, labelled %s",
                run.experiment.experiment_id, run.comparison.decision.value, run.comparison.labelled,
            )  # fmt: skip

    def count(self, value: bytes, partition: int, offset: int) -> Run | None:
        """One evidence message (:func:`evidence`); the run it changed, if any."""
        try:
            doc = orjson.loads(value)
            experiment = Experiment(**doc["experiment"])
            arms, pairs = doc["arms"], doc["pairs"]
            watermark = None if doc.get("watermark") is None else int(doc["watermark"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self.invalid += 1
            log.warning("skipped an experiment message at offset %d: %r", offset, exc)
            return None
        run = self.runs.get(experiment.experiment_id)
        if run is None and experiment.experiment_id in self.finished:
            return None  # late evidence of an experiment that has ended
        if run is None:
            comparison = Comparison(Mode(experiment.mode), self.settings)
            run = self.runs[experiment.experiment_id] = Run(experiment, comparison, partition)
            log.info("experiment %s: comparing %s with %s (%s)", experiment.experiment_id,
                     experiment.candidate, experiment.incumbent, experiment.mode)  # fmt: skip
        if offset <= run.offset and partition == run.partition:
            return None  # read again after a restart: counted already
        run.offset, run.partition = offset, partition
        before = (run.comparison.labelled, run.comparison.decision, run.comparison.latest_ms)
        try:
            clock = run_clock(run, arms, pairs, watermark)
            shadow = run.comparison.mode is Mode.SHADOW
            # Remembered at the run's clock (it never goes back: a replayed message may carry an earlier one).
            at = max(clock or 0, run.comparison.latest_ms or 0)
            arms, pairs = (
                ([], fresh_rows(run, pairs, 7, at)) if shadow else (fresh_rows(run, arms, 6, at), [])
            )
            add_rows(run.comparison, arms, pairs, watermark, self.pre_periods, experiment.incumbent)
            deadline(run, clock)
        except (ExperimentError, TypeError, ValueError, IndexError) as exc:
            self.invalid += 1
            log.warning("skipped an experiment message at offset %d: %r", offset, exc)
        # An event (paced) also when only its clock moved: an experiment without traffic shows it runs.
        run.changed |= (run.comparison.labelled, run.comparison.decision, run.comparison.latest_ms) != before
        self.dirty[run.key] = (run.partition, run.as_dict())
        for key, record in run.counted.changes(run.comparison.latest_ms):
            self.dirty[key] = (run.partition, record)
        return run

    def decide(
        self, applied: Sequence[dict[str, Any]], running: Experiment | None, now_ms: int
    ) -> list[dict[str, Any]]:
        """The commands to send now, given the applied commands in log order and the experiment they say
        runs. Runs that something else ended are dropped (their state deleted)."""
        on_log = {c["command_id"] for c in applied}
        out = []
        for eid, run in list(self.runs.items()):
            decision = run.comparison.decision
            if run.commanded is not None and run.commanded in on_log:
                self._end(eid, f"its command {run.commanded} is on the command log")
                continue
            if running is None or running.experiment_id != eid:
                ended = next((c for c in reversed(applied) if c.get("experiment_id") == eid), None)
                why = f"command {ended['command_id']} ({ended['action']})" if ended else "a later command"
                self._end(eid, f"ended by {why}")
                continue
            if decision is Decision.RUNNING or run.commanded is not None:
                continue
            command = self._command(run, decision, now_ms)
            run.commanded = command["command_id"]
            self.dirty[run.key] = (run.partition, run.as_dict())
            if run.commanded in on_log:
                continue  # sent before a restart: the log has it
            out.append(command)
            log.warning("experiment %s decided: %s (command %s)", eid, run.comparison.reason, run.commanded)
        return out

    def _command(self, run: Run, decision: Decision, now_ms: int) -> dict[str, Any]:
        """The command that carries out ``decision``: ``promote`` or ``abort`` the candidate; or, for a
        shadow to promote when stages are configured, a ``canary`` of it (a new experiment, its id
        :func:`canary_of` the shadow's) that decides in turn."""
        eid, share = run.experiment.experiment_id, self.settings.canary_after_shadow
        reason = f"experiment {eid}: {run.comparison.reason}"
        action: commands.Action = "promote" if decision is Decision.PROMOTE else "abort"
        cid, next_id, traffic = command_id(eid, decision), eid, None
        if action == "promote" and run.experiment.mode == Mode.SHADOW and share is not None:
            action, traffic, next_id = "canary", share, canary_of(eid)
            cid, reason = command_id(eid, "canary"), f"{reason}; on to a canary at {share:g} of users"
        return commands.make(
            action,
            run.experiment.candidate,
            reason,
            key=self.signing_key,
            signer=self.signer,
            command_id=cid,
            issued_by=ISSUER,
            experiment_id=next_id,
            traffic=traffic,
            ts=now_ms,
            model=self.model,
        )

    def _end(self, eid: str, why: str) -> None:
        run = self.runs.pop(eid)
        log.info("experiment %s ends in the monitor: %s", eid, why)
        self.ended = run.event(run.comparison.latest_ms or 0)
        self.finished[eid] = None
        while len(self.finished) > FINISHED_KEPT:
            del self.finished[next(iter(self.finished))]
        self.dirty[run.key] = (run.partition, None)
        for key, record in run.counted.clear():
            self.dirty[key] = (run.partition, record)
        self._last_event.pop(eid, None)

    def events(self, now_ms: int) -> list[dict[str, Any]]:
        """An experiment event for each run counted since its last one: at most every ``every_ms`` (the
        monitor's clock, which only paces them), and at once when it has decided; its ``ts`` is the latest
        event time counted."""
        out = []
        for eid, run in self.runs.items():
            due = now_ms - self._last_event.get(eid, -self.every_ms) >= self.every_ms
            if run.changed and (due or run.comparison.decision is not Decision.RUNNING):
                run.changed = False
                self._last_event[eid] = now_ms
                # Stamped with the evidence's event time (the schema's ts), never the monitor's clock.
                out.append(run.event(run.comparison.latest_ms or now_ms))
        return out

    def standing(self) -> list[dict[str, Any]]:
        """Where each run stands (an experiment event each), the last ended one too: for the metrics."""
        running = [run.event(run.comparison.latest_ms or 0) for run in self.runs.values()]
        ended = [] if self.ended is None or self.ended["experiment_id"] in self.runs else [self.ended]
        return ended + running

    def hold_pre_periods(self) -> None:
        """Keep the pre-period of the running canary (the earliest start of those here) from eviction."""
        starts = [
            r.comparison.started_ms
            for r in self.runs.values()
            if r.comparison.mode is Mode.CANARY and r.comparison.started_ms is not None
        ]
        self.pre_periods.hold_ms = min(starts) if starts else None

    def take_dirty(self) -> list[tuple[str, int, dict[str, Any] | str | None]]:
        """(key, partition, the state or ``None`` to delete it) to write now: the runs', the pre-periods'."""
        out = [(key, partition, value) for key, (partition, value) in self.dirty.items()]
        self.dirty = {}
        return out + self.pre_periods.take_dirty()

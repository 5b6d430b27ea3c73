"""The demo's second story: progressive delivery decided on delayed labels, by the monitor alone.

A good retrain goes to a shadow (scored beside the incumbent on every request, never shown to a user);
the monitor's comparison finds it no worse than the margin and, with ``[experiments] canary_after_shadow``
set, sends it on to a canary; the canary is compared on its own users and promoted, and the retrain then
serves everyone. A degraded version is then deployed as a canary: the monitor aborts it, and meanwhile
it answered exactly the users its share hashes to it (the share of predictions varies around it).

Like the rest of the demo, every step is judged from what crosses Kafka: the commands (who issued them,
their experiment), the replicas' acknowledgements, the experiment events and the predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.config import Settings
from services.deployment import orders as deployment
from services.deployment.experiments import experiment_id_of
from services.registry import Registry
from services.sandbox.processes import wait_for
from services.serving.experiment import on_candidate


class Watching(Protocol):
    """What the story reads of :class:`services.sandbox.demo.Watcher`."""

    def of(self, suffix: str, **match: Any) -> list[dict[str, Any]]: ...

    def acks(self, command: dict[str, Any], instances: list[str]) -> dict[str, int] | None: ...

    def made(self) -> list[tuple[str, str, int, str]]: ...


class Noting(Protocol):
    def add(self, what: str, at_ms: int | None = None) -> None: ...


@dataclass
class StagedResult:
    """What the story showed: each decision's experiment event, and the degraded canary's exposure."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    #: Predictions per version from each replica's activation of the degraded canary to its abort.
    canary_made: dict[str, int] = field(default_factory=dict)
    #: Of those, the ones answered by the arm the user's hash does not pick (none, when the split holds).
    canary_off_arm: int = 0

    @property
    def canary_share(self) -> float:
        total = sum(self.canary_made.values())
        return self.canary_made.get("degraded", 0) / total if total else 0.0


def decided_line(event: dict[str, Any]) -> str:
    """One decision, per arm: ``promote: 212 candidate / 212 incumbent labelled, F1 per request 0.241 vs
    0.239, estimate +0.002 [-0.030, +0.040]``."""
    labelled, means, low_high = event["labelled"], event.get("means") or {}, event.get("interval")
    interval = f" [{low_high[0]:+.3f}, {low_high[1]:+.3f}]" if low_high else ""
    estimate = f", estimate {event['estimate']:+.3f}{interval}" if event.get("estimate") is not None else ""
    f1 = ""
    if means.get("candidate") is not None and means.get("incumbent") is not None:
        f1 = f", F1 per request {means['candidate']:.3f} vs {means['incumbent']:.3f}"
    return (
        f"{event['decision']}: {labelled['candidate']:,} candidate / {labelled['incumbent']:,} incumbent "
        f"labelled{f1}{estimate}"
    )


def staged_story(
    settings: Settings,
    watcher: Watching,
    timeline: Noting,
    instances: list[str],
    registry: Registry,
    versions: dict[str, str],
    canary_share: float,
    timeout_s: float,
    say: Callable[[str], None] = print,
) -> StagedResult:
    """Shadow, canary and promote ``versions["retrain"]``; then canary ``versions["degraded"]`` and watch
    the monitor abort it. Raises ``TimeoutError`` naming the step that did not come."""
    result = StagedResult()

    def obeyed(command: dict[str, Any], what: str) -> dict[str, int]:
        acks = wait_for(lambda: watcher.acks(command, instances), 30, f"both replicas to {what}")
        timeline.add(f"  acknowledged by {', '.join(f'{i} in {ms} ms' for i, ms in sorted(acks.items()))}")
        return acks

    def monitor_command(eid: str, actions: tuple[str, ...], what: str) -> dict[str, Any]:
        """The monitor's command ending experiment ``eid`` (a canary names the one it starts: the shadow's
        command id says which experiment it came from)."""
        command = wait_for(
            lambda: next(
                (
                    c
                    for c in watcher.of("model-commands")
                    if c["action"] in actions
                    and (c.get("experiment_id") == eid or c["command_id"].startswith(f"experiment:{eid}:"))
                ),
                None,
            ),
            timeout_s,
            what,
        )
        decided = wait_for(
            lambda: next(
                (e for e in watcher.of("experiments", experiment_id=eid) if e["decision"] != "running"), None
            ),
            30,
            f"the decided event of {eid}",
        )
        result.decisions.append(decided)
        timeline.add(f"  {eid} {decided_line(decided)}", decided["ts"])
        timeline.add(_command_line(command), command["ts"])
        return command

    retrain, degraded = versions["retrain"], versions["degraded"]
    say(f"shadowing the retrain {retrain}: the monitor compares it with the incumbent ...")
    shadow = deployment.start_experiment(
        settings, retrain, reason="demo: shadow the retrain", registry=registry
    )
    timeline.add(_command_line(shadow), shadow["ts"])
    obeyed(shadow, "start the shadow")
    canary = monitor_command(
        experiment_id_of(shadow), ("canary", "abort", "promote"), "the shadow's decision"
    )
    if canary["action"] != "canary":
        raise TimeoutError(f"the monitor's canary of {retrain} (it sent {canary['action']} instead)")
    obeyed(canary, "start the canary")
    say(f"the monitor moved {retrain} on to a canary at {canary['traffic']:g}; waiting for its decision ...")
    promote = monitor_command(canary["experiment_id"], ("promote", "abort"), "the canary's decision")
    if promote["action"] != "promote":
        raise TimeoutError(f"the monitor's promotion of {retrain} (it sent {promote['action']} instead)")
    obeyed(promote, "make the retrain active")

    say(f"deploying the degraded version {degraded} as a canary at {canary_share:g} ...")
    bad = deployment.start_experiment(
        settings, degraded, canary_share, reason="demo: canary of the degraded version", registry=registry
    )
    timeline.add(_command_line(bad), bad["ts"])
    started = obeyed(bad, "start the degraded canary")
    abort = monitor_command(experiment_id_of(bad), ("abort", "promote"), "the degraded canary's decision")
    if abort["action"] != "abort":
        raise TimeoutError(f"the monitor's abort of {degraded} (it sent {abort['action']} instead)")
    ended = obeyed(abort, "send everyone back to the retrain")
    # Each replica's predictions between its own two acknowledgements: one clock per replica.
    role = {degraded: "degraded", retrain: "retrain"}
    for version, instance, ts, user in watcher.made():
        if instance in started and bad["ts"] + started[instance] <= ts < abort["ts"] + ended[instance]:
            name = role.get(version, version)
            result.canary_made[name] = result.canary_made.get(name, 0) + 1
            arm = degraded if on_candidate(experiment_id_of(bad), user, canary_share) else retrain
            result.canary_off_arm += version != arm
    timeline.add(
        f"  the degraded canary made {result.canary_share:.1%} of the "
        f"{sum(result.canary_made.values()):,} predictions meanwhile (its share of users: "
        f"{canary_share:.0%}; predictions off the user's arm: {result.canary_off_arm})"
    )
    return result


def _command_line(command: dict[str, Any]) -> str:
    """``canary 2026...-ab12 at 0.2 (experiment e-..-canary) by modelwatch-monitor``."""
    traffic = f" at {command['traffic']:g}" if command.get("traffic") is not None else ""
    experiment = f" (experiment {command['experiment_id']})" if command.get("experiment_id") else ""
    return (
        f"{command['action']} {command['model_version']}{traffic}{experiment} "
        f"by {command.get('issued_by', 'unknown')}"
    )

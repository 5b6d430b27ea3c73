"""What the monitor decides on: one consistent view of the deployment state at one evaluation.

The command follower (:mod:`streams.history`) keeps a :class:`~services.deployment.state.DeploymentState`
up to date in a thread; each evaluation takes one :class:`Fleet` from it under its lock, so the epochs,
the rollback decisions and the activation alerts of one evaluation all see the same state.

The version *served* is what the live replicas acknowledged (activations and heartbeats), not the last
command: a deploy whose version no replica could load leaves the fleet on the old version, and the
monitor keeps judging (and may roll back) that one. Only when no live replica has said anything (a first
start, or a monitor run without replicas) is the commanded version taken as served, and never one that no
replica could load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.deployment.experiments import ACTIVATING
from services.deployment.state import DeploymentState


@dataclass(frozen=True)
class Fleet:
    #: The applied commands that made their version active for everyone (deploy, rollback, promote), in
    #: log order: a shadow or canary experiment, and its abort, leave the incumbent what is commanded.
    applied: Sequence[dict[str, Any]]
    commanded: str | None  # the version the last applied command names
    acknowledged: str | None = None  # the version most live replicas serve (None: no live replica has one)
    serving: dict[str, str | None] = field(default_factory=dict)  # live replica -> the version it serves
    #: version -> replica -> why it would not load there (replicas that have not loaded it since).
    rejected: dict[str, dict[str, str]] = field(default_factory=dict)
    unloadable: frozenset[str] = frozenset()  # versions some replica could not load and none ever did
    rolled_back_for_alerts: frozenset[str] = frozenset()  # never a rollback target, unless an operator says

    @property
    def served(self) -> str | None:
        """The version the fleet serves: the live replicas' answer, else the commanded version if loadable."""
        if self.acknowledged is not None:
            return self.acknowledged
        return self.commanded if self.commanded not in self.unloadable else None

    @classmethod
    def of(cls, state: DeploymentState, now_ms: int | None = None) -> Fleet:
        """The view of ``state`` now (the caller holds whatever lock guards ``state``)."""
        versions = {str(c["model_version"]) for c in state.applied} | set(state.load_failures)
        return cls(
            applied=[c for c in state.applied if c["action"] in ACTIVATING],
            commanded=state.commanded,
            acknowledged=state.served(now_ms),
            serving=state.serving(now_ms),
            rejected={v: r for v in sorted(versions) if (r := state.rejected(v))},
            unloadable=frozenset(v for v in versions if state.unloadable(v)),
            rolled_back_for_alerts=frozenset(state.rolled_back_for_alerts()),
        )

    @classmethod
    def of_commands(cls, applied: Sequence[dict[str, Any]]) -> Fleet:
        """A fleet known only from its commands (no replica has said anything): for tests and tools."""
        state = DeploymentState()
        for command in applied:
            state.feed_command(command)
        return cls.of(state)

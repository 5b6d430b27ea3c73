"""What the monitor reads of its own outputs' topics: the deployment state and the alerts it sent.

The command follower is the monitor's view of :class:`~services.deployment.state.DeploymentState`, read by
:class:`~services.deployment.follower.Follower` as the replicas and the CLI read it: the whole command log
(one partition, in offset order) from the beginning on each start, and the replicas' acknowledgements and
heartbeats, then both followed. Nothing is committed, so no consumer-group offset can make it miss the
start of the history.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from schemas import codec
from schemas.errors import ContractError
from services import kafka
from services.config import Settings
from services.deployment.experiments import Experiment
from services.deployment.follower import Follower
from services.kafka.topics import check_command_topic
from streams.fleet import Fleet

log = logging.getLogger(__name__)


class CommandFollower:
    """The deployment state, followed in a background thread; every view is a copy taken under a lock."""

    def __init__(self, settings: Settings) -> None:
        # Refuse a command topic with more partitions now, before the worker starts: one line on stderr.
        # A cluster not up yet is waited for by the worker; start() and the thread check again.
        check_command_topic(settings, timeout=5.0, unreachable_ok=True)
        self.settings = settings
        self.topic = settings.topic("model-commands")
        # Never committed (assign): the name only has to fall under the monitor's ACL prefix.
        self._follower = Follower(settings, f"{settings.topic_prefix}monitor-history")
        self.ready: threading.Event = self._follower.ready  # set once the history has caught up at start

    @property
    def started(self) -> bool:
        return self._follower.ident is not None

    @property
    def error(self) -> Exception | None:
        return self._follower.error

    def start(self) -> None:
        """Start following; raises :class:`KafkaClientError` at once if the command topic has more than one
        partition (the worker stops: no order of commands exists then)."""
        check_command_topic(self.settings)
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()

    def applied(self) -> list[dict[str, Any]]:
        """A copy of the applied commands, in log order."""
        with self._follower.lock:
            return list(self._follower.state.applied)

    def fleet(self) -> Fleet:
        """One consistent view of the deployment state for one evaluation (:mod:`streams.fleet`)."""
        with self._follower.lock:
            return Fleet.of(self._follower.state)

    def experiment(self) -> tuple[list[dict[str, Any]], Experiment | None]:
        """Every applied command in log order (experiment commands too), and the experiment running after
        them: one consistent view."""
        with self._follower.lock:
            state = self._follower.state
            return list(state.applied), state.experiment

    def commanded(self) -> str | None:
        """The version the last applied command names (which may be one no replica could load)."""
        with self._follower.lock:
            return self._follower.state.commanded

    def served(self) -> str | None:
        """The version the live replicas really serve (``None``: no live replica has a model)."""
        with self._follower.lock:
            return self._follower.state.served()

    def serving(self) -> dict[str, str | None]:
        """Live replica -> the version it serves."""
        with self._follower.lock:
            return self._follower.state.serving()

    def rejected(self, version: str) -> dict[str, str]:
        """Replica -> why ``version`` would not load there (replicas that have not loaded it since)."""
        with self._follower.lock:
            return self._follower.state.rejected(version)

    def unloadable(self, version: str) -> bool:
        """Some replica could not load ``version`` and none ever did: never the basis of a rollback."""
        with self._follower.lock:
            return self._follower.state.unloadable(version)


def published_alerts(settings: Settings, timeout: float = 30.0) -> set[tuple[str, str]]:
    """Every (alert_id, state) on the alert topic now: transitions a restarted worker must not repeat."""
    out: set[tuple[str, str]] = set()
    # Read by assignment, never committed; the group name only has to fall under the monitor's ACL prefix.
    group: dict[str, Any] = {"group.id": f"{settings.topic_prefix}monitor-history"}
    for _key, value, _ts in kafka.read_topic(settings, settings.topic("alerts"), timeout=timeout, **group):
        try:
            alert = codec("alert").decode(value)
        except ContractError:
            continue
        out.add((alert["alert_id"], alert["state"]))
    return out

"""The system live, as the demo runs it: two replicas, the Faust monitor with the demo's alert rules, and
the storefront simulator at the demo's rate. Measured:

- the monitor's lag behind the simulator: its consumer group's lag on the prediction and outcome topics,
  sampled twice a second while the good version serves (committed offsets: the worker commits every
  ``monitor.commit_interval_s``, so the lag includes up to that much traffic);
- the control loop, after the degraded version is deployed: how many of its labelled requests the monitor
  counted before the rollback alert fired (and how long that took), the time from the alert to the
  monitor's rollback command, and from each command to each replica's acknowledgement.

Times come from the events themselves: a command's broker timestamp, an acknowledgement's ``ts`` (taken by
the replica right after the swap), an alert's broker timestamp.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.bench.rig import OffsetProbe, Rig
from services.bench.stats import percentile
from services.bench.tap import Seen, Tap
from services.config import Settings
from services.deployment import orders as deployment
from services.registry import Registry
from services.sandbox.demo import DEMO_CONFIG, DemoPlan
from services.sandbox.processes import wait_for
from services.sandbox.storefront import SimulationPlan, simulate
from streams import READY

RULE = "f1-low"  # the demo's rollback rule
INSTANCES = ("live-1", "live-2")


@dataclass
class LiveRun:
    rate: float
    warmup_s: float
    lag_samples: int = 0
    lag_p50_messages: float | None = None
    lag_max_messages: float | None = None
    lag_p50_s: float | None = None
    lag_max_s: float | None = None
    deploy_ack_ms: dict[str, int] = field(default_factory=dict)
    alert_after_labelled: int | None = None
    deploy_to_alert_s: float | None = None
    alert_to_command_ms: int | None = None
    rollback_ack_ms: dict[str, int] = field(default_factory=dict)

    @property
    def ack_ms(self) -> int | None:
        """The slowest acknowledgement of either command by any replica."""
        delays = [*self.deploy_ack_ms.values(), *self.rollback_ack_ms.values()]
        return max(delays) if delays else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ack_ms": self.ack_ms}


def _acks(tap: Tap, command: Seen) -> dict[str, int] | None:
    got = {
        e.value["instance"]: int(e.value["ts"]) - command.ts_ms
        for e in tap.of("model-events", event="activated", command_id=command.value["command_id"])
    }
    return got if set(INSTANCES) <= set(got) else None


def _command(tap: Tap, command_id: str) -> Seen | None:
    return next(iter(tap.of("model-commands", command_id=command_id)), None)


class LagSampler:
    """The monitor's lag on the joined topics (its source reader's group), sampled in a background thread."""

    def __init__(self, settings: Settings, every: float = 0.5) -> None:
        self.settings = settings
        self.every = every
        self.samples: list[int] = []
        #: The group's committed offsets summed over both topics, at each sample: what it has worked off.
        self.committed: list[int] = []
        self.recording = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ends = OffsetProbe(self.settings)
        group = OffsetProbe(self.settings, self.settings.monitor_route_group)  # the source reader's
        topics = [self.settings.topic("predictions"), self.settings.topic("outcomes")]
        try:
            while not self._stop.wait(self.every):
                if not self.recording:
                    continue
                lag = committed = 0
                for topic in topics:
                    end = ends.ends(topic)
                    done = group.committed(topic, list(end))
                    lag += sum(max(0, o - done.get(p, 0)) for p, o in end.items())
                    committed += sum(done.values())
                self.samples.append(lag)
                self.committed.append(committed)
        finally:
            ends.close()
            group.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def live_config(workdir: Path) -> Path:
    """The demo's monitor configuration (its alert rules and experiments' settings), in ``workdir``."""
    config = workdir / "live.toml"
    text = DEMO_CONFIG.format(data_dir=workdir / "live-monitor-data", canary_share=DemoPlan().canary_share)
    config.write_text(text)
    return config


def run_live(rig: Rig, good: str, bad: str, rate: float, warmup_s: float, timeout: float = 90.0) -> LiveRun:
    settings = rig.settings("live")
    rig.create(settings)
    registry = Registry.from_settings(settings)
    result = LiveRun(rate=rate, warmup_s=warmup_s)
    config = live_config(rig.workdir)
    tap = Tap(settings, ["metrics", "alerts", "model-commands", "model-events"])
    lag = LagSampler(settings)
    stop_sim = threading.Event()
    sim = threading.Thread(
        target=simulate,
        args=(settings, SimulationPlan(rate=rate, duration_s=3600)),
        kwargs={"stop": stop_sim},
        name="storefront",
        daemon=True,
    )
    monitor = rig.command("monitor-live", ["monitor", "--config", str(config)], settings)
    replicas = [rig.serve(settings, name) for name in INSTANCES]
    try:
        first = deployment.deploy(settings, good, "bench: the good version", registry=registry)
        seen = wait_for(lambda: _command(tap, first["command_id"]), 30, "the first deploy on the topic")
        wait_for(lambda: _acks(tap, seen), timeout, "both replicas to activate the good version")
        monitor.wait_for_log(READY, timeout)
        sim.start()
        wait_for(
            lambda: tap.of("metrics", model_version=good), timeout, "the first metrics of the good version"
        )
        lag.recording = True
        warm_end = time.monotonic() + warmup_s
        wait_for(lambda: time.monotonic() > warm_end, warmup_s + 5, "the end of the warm-up")
        lag.recording = False

        second = deployment.deploy(settings, bad, "bench: the degraded version", registry=registry)
        deployed = wait_for(lambda: _command(tap, second["command_id"]), 30, "the bad deploy on the topic")
        result.deploy_ack_ms = wait_for(
            lambda: _acks(tap, deployed), timeout, "both replicas to activate the bad version"
        )
        alert = wait_for(
            lambda: next(iter(tap.of("alerts", model_version=bad, state="firing", rule=RULE)), None),
            timeout,
            "the rollback alert on the degraded version",
        )
        result.alert_after_labelled = alert.value.get("total")
        result.deploy_to_alert_s = (alert.ts_ms - deployed.ts_ms) / 1000.0
        rollback = wait_for(
            lambda: next(iter(tap.of("model-commands", alert_id=alert.value["alert_id"])), None),
            30,
            "the monitor's rollback command",
        )
        result.alert_to_command_ms = rollback.ts_ms - alert.ts_ms
        result.rollback_ack_ms = wait_for(lambda: _acks(tap, rollback), timeout, "both replicas to roll back")
    finally:
        stop_sim.set()
        if sim.is_alive():
            sim.join(30)
        lag.stop()
        for proc in (*replicas, monitor):
            proc.stop(30)
        tap.stop()
    samples = [float(s) for s in lag.samples]
    per_s = 2 * rate  # predictions and outcomes
    result.lag_samples = len(samples)
    result.lag_p50_messages = percentile(samples, 50)
    result.lag_max_messages = max(samples) if samples else None
    result.lag_p50_s = None if result.lag_p50_messages is None else result.lag_p50_messages / per_s
    result.lag_max_s = None if result.lag_max_messages is None else result.lag_max_messages / per_s
    return result

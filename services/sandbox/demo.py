"""The demo: the whole system, end to end, on one machine, in under three minutes.

Start the broker (unless a cluster is named), create the topics, train a good version and a degraded one,
deploy the good one, start two prediction-service replicas and the Faust monitor, and play the storefront.
After a warm-up, deploy the degraded version: the monitor's rolling metrics fall, an alert fires, the
monitor orders a rollback, both replicas acknowledge it, and the metrics recover. Then progressive
delivery (:mod:`services.sandbox.demo_stages`): a good retrain goes shadow, canary and is promoted by the
monitor; the degraded version, as a canary, is aborted by it. Then stop everything that was started, print
the timeline, and draw the report.

The demo judges the story only from what crosses Kafka (its own consumer,
:mod:`services.sandbox.demo_watcher`, reads every output topic from the offsets they had when it began), so
it shows exactly what an operator tailing the topics would see.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.config import Settings
from services.deployment import orders as deployment
from services.kafka.topics import create_topics
from services.registry import Registry
from services.sandbox.broker import LocalCluster
from services.sandbox.demo_stages import StagedResult, staged_story
from services.sandbox.demo_watcher import Watcher
from services.sandbox.processes import ManagedProcess, wait_for
from services.sandbox.storefront import DEFAULT_WORLD_SEED, SimulationPlan, simulate
from services.sandbox.versions import train_on_world
from services.sandbox.world import World
from streams import READY

#: The alert the demo relies on: F1 on the last 300 labelled requests under 0.30 (the good version holds
#: about 0.40 online, as on held-out data), twice in a row, rolls the version back. The second rule watches
#: every version against its own held-out baseline and only notifies.
DEMO_CONFIG = """\
[monitor]
label_window_s = 5
count_window = 300
time_window_s = 30
emit_every_n = 100
emit_every_s = 1.0
rollback_cooldown_s = 20
data_dir = "{data_dir}"

[[alerts]]
name = "f1-low"
metric = "f1"
window = "count"
below = 0.30
resolve_above = 0.33
min_samples = 150
for = 2
severity = "critical"
action = "rollback"

[[alerts]]
name = "f1-under-baseline"
metric = "f1"
window = "time"
below_baseline = 0.25
min_samples = 300
for = 3
severity = "warning"
action = "notify"

# Small enough that each experiment decides in seconds at the demo's rate; a margin of 20% that the
# world's versions allow (per-request F1: incumbent and retrain about 0.24, the degraded one 0.15).
[experiments]
canary_after_shadow = {canary_share}
burn_in = 50
min_samples = 200
tuning = 500
margin = 0.2
max_duration_s = 300
"""


@dataclass(frozen=True)
class DemoPlan:
    rate: float = 150.0
    #: Seconds the good version serves before the degraded one is deployed.
    warmup_s: float = 35.0
    #: Longest the demo waits for the alert, the rollback and the recovery after the bad deploy.
    story_timeout_s: float = 60.0
    replicas: int = 2
    degrade: float = 0.9
    malformed: float = 0.005
    keep_running: bool = False
    out_dir: Path = Path("modelwatch-demo")
    #: The canaries' share of users (the shadow's next stage, and the degraded canary).
    canary_share: float = 0.2
    #: Longest the demo waits for each of the monitor's experiment decisions.
    decision_timeout_s: float = 120.0


@dataclass
class Timeline:
    t0: float = field(default_factory=time.time)
    rows: list[tuple[float, str]] = field(default_factory=list)

    def add(self, what: str, at_ms: int | None = None) -> None:
        at = (at_ms / 1000 if at_ms else time.time()) - self.t0
        self.rows.append((at, what))


@dataclass
class DemoResult:
    timeline: Timeline
    good: str
    bad: str
    retrain: str
    predictions: dict[str, int]
    dead_letters: int
    requests: int
    report_png: Path | None
    report_html: Path | None
    story_complete: bool
    staged: StagedResult | None = None


def _metric(events: list[dict[str, Any]], kind: str = "count") -> float | None:
    rows = [e for e in events if e["window"]["kind"] == kind and e["f1"] is not None]
    return rows[-1]["f1"] if rows else None


def run_demo(
    settings: Settings,
    plan: DemoPlan,
    say: Callable[[str], None] = print,
    on_watch: Callable[[Watcher], None] | None = None,
) -> DemoResult:
    """Run the demo and return what happened; a step that does not happen in time raises
    ``TimeoutError`` naming it. ``on_watch`` receives the watcher, for a live view."""
    out = plan.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    timeline = Timeline()
    cluster = None
    if settings.bootstrap is None:
        cluster = LocalCluster(settings.broker)
        started_broker = not all(n.running for n in cluster.nodes)
        say(f"broker: starting Kafka {settings.broker.kafka_version} on 127.0.0.1:{settings.broker.port}")
        cluster.start(say=say)
        timeline.add("broker up")
    else:
        started_broker = False
        say(f"broker: using {settings.bootstrap}")
    create_topics(settings)

    registry = Registry.from_settings(settings)
    say("training the good version (collaborative filtering on the storefront world) ...")
    good = train_on_world(settings, seed=0, registry=registry)
    say(f"  {good.version}: held-out F1 {good.metrics.get('f1'):.3f}")
    say(f"training a degraded version ({plan.degrade:.0%} of labels shuffled) ...")
    bad = train_on_world(settings, seed=0, degrade=plan.degrade, registry=registry, parent=good.version)
    say(f"  {bad.version}: held-out F1 {bad.metrics.get('f1'):.3f}")
    say("training a retrain of the good version (another seed) ...")
    # Another seed for its sessions, on the storefront's world (a seed alone would also pick another world).
    world = World.generate(DEFAULT_WORLD_SEED)
    retrain = train_on_world(settings, seed=1, world=world, registry=registry, parent=good.version)
    say(f"  {retrain.version}: held-out F1 {retrain.metrics.get('f1'):.3f}")
    timeline.add(
        f"trained {good.version} (F1 {good.metrics.get('f1'):.3f}), {bad.version} (degraded) and "
        f"{retrain.version} (a retrain, F1 {retrain.metrics.get('f1'):.3f})"
    )

    watcher = Watcher(settings)
    watcher.start()
    if on_watch is not None:
        on_watch(watcher)
    config = out / "demo.toml"
    data_dir = tempfile.mkdtemp(prefix="modelwatch-demo-monitor-")
    config.write_text(DEMO_CONFIG.format(data_dir=data_dir, canary_share=plan.canary_share))
    instances = [f"demo-{i + 1}" for i in range(plan.replicas)]
    env = {
        "MODELWATCH_BOOTSTRAP": settings.bootstrap_servers,
        "MODELWATCH_TOPIC_PREFIX": settings.topic_prefix,
    }
    env["MODELWATCH_REGISTRY"] = settings.registry
    processes: list[ManagedProcess] = []
    stop_sim = threading.Event()
    sim_thread: threading.Thread | None = None
    sim_stats: dict[str, int] = {}
    complete = False
    staged: StagedResult | None = None
    try:
        say("starting the monitor and the replicas ...")
        monitor = ManagedProcess("monitor", ["monitor", "--config", str(config)], out / "monitor.log", env)
        processes.append(monitor)
        for name in instances:
            processes.append(ManagedProcess(name, ["serve", "--instance", name], out / f"{name}.log", env))

        first = deployment.deploy(settings, good.version, "demo: first deploy", registry=registry)
        timeline.add(f"deploy {good.version}", first["ts"])
        acks = wait_for(
            lambda: watcher.acks(first, instances), 90, "both replicas to activate the good version"
        )
        timeline.add(f"  acknowledged by {_acks(acks)}")
        monitor.wait_for_log(READY, 120)
        timeline.add("monitor ready")

        def play() -> None:
            stats = simulate(
                settings,
                SimulationPlan(rate=plan.rate, duration_s=3600, malformed=plan.malformed),
                stop=stop_sim,
            )
            sim_stats.update(requests=stats.requests, outcomes=stats.outcomes, malformed=stats.malformed)

        sim_thread = threading.Thread(target=play, name="storefront", daemon=True)
        sim_thread.start()
        timeline.add(f"storefront playing {plan.rate:.0f} requests/s")
        say(f"storefront playing; the good version serves for {plan.warmup_s:.0f} s ...")
        wait_for(
            lambda: _metric(watcher.of("metrics", model_version=good.version)) is not None,
            90,
            "the first metrics of the good version",
        )
        deadline = time.monotonic() + plan.warmup_s
        wait_for(lambda: time.monotonic() > deadline, plan.warmup_s + 1, "the warm-up")
        before = _metric(watcher.of("metrics", model_version=good.version))
        timeline.add(f"  {good.version} rolling F1 {before:.3f} (count window)")

        say(f"deploying the degraded version {bad.version} ...")
        second = deployment.deploy(
            settings, bad.version, "demo: deploy the degraded version", registry=registry
        )
        timeline.add(f"deploy {bad.version} (degraded)", second["ts"])
        acks = wait_for(
            lambda: watcher.acks(second, instances), 30, "both replicas to activate the bad version"
        )
        timeline.add(f"  acknowledged by {_acks(acks)}")

        alert = wait_for(
            lambda: next(
                iter(watcher.of("alerts", model_version=bad.version, state="firing", rule="f1-low")), None
            ),
            plan.story_timeout_s,
            "the f1-low alert on the degraded version",
        )
        timeline.add(
            f"alert {alert['rule']} firing: F1 {alert['value']:.3f} < {alert['threshold']:.3f}", alert["ts"]
        )
        say(f"alert fired: {alert['rule']} on {bad.version}")
        rollback = wait_for(
            lambda: next(
                iter(watcher.of("model-commands", action="rollback", alert_id=alert["alert_id"])), None
            ),
            30,
            "the monitor's rollback command",
        )
        timeline.add(f"rollback to {rollback['model_version']} ordered by the monitor", rollback["ts"])
        acks = wait_for(lambda: watcher.acks(rollback, instances), 30, "both replicas to roll back")
        timeline.add(f"  acknowledged by {_acks(acks)}")
        say("rolled back; waiting for the metrics to recover ...")
        rolled_back_at = max(acks.values()) + rollback["ts"]
        recovered = wait_for(
            lambda: [
                e
                for e in watcher.of("metrics", model_version=good.version)
                if e["ts"] > rolled_back_at + 3000 and e["window"]["kind"] == "count"
            ],
            plan.story_timeout_s,
            "metrics of the good version after the rollback",
        )[-1]
        timeline.add(f"recovered: {good.version} rolling F1 {recovered['f1']:.3f}", recovered["ts"])
        staged = staged_story(
            settings,
            watcher,
            timeline,
            instances,
            registry,
            {"retrain": retrain.version, "degraded": bad.version},
            plan.canary_share,
            plan.decision_timeout_s,
            say,
        )
        complete = True
        if plan.keep_running:
            say("--keep-running: everything stays up; Ctrl-C stops it")
            threading.Event().wait()
    finally:
        stop_sim.set()
        if sim_thread is not None:
            sim_thread.join(30)
        for p in reversed(processes):
            p.stop(30)
        watcher.stop()
        if cluster is not None and started_broker and not plan.keep_running:
            cluster.stop()
            timeline.add("stopped the replicas, the monitor and the broker")
        else:
            timeline.add("stopped the replicas and the monitor")

    from services.ops.report import draw_report

    files = draw_report(
        watcher.of("metrics"),
        watcher.of("alerts"),
        watcher.of("model-commands"),
        watcher.of("model-events"),
        out,
        title="modelwatch demo: deploy, alert, rollback, recovery; shadow, canary, promote, abort",
        stem="demo-report",
        experiments=watcher.of("experiments"),
    )
    return DemoResult(
        timeline=timeline,
        good=good.version,
        bad=bad.version,
        retrain=retrain.version,
        predictions=dict(watcher.predictions),
        dead_letters=watcher.dead_letters,
        requests=sim_stats.get("requests", 0),
        report_png=files.png,
        report_html=files.html,
        story_complete=complete,
        staged=staged,
    )


def _acks(delays: dict[str, int]) -> str:
    return ", ".join(f"{instance} in {ms} ms" for instance, ms in sorted(delays.items()))

"""One benchmark run: every figure measured beside its reference, in one go, on one broker.

The order matters on a shared machine: each figure and its reference are taken back to back on the same
data, so whatever else the machine is doing weighs on both alike and their ratio holds.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from schemas.errors import BenchmarkError
from services.bench import workload
from services.bench.cpu import cpu_pressure_us, machine
from services.bench.experiments import QUICK_EXPERIMENTS, ExperimentPlan, ExperimentsReport, run_experiments
from services.bench.latency import Latency, measure_latency
from services.bench.live import run_live
from services.bench.micro import codec_costs, scoring_costs
from services.bench.monitor import faust_monitor, plain_monitor, prepare
from services.bench.rig import Rig, caught_up, delete_group, end_offsets, stamp_on_append
from services.bench.stats import REQUIRED_KEYS, derived, judge_targets
from services.bench.steady import SteadyRun, cost_figures, run_experiment_costs, run_steady
from services.bench.sweep import sweep_batch_sizes
from services.bench.throughput import Throughput, best_of, committed_through, measure, outputs_reached
from services.config import Settings
from services.deployment import orders as deployment
from services.model.training import DEFAULT_SESSIONS
from services.registry import Registry
from services.sandbox.versions import train_on_world

Step = Callable[[str], None]

#: The request rate the latency target is judged at.
TARGET_RATE = 1000.0
#: The demo's storefront rate (``modelwatch demo --rate``).
DEMO_RATE = 150.0
#: The live pace a replica's share of a core is judged at.
STEADY_RATE = 300.0


@dataclass(frozen=True)
class BenchPlan:
    """How much of everything one run measures."""

    mode: str
    requests: int  # recorded requests, served by the pass-through and both modes of the service
    naive_requests: int  # the slice the naive service serves
    latency_rates: tuple[float, ...]
    latency_s: float
    monitor_labelled: int
    micro_s: float  # per microbenchmark
    faust: bool = True  # the Faust worker (the plain consumer always runs)
    live: bool = True  # lag behind the simulator, and the control loop
    live_warmup_s: float = 15.0
    #: One replica at each steady offered rate (its share of a core, its memory), for ``steady_s`` each.
    steady_rates: tuple[float, ...] = (STEADY_RATE,)
    steady_s: float = 30.0
    train_sessions: int = DEFAULT_SESSIONS
    #: Rounds of the four throughput contenders; the best run of each is reported.
    rounds: int = 1
    #: serve.batch_size values to measure throughput and p99 at 1,000/s for (none: skipped).
    batch_sizes: tuple[int, ...] = ()
    #: The steady run at the first steady rate again with a canary running, then with a shadow.
    experiment_costs: bool = True
    #: The experiments' guarantee, simulated without Kafka (none: skipped); the full table is
    #: ``modelwatch bench-experiments``.
    experiments: ExperimentPlan | None = None

    def steps(self) -> list[str]:
        """The steps :func:`run_bench` reports, in order."""
        out = ["broker and topics", "training", "recording requests", "codec and scoring"]
        out += [f"throughput, round {r} of {self.rounds}" for r in range(1, self.rounds + 1)]
        out += [f"latency at {rate:,.0f}/s" for rate in self.latency_rates]
        out += ["batch sizes"] if self.batch_sizes else []
        out += [f"steady: one replica at {rate:,.0f}/s" for rate in self.steady_rates]
        out += ["serving cost: canary", "serving cost: shadow"] if self.experiment_costs else []
        out += ["monitor traffic", *(["monitor (Faust)"] if self.faust else []), "monitor (plain consumer)"]
        out += ["live: lag and control loop"] if self.live else []
        out += ["experiments (simulated)"] if self.experiments else []
        return [*out, "cleanup"]


QUICK = BenchPlan(
    mode="quick",
    requests=50_000,
    naive_requests=5_000,
    rounds=2,
    latency_rates=(TARGET_RATE,),
    latency_s=10.0,
    monitor_labelled=20_000,
    micro_s=0.5,
    live_warmup_s=15.0,
    experiments=QUICK_EXPERIMENTS,
)
FULL = BenchPlan(
    mode="full",
    requests=200_000,
    naive_requests=5_000,
    rounds=3,
    latency_rates=(TARGET_RATE, 5000.0),
    latency_s=30.0,
    monitor_labelled=100_000,
    micro_s=2.0,
    live_warmup_s=40.0,
    batch_sizes=(50, 200, 500, 1000, 2000),
    steady_rates=(STEADY_RATE, TARGET_RATE),
    steady_s=120.0,
    experiments=QUICK_EXPERIMENTS,
)


@dataclass
class BenchResult:
    plan: BenchPlan
    summary: dict[str, Any] = field(default_factory=dict)
    experiments: ExperimentsReport | None = None

    def as_json(self) -> dict[str, Any]:
        return self.summary


def _silent(_step: str) -> None:
    return None


def run_bench(
    base: Settings, plan: BenchPlan, step: Step = _silent, say: Callable[[str], None] = _silent
) -> BenchResult:
    """Run every measurement of ``plan`` and return the figures (see :func:`summarize`)."""
    rig = Rig(base, say=say)
    details: dict[str, Any] = {"topic_prefix": rig.prefix}
    started, pressure = time.monotonic(), cpu_pressure_us()
    failed = True
    try:
        step("broker and topics")
        rig.start_broker()
        serve = rig.settings("serve")
        passthrough_sink, naive_sink = serve.topic("bench-passthrough"), serve.topic("bench-naive")
        rig.create(serve, [passthrough_sink, naive_sink])
        stamp_on_append(serve, [serve.topic("predictions")])

        step("training")
        registry = Registry(rig.registry)
        good = train_on_world(serve, seed=0, sessions=plan.train_sessions, registry=registry)
        bad = (
            train_on_world(serve, seed=0, degrade=0.9, sessions=plan.train_sessions, registry=registry)
            if plan.live
            else None
        )
        deployment.deploy(serve, good.version, "bench", registry=registry)

        step("recording requests")
        world = workload.world()
        requests_topic = serve.topic("requests")
        chunk = 20_000
        for start in range(0, plan.requests, chunk):
            batch = workload.requests(
                world, min(chunk, plan.requests - start), seed=1 + start, tag=f"r{start}"
            )
            workload.produce_all(serve, requests_topic, workload.encode_requests(batch))
        request_ends = end_offsets(serve, requests_topic)

        step("codec and scoring")
        model = registry.load(good.version)
        details["codec"] = codec_costs(world, plan.micro_s)
        details["scoring"] = scoring_costs(model, world, plan.micro_s)
        del model

        timeout = 120 + plan.requests / 500
        contenders = "services.bench.contenders"
        predictions = serve.topic("predictions")
        group = f"{serve.topic_prefix}serve"
        runs: dict[str, list[Throughput]] = {
            "passthrough": [],
            "naive": [],
            "service": [],
            "exactly_once": [],
        }
        # Rounds alternate the contenders, so a burst of load elsewhere on the machine hits one run of each
        # rather than every run of one; the best run of each is kept (load only ever slows a run).
        for r in range(1, plan.rounds + 1):
            step(f"throughput, round {r} of {plan.rounds}")
            passthrough_args = ["passthrough", "--source", requests_topic, "--sink", passthrough_sink]
            passthrough_args += ["--group", f"{serve.topic_prefix}bench-passthrough-{r}"]
            runs["passthrough"].append(
                measure(
                    "pass-through",
                    serve,
                    partial(rig.module, "passthrough", contenders, passthrough_args, serve),
                    passthrough_sink,
                    outputs_reached(passthrough_sink, plan.requests),
                    timeout,
                )
            )
            naive_args = [
                "naive",
                "--source",
                requests_topic,
                "--sink",
                naive_sink,
                "--version",
                good.version,
            ]
            naive_args += [
                "--group",
                f"{serve.topic_prefix}bench-naive-{r}",
                "--limit",
                str(plan.naive_requests),
            ]
            runs["naive"].append(
                measure(
                    "naive",
                    serve,
                    partial(rig.module, "naive", contenders, naive_args, serve),
                    naive_sink,
                    outputs_reached(naive_sink, plan.naive_requests),
                    timeout,
                )
            )
            delete_group(serve, group)  # each replica starts from the first request
            runs["service"].append(
                measure(
                    "service",
                    serve,
                    partial(rig.serve, serve, f"bench-alo-{r}"),
                    predictions,
                    outputs_reached(predictions, plan.requests),
                    timeout,
                )
            )
            delete_group(serve, group)
            runs["exactly_once"].append(
                measure(
                    "service --exactly-once",
                    serve,
                    partial(rig.serve, serve, f"bench-eos-{r}", "--exactly-once"),
                    predictions,
                    committed_through(serve, group, requests_topic, request_ends),
                    timeout,
                )
            )
        for key, found in runs.items():
            details[key] = best_of(found)
        details["rounds"] = {key: [run.as_dict() for run in found] for key, found in runs.items()}

        # A fresh at-least-once replica resumes where the exactly-once one committed: nothing is queued.
        latencies: list[Latency] = []
        replica = rig.serve(serve, "bench-latency")
        try:
            replica.wait_for_log("event=assigned", 120)
            caught_up(serve, group, requests_topic, timeout)
            for i, rate in enumerate(plan.latency_rates):
                step(f"latency at {rate:,.0f}/s")
                latencies.append(measure_latency(serve, world, rate, plan.latency_s, seed=100 + i))
        finally:
            replica.stop(30)
        details["latency"] = latencies
        if plan.batch_sizes:
            step("batch sizes")
            details["batch_sizes"] = sweep_batch_sizes(
                rig,
                serve,
                world,
                plan.batch_sizes,
                plan.requests,
                TARGET_RATE,
                min(plan.latency_s, 10.0),
                timeout,
            )

        steady: list[SteadyRun] = []
        for rate in plan.steady_rates:
            step(f"steady: one replica at {rate:,.0f}/s")
            steady.append(run_steady(rig, good.version, rate, plan.steady_s))
        if plan.experiment_costs:
            # Any other version will do as the candidate: the cost is scoring, not what it recommends.
            other = bad or train_on_world(serve, seed=1, sessions=plan.train_sessions, registry=registry)
            rate = plan.steady_rates[0]
            steady += run_experiment_costs(rig, good.version, other.version, rate, plan.steady_s, step)
        details["steady"] = steady

        step("monitor traffic")
        monitor_settings = prepare(rig, world, plan.monitor_labelled)
        emit_every_n = max(100, plan.monitor_labelled // 20)
        if plan.faust:
            step("monitor (Faust)")
            details["monitor"] = faust_monitor(
                rig,
                monitor_settings,
                plan.monitor_labelled,
                emit_every_n,
                timeout=180 + plan.monitor_labelled / 200,
            )
        step("monitor (plain consumer)")
        gc.collect()
        details["monitor_raw"] = plain_monitor(monitor_settings, plan.monitor_labelled, emit_every_n)
        if plan.live and bad is not None:
            step("live: lag and control loop")
            details["live"] = run_live(rig, good.version, bad.version, DEMO_RATE, plan.live_warmup_s)
        if plan.experiments is not None:
            step("experiments (simulated)")
            details["experiments"] = run_experiments(plan.experiments, say)
        failed = False
    except (TimeoutError, RuntimeError, BenchmarkError) as exc:
        # A child that died or stalled: its log says why, so the run's logs are kept.
        raise BenchmarkError(f"{exc} (logs kept in {rig.workdir / 'logs'})") from exc
    finally:
        step("cleanup")
        rig.close(keep_files=failed)
    pressure_end = cpu_pressure_us()
    if pressure is not None and pressure_end is not None:
        # Share of the run's wall time in which some task on this machine waited for a CPU.
        details["cpu_pressure_pct"] = (pressure_end - pressure) / 1e4 / (time.monotonic() - started)
    return BenchResult(plan, summarize(plan, details, base), details.get("experiments"))


def _rate(details: dict[str, Any], key: str) -> float | None:
    run: Throughput | None = details.get(key)
    return None if run is None else run.per_s


def summarize(plan: BenchPlan, details: dict[str, Any], base: Settings) -> dict[str, Any]:
    """The flat figures (the JSON's top level), with the targets judged, and every detail under
    ``details``."""
    summary: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "mode": plan.mode,
        "command": f"modelwatch bench --{plan.mode}",
        "machine": {**machine(), "cpu_pressure_pct": details.get("cpu_pressure_pct")},
        "topic_prefix": details.get("topic_prefix"),
        "service_runs_as": "modelwatch serve, one replica in a subprocess (batch_size "
        f"{base.serve.batch_size}, poll_timeout_s {base.serve.poll_timeout_s})",
        "requests": plan.requests,
        "passthrough_per_s": _rate(details, "passthrough"),
        "service_per_s": _rate(details, "service"),
        "naive_per_s": _rate(details, "naive"),
        "naive_count": details["naive"].outputs if "naive" in details else None,
        "exactly_once_per_s": _rate(details, "exactly_once"),
    }
    for key in ("passthrough", "service", "naive", "exactly_once"):
        run = details.get(key)
        summary[f"{key}_cpu_s_per_1000"] = None if run is None else run.cpu_per_1000
        summary[f"{key}_answered"] = None if run is None else run.unique
    latencies: list[Latency] = details.get("latency", [])
    at_target = next((lat for lat in latencies if lat.rate == TARGET_RATE), None)
    summary["p50_ms"] = at_target.p50_ms if at_target else None
    summary["p99_ms"] = at_target.p99_ms if at_target else None
    summary["max_ms"] = at_target.max_ms if at_target else None
    summary["latency"] = [lat.as_dict() for lat in latencies]
    monitor, raw = details.get("monitor"), details.get("monitor_raw")
    summary["monitor_labelled"] = plan.monitor_labelled
    summary["monitor_per_s"] = monitor.per_s if monitor else None
    summary["monitor_raw_per_s"] = raw.per_s if raw else None
    summary["monitor_cpu_s_per_1000"] = monitor.cpu_per_1000 if monitor else None
    summary["monitor_raw_cpu_s_per_1000"] = raw.cpu_per_1000 if raw else None
    live = details.get("live")
    summary["ack_ms"] = live.ack_ms if live else None
    if live is not None:
        summary.update(
            {
                "monitor_lag_p50_messages": live.lag_p50_messages,
                "monitor_lag_max_messages": live.lag_max_messages,
                "monitor_lag_p50_s": live.lag_p50_s,
                "monitor_lag_max_s": live.lag_max_s,
                "alert_after_labelled": live.alert_after_labelled,
                "deploy_to_alert_s": live.deploy_to_alert_s,
                "alert_to_command_ms": live.alert_to_command_ms,
            }
        )
    steady: list[SteadyRun] = details.get("steady", [])
    at_steady = next((run for run in steady if run.rate == STEADY_RATE and run.mode == "plain"), None)
    summary["replica_cpu_share_300"] = at_steady.cpu_share if at_steady else None
    summary["replica_rss_slope_mb_per_min_300"] = at_steady.rss_slope_mb_per_min if at_steady else None
    summary["steady"] = [run.as_dict() for run in steady]
    summary.update(cost_figures(steady))
    summary.update(derived(summary))
    summary["batch_sizes"] = [p.as_dict() for p in details.get("batch_sizes", [])]
    summary["rounds"] = plan.rounds
    summary["throughput_rounds"] = details.get("rounds", {})
    summary["codec_us"] = details.get("codec", {})
    summary["scoring_us"] = details.get("scoring", {})
    experiments: ExperimentsReport | None = details.get("experiments")
    summary["experiments"] = experiments.as_json() if experiments else None
    for key in REQUIRED_KEYS:
        summary.setdefault(key, None)
    summary["targets"] = judge_targets(summary)
    summary["details"] = {
        k: (v.as_dict() if hasattr(v, "as_dict") else [x.as_dict() for x in v] if isinstance(v, list) else v)
        for k, v in details.items()
        if k not in ("topic_prefix", "cpu_pressure_pct", "rounds", "experiments")
    }
    return summary

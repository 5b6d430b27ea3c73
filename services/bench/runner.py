"""One benchmark run: every figure measured beside its reference, in one go, on one broker.

The order matters on a shared machine: each figure and its reference are taken back to back on the same
data, so whatever else the machine is doing weighs on both alike and their ratio holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from schemas.errors import BenchmarkError
from services.bench import workload
from services.bench.cpu import cpu_pressure_us
from services.bench.experiments import ExperimentsReport, run_experiments
from services.bench.latency import Latency, measure_latency
from services.bench.live import run_live
from services.bench.micro import codec_costs, scoring_costs
from services.bench.plans import DEFAULT, DEMO_RATE, FULL, QUICK, TARGET_RATE, BenchPlan
from services.bench.rig import Rig, caught_up, delete_group, end_offsets, stamp_on_append
from services.bench.steady import SteadyRun, run_experiment_costs, run_steady
from services.bench.summary import summarize
from services.bench.sweep import sweep_batch_sizes
from services.bench.throughput import Throughput, best_of, committed_through, measure, outputs_reached
from services.bench.volume import monitor_curve, service_curve
from services.config import Settings
from services.deployment import orders as deployment
from services.registry import Registry
from services.sandbox.versions import train_on_world

Step = Callable[[str], None]

__all__ = ["DEFAULT", "FULL", "QUICK", "BenchPlan", "BenchResult", "run_bench", "summarize"]


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
    failed_steps: dict[str, str] = {}
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

        if plan.service_volumes:
            details["service_curve"] = service_curve(
                rig, world, good.version, plan.service_volumes, step, say
            )

        steady: list[SteadyRun] = []
        watched = "one replica and the monitor" if plan.steady_monitor else "one replica"
        for rate in plan.steady_rates:
            step(f"steady: {watched} at {rate:,.0f}/s")
            steady.append(
                run_steady(
                    rig,
                    good.version,
                    rate,
                    plan.steady_s,
                    warmup_s=plan.steady_warmup_s,
                    idle_s=plan.steady_idle_s,
                    monitor=plan.steady_monitor,
                )
            )
        if plan.experiment_costs:
            # Any other version will do as the candidate: the cost is scoring, not what it recommends.
            other = bad or train_on_world(serve, seed=1, sessions=plan.train_sessions, registry=registry)
            rate, seconds = plan.steady_rates[0], plan.experiment_s or plan.steady_s
            steady += run_experiment_costs(
                rig,
                good.version,
                other.version,
                rate,
                seconds,
                step,
                plan.steady_warmup_s,
                plan.steady_idle_s,
            )
        details["steady"] = steady

        curve = monitor_curve(rig, world, plan.monitor_points, plan.faust, step, say)
        details["monitor_curve"] = curve
        at_plan = next(point for point in curve if point.labelled == plan.monitor_labelled)
        if at_plan.faust is not None:
            details["monitor"] = at_plan.faust
        details["monitor_raw"] = at_plan.plain
        if plan.live and bad is not None:
            step("live: lag and control loop")
            try:
                details["live"] = run_live(rig, good.version, bad.version, DEMO_RATE, plan.live_warmup_s)
            except (TimeoutError, RuntimeError, BenchmarkError) as exc:
                # On a saturated machine the control loop can miss its deadlines: said, and the rest of
                # the run's figures kept (its logs too).
                failed_steps["live: lag and control loop"] = str(exc)
                say(f"live: lag and control loop failed: {exc}")
        if plan.experiments is not None:
            step("experiments (simulated)")
            details["experiments"] = run_experiments(plan.experiments, say)
        failed = bool(failed_steps)
        details["failed_steps"] = failed_steps
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

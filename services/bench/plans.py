"""How much one ``modelwatch bench`` run measures: ``--quick``, the default, ``--full``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from services.bench.experiments import QUICK_EXPERIMENTS, ExperimentPlan
from services.model.training import DEFAULT_SESSIONS

#: The request rate the latency target is judged at, and the monitor's lag.
TARGET_RATE = 1000.0
#: The demo's storefront rate (``modelwatch demo --rate``).
DEMO_RATE = 150.0
#: The live pace a replica's and the monitor's share of a core are judged at.
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
    #: One replica at each steady offered rate (its share of a core, its memory), for ``steady_s`` each,
    #: with the Faust monitor beside it when ``steady_monitor`` (its share, memory and lag too).
    steady_rates: tuple[float, ...] = (STEADY_RATE, TARGET_RATE)
    steady_s: float = 120.0
    steady_monitor: bool = True
    #: Before each steady window: the processes idle (their idle share), then the traffic's warm-up.
    steady_idle_s: float = 5.0
    steady_warmup_s: float = 5.0
    train_sessions: int = DEFAULT_SESSIONS
    #: Rounds of the four throughput contenders; the best run of each is reported.
    rounds: int = 1
    #: serve.batch_size values to measure throughput and p99 at 1,000/s for (none: skipped).
    batch_sizes: tuple[int, ...] = ()
    #: The steady run at the first steady rate again with a canary running, then with a shadow, for
    #: ``experiment_s`` each (None: ``steady_s``).
    experiment_costs: bool = True
    experiment_s: float | None = None
    #: The experiments' guarantee, simulated without Kafka (none: skipped); the full table is
    #: ``modelwatch bench-experiments``.
    experiments: ExperimentPlan | None = None
    #: The volume curve: the monitor at each of these labelled volumes (none: ``monitor_labelled`` only),
    #: the service and the pass-through at each of ``service_volumes`` requests (none: skipped).
    monitor_volumes: tuple[int, ...] = ()
    service_volumes: tuple[int, ...] = ()

    @property
    def monitor_points(self) -> tuple[int, ...]:
        """The labelled volumes the monitor is measured at; ``monitor_labelled`` is among them."""
        return tuple(sorted({*self.monitor_volumes, self.monitor_labelled}))

    def steps(self) -> list[str]:
        """The steps :func:`services.bench.runner.run_bench` reports, in order."""
        out = ["broker and topics", "training", "recording requests", "codec and scoring"]
        out += [f"throughput, round {r} of {self.rounds}" for r in range(1, self.rounds + 1)]
        out += [f"latency at {rate:,.0f}/s" for rate in self.latency_rates]
        out += ["batch sizes"] if self.batch_sizes else []
        out += [f"service at {n:,} requests" for n in self.service_volumes]
        watched = "one replica and the monitor" if self.steady_monitor else "one replica"
        out += [f"steady: {watched} at {rate:,.0f}/s" for rate in self.steady_rates]
        out += ["serving cost: canary", "serving cost: shadow"] if self.experiment_costs else []
        out += [f"monitor at {n:,} labelled" for n in self.monitor_points]
        out += ["live: lag and control loop"] if self.live else []
        out += ["experiments (simulated)"] if self.experiments else []
        return [*out, "cleanup"]


#: ``modelwatch bench``: the live part as the issue asks (two minutes at each rate).
DEFAULT = BenchPlan(
    mode="default",
    requests=50_000,
    naive_requests=5_000,
    rounds=2,
    latency_rates=(TARGET_RATE,),
    latency_s=10.0,
    monitor_labelled=20_000,
    micro_s=0.5,
    live_warmup_s=15.0,
    experiment_s=30.0,
    experiments=QUICK_EXPERIMENTS,
)
#: ``--quick``: the same with 30 s at each steady rate (and its experiments' costs).
QUICK = replace(DEFAULT, mode="quick", steady_s=30.0)
#: ``--full``: more of everything, and the volume curve.
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
    steady_s=120.0,
    experiments=QUICK_EXPERIMENTS,
    monitor_volumes=(20_000, 100_000, 1_000_000),
    service_volumes=(20_000, 100_000, 1_000_000),
)

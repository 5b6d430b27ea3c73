"""``modelwatch bench experiments``: the experiments' error guarantee, measured on the world's traffic.

No Kafka. The world (:mod:`services.sandbox.world`) makes a training log and a pool of fresh requests; three
versions are trained on the log as ``modelwatch train`` trains them: the incumbent, a retrain (another
seed) and a ``--degrade 0.5`` version. Each version answers every pool request once, and its per-request F1
(:func:`streams.comparison.request_f1`) is kept: the expensive part, done once. Then thousands of
experiments resample the pool (requests drawn with replacement, as the storefront's sessions are drawn)
and feed the monitor's real :class:`~streams.comparison.Comparison` a batch of labelled requests at a time,
with event time advancing at ``rate_per_s``, until it decides or ``max_duration_s`` passes.

The candidates:

``A/A``       no true difference. Canary: the candidate arm *is* the incumbent (the same model on other
              users). Shadow: the same model would give identical values (zero differences, never
              aborted, see the unit tests), so each request's pair of answers comes from the incumbent and
              the retrain in a random order: the paired differences are real ones with mean exactly 0.
              Run at ``margin = 0``, the boundary of the null where the guarantee is tight: a wrong abort
              is the interval lying wholly below 0.
``retrain``   the retrain against the incumbent at the configured margin: within the margin, so
              aborting it is wrong and promoting it right.
``degraded``  the ``--degrade 0.5`` version at the configured margin: aborting it is right.

Canary arms are split by user, as the serving split is (a salted hash of ``user_id``: a user stays on one
arm), a fresh split per experiment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest

from schemas.metrics import request_counts
from services.config import ExperimentSettings, MonitorSettings
from services.model.training import train
from services.sandbox.world import Sessions, World
from streams.comparison import Comparison, Decision, Mode, request_f1
from streams.pre_periods import PrePeriods, add_canary

Say = Callable[[str], None]


def _quiet(_text: str) -> None:
    return None


@dataclass(frozen=True)
class ExperimentPlan:
    """How big the simulation is."""

    experiments: int = 1000
    #: Sessions the versions are trained on, and requests in the pool experiments resample.
    training_sessions: int = 50_000
    #: 100,000: about 50 per user, so that a user's resampled requests vary as fresh ones would (with
    #: 20,000, each user's ~10 requests, redrawn, froze their noise into the user's level).
    pool_requests: int = 100_000
    #: Labelled requests per monitor batch (both arms together), and how fast they come in event time:
    #: 600 s at 100/s, ten minutes of a storefront's labelled traffic, 6,000 on a 10% canary.
    batch: int = 200
    rate_per_s: float = 100.0
    max_duration_s: float = 600.0
    canary_traffic: float = 0.1
    #: The incumbent's labelled requests before the experiment (five minutes at the same rate), whose
    #: per-user sums are a canary's covariate (the regression adjustment); 0: none, the plain delta method.
    pre_period_requests: int = 30_000
    settings: ExperimentSettings = field(default_factory=ExperimentSettings)
    seed: int = 0


#: The small version ``modelwatch bench`` runs (and ``bench-experiments --quick``): 100 experiments per row,
#: versions trained on less, batches of 1,000 (60 looks in the 600 s), in a minute or two.
QUICK_EXPERIMENTS = ExperimentPlan(
    experiments=100, training_sessions=20_000, pool_requests=50_000, batch=1000, max_duration_s=600.0
)


@dataclass(frozen=True)
class Pool:
    """Per-request F1 of each version on the same pool requests, and each request's user."""

    user: np.ndarray
    values: dict[str, np.ndarray]
    n_users: int
    #: The incumbent's labelled requests before the experiment (which starts at event time 0), kept as
    #: the monitor keeps them: each canary reads its users' pre-periods from here as the monitor does.
    pre_periods: PrePeriods | None = None

    @property
    def means(self) -> dict[str, float]:
        return {name: float(v.mean()) for name, v in self.values.items()}


def _request_f1(model: Any, sessions: Sessions, bought: list[list[str]]) -> np.ndarray:
    scores = model.score_batch(sessions.user_ids, sessions.candidates)
    picks = model.select(scores, [5] * len(scores))
    counts = [
        request_counts(cands, [cands[i] for i in pick.tolist()], got)
        for cands, pick, got in zip(sessions.candidates, picks, bought, strict=True)
    ]
    tp, fp, fn = (np.array([getattr(c, k) for c in counts]) for k in ("tp", "fp", "fn"))
    return request_f1(tp, fp, fn)


def build_pool(plan: ExperimentPlan, say: Say = _quiet) -> Pool:
    """Train the three versions on the world, score the pool once, and the incumbent's pre-period."""
    world = World.generate(plan.seed)
    log = world.interactions(plan.training_sessions, plan.seed)
    versions = {"incumbent": (plan.seed, 0.0), "retrain": (plan.seed + 1, 0.0), "degraded": (plan.seed, 0.5)}
    sessions = world.sessions(plan.pool_requests, plan.seed + 1000)
    bought = world.purchases(sessions, plan.seed + 1000)
    values: dict[str, np.ndarray] = {}
    pre_periods = None
    for name, (seed, degrade) in versions.items():
        say(f"training the {name} version")
        model = train(log, seed=seed, degrade=degrade).model
        values[name] = _request_f1(model, sessions, bought)
        if name == "incumbent" and plan.pre_period_requests:
            # Other sessions of the same users, before the experiment, served by the incumbent.
            before = world.sessions(plan.pre_period_requests, plan.seed + 2000)
            f1 = _request_f1(model, before, world.purchases(before, plan.seed + 2000))
            assert before.user_index is not None
            pre_periods = pre_periods_of(plan, before.user_index, f1)
    assert sessions.user_index is not None
    return Pool(np.asarray(sessions.user_index), values, world.n_users, pre_periods)


def pre_periods_of(plan: ExperimentPlan, users: np.ndarray, f1: np.ndarray) -> PrePeriods:
    """The incumbent's labelled requests before the experiment (at ``rate_per_s``, ending a label window
    before event time 0, where the experiments start: the monitor's pre-periods end there) fed to the
    monitor's pre-period store batch by batch, as the watch agent feeds it (``[experiments]
    pre_period_s`` and the default label window decide what it keeps)."""
    s = plan.settings
    lag_ms = int(MonitorSettings().label_window_s * 1000)
    store = PrePeriods(s.pre_period_s, s.pre_period_users, lag_ms=lag_ms)
    ts = -lag_ms - np.arange(len(f1), 0, -1) * 1000 / plan.rate_per_s  # one request every 1/rate s
    for offset, at in enumerate(range(0, len(f1), plan.batch)):
        rows = slice(at, at + plan.batch)
        user_ids = [str(u) for u in users[rows].tolist()]
        store.add("incumbent", user_ids, ts[rows].astype(np.int64).tolist(), f1[rows], 0, offset)
    return store


@dataclass(frozen=True)
class Scenario:
    name: str
    mode: Mode
    candidate: str
    #: Shadow A/A: each pair's order is a coin flip between the incumbent and the retrain.
    exchangeable: bool = False
    margin: float | None = None  # None: the configured margin
    #: How a canary splits: by user (as serving does: a user stays on one arm) or request by request.
    split: str = "user"
    #: Canary: adjust by the users' pre-periods (CUPED) when the pool has them.
    adjusted: bool = True


def scenarios(plan: ExperimentPlan) -> list[Scenario]:
    return [
        Scenario("A/A", Mode.SHADOW, "retrain", exchangeable=True, margin=0.0),
        Scenario("A/A", Mode.CANARY, "incumbent", margin=0.0),
        Scenario("retrain", Mode.SHADOW, "retrain"),
        Scenario("retrain", Mode.CANARY, "retrain"),
        Scenario("degraded 0.5", Mode.SHADOW, "degraded"),
        Scenario("degraded 0.5", Mode.CANARY, "degraded"),
        Scenario("degraded 0.5", Mode.CANARY, "degraded", adjusted=False),
    ]


@dataclass
class Outcome:
    decision: Decision
    #: Labelled candidate requests when it decided (or when it ran out of time).
    candidate_requests: int


def run_experiment(pool: Pool, plan: ExperimentPlan, scenario: Scenario, rng: np.random.Generator) -> Outcome:
    """One experiment, fed batch by batch to the real comparison until it decides."""
    settings = plan.settings.model_copy(
        update={"max_duration_s": plan.max_duration_s}
        | ({} if scenario.margin is None else {"margin": scenario.margin})
    )
    comparison = Comparison(scenario.mode, settings, started_ms=0)
    incumbent, candidate = pool.values["incumbent"], pool.values[scenario.candidate]
    size = len(pool.user)
    on_candidate = rng.random(pool.n_users) < plan.canary_traffic  # the per-user split of a canary
    pre_periods = pool.pre_periods if scenario.adjusted and scenario.split == "user" else None
    seen = 0
    while comparison.decision is Decision.RUNNING:
        rows = rng.integers(0, size, plan.batch)
        seen += plan.batch
        event_ms = round(seen / plan.rate_per_s * 1000)
        if scenario.mode is Mode.SHADOW:
            c, i = candidate[rows], incumbent[rows]
            if scenario.exchangeable:
                swap = rng.random(plan.batch) < 0.5
                c, i = np.where(swap, i, c), np.where(swap, c, i)
            comparison.add_paired(c, i, event_ms)
        else:
            if scenario.split == "user":
                users = pool.user[rows]
                arm = on_candidate[users]
            else:  # every request its own unit
                users = np.arange(seen - plan.batch, seen)
                arm = rng.random(plan.batch) < plan.canary_traffic
            # The monitor's path: each new user's pre-period read from the store (streams.pre_periods).
            add_canary(
                comparison,
                candidate[rows[arm]],
                users[arm].astype(str).tolist(),
                incumbent[rows[~arm]],
                users[~arm].astype(str).tolist(),
                event_ms,
                pre_periods,
                "incumbent",
            )
    return Outcome(comparison.decision, comparison.labelled[0])


@dataclass(frozen=True)
class Share:
    """A share of experiments with its 95% Wilson interval."""

    count: int
    total: int

    @property
    def value(self) -> float:
        return self.count / self.total

    @property
    def interval(self) -> tuple[float, float]:
        ci = binomtest(self.count, self.total).proportion_ci(0.95, method="wilson")
        return float(ci.low), float(ci.high)

    def as_json(self) -> dict[str, Any]:
        low, high = self.interval
        return {"count": self.count, "total": self.total, "share": self.value, "low": low, "high": high}


@dataclass(frozen=True)
class ScenarioResult:
    scenario: Scenario
    margin: float
    aborted: Share
    promoted: Share
    inconclusive: Share
    #: Median labelled candidate requests until abort (None when none was aborted).
    median_to_abort: float | None
    median_to_promote: float | None
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "mode": self.scenario.mode.value,
            "candidate": self.scenario.candidate,
            "split": self.scenario.split if self.scenario.mode is Mode.CANARY else None,
            "adjusted": self.scenario.mode is Mode.CANARY and self.scenario.adjusted,
            "margin": self.margin,
            "aborted": self.aborted.as_json(),
            "promoted": self.promoted.as_json(),
            "inconclusive": self.inconclusive.as_json(),
            "median_candidate_requests_to_abort": self.median_to_abort,
            "median_candidate_requests_to_promote": self.median_to_promote,
            "seconds": self.seconds,
        }


def run_scenario(pool: Pool, plan: ExperimentPlan, scenario: Scenario, seed: int) -> ScenarioResult:
    rng = np.random.default_rng([plan.seed, seed])
    started = time.perf_counter()
    outcomes = [run_experiment(pool, plan, scenario, rng) for _ in range(plan.experiments)]
    seconds = time.perf_counter() - started

    def share(decision: Decision) -> Share:
        return Share(sum(o.decision is decision for o in outcomes), len(outcomes))

    def median(decision: Decision) -> float | None:
        ns = [o.candidate_requests for o in outcomes if o.decision is decision]
        return float(np.median(ns)) if ns else None

    margin = plan.settings.margin if scenario.margin is None else scenario.margin
    return ScenarioResult(
        scenario,
        margin,
        share(Decision.ABORT),
        share(Decision.PROMOTE),
        share(Decision.INCONCLUSIVE),
        median(Decision.ABORT),
        median(Decision.PROMOTE),
        seconds,
    )


@dataclass(frozen=True)
class ExperimentsReport:
    plan: ExperimentPlan
    means: dict[str, float]
    results: list[ScenarioResult]

    def result(self, name: str, mode: Mode, split: str = "user", adjusted: bool = True) -> ScenarioResult:
        return next(
            r
            for r in self.results
            if r.scenario.name == name
            and r.scenario.mode is mode
            and r.scenario.split == split
            and r.scenario.adjusted == adjusted
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "plan": {k: v for k, v in vars(self.plan).items() if k != "settings"},
            "settings": self.plan.settings.model_dump(),
            "f1_per_request": self.means,
            "results": [r.as_json() for r in self.results],
        }


def run_experiments(plan: ExperimentPlan, say: Say = _quiet) -> ExperimentsReport:
    """Train, score the pool once, then run every scenario ``plan.experiments`` times."""
    pool = build_pool(plan, say)
    results = []
    for n, scenario in enumerate(scenarios(plan)):
        say(f"{plan.experiments} experiments: {scenario.name}, {scenario.mode.value}")
        results.append(run_scenario(pool, plan, scenario, seed=n))
    return ExperimentsReport(plan, pool.means, results)


def _mode(scenario: Scenario) -> str:
    if scenario.mode is Mode.SHADOW:
        return "shadow"
    return f"canary{'' if scenario.adjusted else ' unadj.'}"


def report_lines(report: ExperimentsReport) -> list[str]:
    """The report as plain lines (the CLI prints them; the README quotes them)."""
    p = report.plan
    means = ", ".join(f"{k} {v:.4f}" for k, v in report.means.items())
    lines = [
        f"{p.experiments} experiments per row; per-request F1 on the pool: {means}",
        f"alpha {p.settings.alpha:g}, tuning {p.settings.tuning:g}, burn-in {p.settings.burn_in}, "
        f"min_samples {p.settings.min_samples}; batches of {p.batch} labelled requests at {p.rate_per_s:g}/s "
        f"for at most {p.max_duration_s:g} s; canary traffic {p.canary_traffic:g}, split by user, "
        f"adjusted by {p.pre_period_requests:,} pre-period requests (unadj.: not)",
        f"{'candidate':<13} {'mode':<16} {'margin':>6}  {'aborted [95% Wilson]':<26} {'promoted':>8} "
        f"{'inconcl.':>8}  {'median n to abort':>17} {'to promote':>10} {'time':>6}",
    ]
    for r in report.results:
        low, high = r.aborted.interval
        to_abort = "-" if r.median_to_abort is None else f"{r.median_to_abort:,.0f}"
        to_promote = "-" if r.median_to_promote is None else f"{r.median_to_promote:,.0f}"
        lines.append(
            f"{r.scenario.name:<13} {_mode(r.scenario):<16} {r.margin:>6g}  "
            f"{r.aborted.value:>6.1%} [{low:.1%}, {high:.1%}]{'':<7} {r.promoted.value:>8.1%} "
            f"{r.inconclusive.value:>8.1%}  {to_abort:>17} {to_promote:>10} {r.seconds:>5.1f}s"
        )
    return lines

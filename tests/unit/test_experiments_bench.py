"""The experiments simulation's harness on a made-up pool (no training): it runs the real comparison to a
decision and reports every row. The guarantee itself is measured in tests/integration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.bench.experiments import (
    ExperimentPlan,
    ExperimentsReport,
    Pool,
    Scenario,
    pre_periods_of,
    report_lines,
    run_scenario,
    scenarios,
)
from streams.comparison import Decision, Mode

PLAN = ExperimentPlan(experiments=20, batch=400, max_duration_s=60.0)


def made_up_pool() -> Pool:
    rng = np.random.default_rng(0)
    n = 5000
    incumbent = rng.binomial(1, 0.4, n).astype(float)
    return Pool(
        user=rng.integers(0, 500, n),
        values={
            "incumbent": incumbent,
            "retrain": np.where(rng.random(n) < 0.1, 1 - incumbent, incumbent),
            "degraded": incumbent * (rng.random(n) < 0.5),  # loses half its hits
        },
        n_users=500,
    )


def test_a_much_worse_candidate_is_aborted_in_both_modes_and_reported() -> None:
    pool = made_up_pool()
    results = [run_scenario(pool, PLAN, s, seed=n) for n, s in enumerate(scenarios(PLAN))]
    degraded = [r for r in results if r.scenario.candidate == "degraded"]
    assert {r.scenario.mode for r in degraded} == set(Mode)
    for r in degraded:
        assert r.aborted.value == 1.0 and r.median_to_abort is not None
    report = ExperimentsReport(PLAN, pool.means, results)
    lines = report_lines(report)
    assert len(lines) == 3 + len(results)
    assert any(line.startswith("degraded 0.5  canary ") for line in lines)
    figures = json.loads(json.dumps(report.as_json()))
    assert figures["results"][0]["aborted"]["total"] == 20
    assert report.result("degraded 0.5", Mode.SHADOW).aborted.count == 20


def test_an_experiment_ends_at_its_event_time_deadline() -> None:
    pool = made_up_pool()
    # The same values in both arms of a shadow at a margin it can never prove: undecided until the end.
    same = Scenario("A/A", Mode.SHADOW, "incumbent", margin=0.0)
    result = run_scenario(pool, PLAN, same, seed=0)
    assert result.inconclusive.value == 1.0
    assert result.scenario.mode is Mode.SHADOW and Decision.INCONCLUSIVE.value == "inconclusive"


def test_the_simulated_pre_periods_go_through_the_monitors_store_whole() -> None:
    rng = np.random.default_rng(3)
    users, f1 = rng.integers(0, 300, 30_000), rng.random(30_000)
    store = pre_periods_of(ExperimentPlan(), users, f1)  # the monitor's store, lagged by the label window
    assert store.lag_ms == 1_800_000
    got = store.of("incumbent", 0, [str(u) for u in range(300)])
    sums, counts = np.bincount(users, weights=f1, minlength=300), np.bincount(users, minlength=300)
    assert set(got) == {str(u) for u in range(300) if counts[u]}
    for user, (total, requests) in got.items():
        assert (total, requests) == (pytest.approx(sums[int(user)]), counts[int(user)])

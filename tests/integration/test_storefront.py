"""The simulator plays the storefront through the contract: valid requests, later outcomes from the truth."""

from __future__ import annotations

from schemas import ContractError, codec
from services import kafka
from services.config import Settings
from services.sandbox.storefront import SimulationPlan, simulate


def test_requests_then_outcomes_through_the_contract(settings: Settings) -> None:
    plan = SimulationPlan(rate=400, duration_s=2.0, malformed=0.05, outcome_delay_s=(0.2, 0.6), seed=3)
    stats = simulate(settings, plan)
    assert stats.requests > 400 and stats.outcomes == stats.requests and stats.malformed > 0
    raw = kafka.read_topic(settings, settings.topic("requests"))
    requests, bad = {}, 0
    for key, value, _ in raw:
        try:
            r = codec("prediction-request").decode(value)
        except ContractError:
            bad += 1
            continue
        assert key == r["user_id"].encode()
        requests[r["request_id"]] = r
    assert (len(requests), bad) == (stats.requests, stats.malformed)
    outcomes = [
        codec("outcome").decode(v) for _, v, _ in kafka.read_topic(settings, settings.topic("outcomes"))
    ]
    assert {o["request_id"] for o in outcomes} == set(requests)
    bought = 0
    for o in outcomes:
        request = requests[o["request_id"]]
        assert set(o["purchased"]) <= set(request["items"])
        assert o["ts"] >= request["ts"] + 200
        bought += len(o["purchased"])
    # The world's base rate: a few percent of candidates sell, not none and not most.
    assert 0.02 < bought / (20 * len(outcomes)) < 0.4
    assert stats.purchases == bought

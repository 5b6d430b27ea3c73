"""The canary split and a replica's scoring during an experiment, without a broker."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import Producer

from services.deployment.experiments import Experiment
from services.model.protocol import served
from services.model.recommender import Recommender
from services.sandbox.world import World
from services.serving.experiment import (
    ShadowScorer,
    Trial,
    bucket,
    on_candidate,
    predictions_by_version,
    score_with_experiment,
)
from services.serving.logs import EventLog
from services.serving.scoring import score
from services.serving.slot import Activation


@pytest.mark.parametrize("traffic", [0.05, 0.2, 0.5])
def test_the_candidates_share_of_10000_users_is_within_one_point_of_the_traffic(traffic: float) -> None:
    users = [f"u-{i}" for i in range(10_000)]
    share = sum(on_candidate("e-c-1234", u, traffic) for u in users) / len(users)
    assert abs(share - traffic) <= 0.01


def test_a_user_stays_on_one_arm_and_each_experiment_draws_afresh() -> None:
    assert all(bucket("e-1", "u-7") == bucket("e-1", "u-7") for _ in range(3))
    assert 0.0 <= bucket("e-1", "u-7") < 1.0
    users = [f"u-{i}" for i in range(2_000)]
    first = {u for u in users if on_candidate("e-1", u, 0.2)}
    second = {u for u in users if on_candidate("e-2", u, 0.2)}
    # Salted by the experiment: another experiment's 20% are not the same users (overlap ~ 0.2 * 0.2).
    assert abs(len(first & second) / len(users) - 0.04) < 0.02
    # A larger share of the same experiment keeps everyone already on the candidate there.
    assert first <= {u for u in users if on_candidate("e-1", u, 0.5)}


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(3, n_users=300, n_items=80)


@pytest.fixture(scope="module")
def models(world: World) -> tuple[Any, Any]:
    interactions = world.interactions(2000, seed=1)
    return served(Recommender(n_components=4).fit(interactions)), served(
        Recommender(n_components=2).fit(interactions)
    )


def requests_of(world: World, n: int) -> list[dict[str, Any]]:
    s = world.sessions(n, seed=5, candidates=10)
    return [
        {"request_id": f"r-{i}", "user_id": u, "items": c, "ts": int(t)}
        for i, (u, c, t) in enumerate(zip(s.user_ids, s.candidates, s.ts, strict=True))
    ]


def test_a_canary_scores_each_request_with_its_users_arm(world: World, models: tuple[Any, Any]) -> None:
    incumbent, candidate = models
    experiment = Experiment("e-c-9", "canary", "v2", "v1", 0.3, "c-9")
    active = Activation("v1", incumbent, {"command_id": "c-9"}, Trial(experiment, candidate))
    requests = requests_of(world, 400)
    scored, versions = score_with_experiment(active, requests, default_k=3)
    for request, version, scores in zip(requests, versions, scored.scores, strict=True):
        arm = "v2" if on_candidate("e-c-9", request["user_id"], 0.3) else "v1"
        assert version == arm
        alone = score(candidate if arm == "v2" else incumbent, [request], 3).scores[0]
        assert scores == alone  # the arm's own model made it
    counts = predictions_by_version(scored, versions)
    assert counts["v1"] + counts["v2"] == len(requests) and 0 < counts["v2"] < counts["v1"]


def test_without_a_canary_every_request_is_the_active_versions(world: World, models: tuple[Any, Any]) -> None:
    incumbent, _ = models
    requests = requests_of(world, 50)
    scored, versions = score_with_experiment(Activation("v1", incumbent, {}), requests, default_k=3)
    assert versions == ["v1"] * 50
    assert scored.scores == score(incumbent, requests, 3).scores


def scorer(depth: int = 64) -> ShadowScorer:
    # No broker: nothing is produced in these tests, so the producer never has to connect.
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})
    return ShadowScorer(producer, "rec.predictions.shadow", "r1", 3, EventLog("serve", instance="r1"), depth)


def test_the_shadow_scorer_starts_and_stops_cleanly() -> None:
    shadow = scorer()
    shadow.start()
    shadow.stop()
    assert not shadow.is_alive()


def test_a_full_shadow_queue_drops_the_batch_without_waiting(world: World, models: tuple[Any, Any]) -> None:
    shadow = scorer(depth=1)  # not started: nothing takes from the queue
    trial = Trial(Experiment("e-1", "shadow", "v2", "v1", None, "c-1"), models[1], shadow)
    active = Activation("v1", models[0], {}, trial)
    requests = requests_of(world, 20)
    for _ in range(3):
        _, versions = score_with_experiment(active, requests, default_k=3)
        assert versions == ["v1"] * 20  # the storefront's answers are the incumbent's
    assert shadow.dropped == 40  # the first batch is queued, the next two dropped

"""Shadow, canary, promote and abort obeyed by two real `serve` replicas on the real broker."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from services import kafka
from services.cli import main
from services.config import Settings
from services.deployment import commands
from services.deployment.follower import read_state
from services.model.recommender import Recommender
from services.registry import Registry
from services.sandbox.world import World
from services.serving.experiment import on_candidate
from tests.integration.serving_support import Collector, Replica, encoded, produce, requests_of, wait_for

NAMES = ("serve-a", "serve-b")


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, (argv, out, err)
    assert "acknowledged by every live replica (2)" in out or (argv[0] == "deploy" and "no live" in out), out
    return out


def answered(collector: Collector, tag: str) -> dict[str, dict[str, Any]]:
    return {p["request_id"]: p for p in collector.predictions() if p["request_id"].startswith(f"{tag}-")}


def serve_all(
    settings: Settings, collector: Collector, world: World, n: int, tag: str
) -> list[dict[str, Any]]:
    """Send ``n`` requests tagged ``tag`` and wait until every one is answered; the answers, by request."""
    requests = requests_of(world, n, seed=sum(map(ord, tag)), tag=tag)
    produce(settings, encoded(requests))
    wait_for(lambda: len(answered(collector, tag)) == n, 120, f"{n} {tag} predictions")
    got = answered(collector, tag)
    return [got[r["request_id"]] for r in requests]


def shadow_predictions(settings: Settings) -> list[dict[str, Any]]:
    return [
        orjson.loads(v) for _k, v, _ts in kafka.read_topic(settings, settings.topic("predictions.shadow"))
    ]


def test_canary_promote_shadow_and_abort_on_two_replicas(
    settings: Settings,
    collector: Collector,
    replicas: Callable[..., Replica],
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = World.generate(17, n_users=4000, n_items=120)
    interactions = world.interactions(3000, seed=1)
    registry = Registry(settings.registry)
    v1, v2, v3, v4 = (
        registry.register(Recommender(n_components=c).fit(interactions), metrics={}, data_summary={}).version
        for c in (4, 3, 2, 5)
    )
    run(capsys, ["deploy", v1])
    started = {name: replicas(name) for name in NAMES}
    wait_for(lambda: all(collector.events("activated", n) for n in NAMES), 120, "both replicas on v1")
    wait_for(lambda: set(read_state(settings).serving()) == set(NAMES), 30, "both replicas live")

    # Canary 0.2: a fifth of the users on v2, each user on one arm whichever replica answers.
    out = run(capsys, ["deploy", v2, "--canary", "0.2"])
    assert f"canary of {v2} at 0.2 published" in out
    experiment = read_state(settings).experiment
    assert experiment is not None and experiment.traffic == 0.2 and experiment.incumbent == v1
    # A replica killed mid-experiment comes back into it from the command log alone, with the same split.
    started["serve-b"].kill()
    replicas("serve-b")

    def canary_acks() -> int:
        return sum(
            e.get("command_id") == experiment.command_id for e in collector.events("activated", "serve-b")
        )

    wait_for(lambda: canary_acks() == 2, 120, "the restarted serve-b back in the canary")

    def shared() -> bool:  # both replicas hold request partitions again, all six between them
        a, b = collector.serving("serve-a"), collector.serving("serve-b")
        return bool(a) and bool(b) and sorted(a + b) == list(range(6))

    wait_for(shared, 120, "the request partitions shared by both replicas")
    canary = serve_all(settings, collector, world, 3000, "c")
    share = sum(p["model_version"] == v2 for p in canary) / len(canary)
    arms: dict[str, set[str]] = defaultdict(set)
    for p in canary:
        arms[p["user_id"]].add(p["model_version"])
        expected = v2 if on_candidate(experiment.experiment_id, p["user_id"], 0.2) else v1
        assert p["model_version"] == expected
    by_instance = Counter(p["instance"] for p in canary)
    with capsys.disabled():
        print(
            f"\ncanary 0.2: candidate share {share:.3f} of {len(canary)}; users {len(arms)}; "
            f"by replica {dict(by_instance)}"
        )
    # Every user's exact arm is checked above; this is the hash's share. Users are hashed with the
    # experiment's random id, so the share of these 3,000 requests (~1,400 users) varies by run: standard
    # deviation 0.014, outside 0.2 +- 0.05 in 1 run in 2,000 (a Monte Carlo over 2,000 ids, 2026-11-30);
    # +- 0.06 is 4.4 deviations, about 1 run in 100,000.
    assert abs(share - 0.2) <= 0.06
    assert all(len(versions) == 1 for versions in arms.values())
    assert set(by_instance) == set(NAMES)  # both replicas split, and alike
    assert not shadow_predictions(settings)  # a canary shadows nothing

    # Promote: everyone on v2.
    run(capsys, ["promote"])
    assert read_state(settings).commanded == v2
    assert {p["model_version"] for p in serve_all(settings, collector, world, 500, "p")} == {v2}

    # Shadow v3 beside v2: the storefront's topic has only v2's answers, the shadow topic v3's for the
    # same request ids.
    run(capsys, ["deploy", v3, "--shadow"])
    shadowed = serve_all(settings, collector, world, 600, "s")
    assert {p["model_version"] for p in shadowed} == {v2}
    ids = {p["request_id"] for p in shadowed}

    def shadow_ids() -> set[str]:
        return {p["request_id"] for p in shadow_predictions(settings) if p["request_id"].startswith("s-")}

    wait_for(lambda: shadow_ids() == ids, 60, "a shadow prediction for every shadowed request")
    shadows = shadow_predictions(settings)
    assert {p["model_version"] for p in shadows} == {v3}
    assert all(p["request_id"].startswith("s-") for p in shadows)

    # Abort: back to v2 alone, nothing more shadowed.
    run(capsys, ["abort", v3])
    state = read_state(settings)
    assert (state.commanded, state.experiment) == (v2, None)
    assert {p["model_version"] for p in serve_all(settings, collector, world, 300, "a")} == {v2}
    assert not any(p["request_id"].startswith("a-") for p in shadow_predictions(settings))

    # A candidate the replicas cannot load (its artifact damaged after the command was signed): each
    # replica rejects the canary, saying why, and keeps serving v2 to everyone.
    artifact = Path(settings.registry, v4, "model.joblib")
    artifact.chmod(0o644)
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"\x00")
    broken = commands.make("canary", v4, "a damaged candidate", traffic=0.5)
    commands.publish(settings, broken)
    wait_for(lambda: set(collector.acked(broken["command_id"])) == set(NAMES), 60, "both answers")
    for answer in collector.acked(broken["command_id"]).values():
        assert answer["event"] == "rejected" and f"cannot load {v4}" in answer["error"], answer
    assert {p["model_version"] for p in serve_all(settings, collector, world, 300, "b")} == {v2}

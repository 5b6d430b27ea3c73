"""A slow model version: each batch takes over a second to score. The consumer group must not thrash
(no replica evicted, no partition moved while it works), every request is still answered, latency grows,
and a deploy of a fast version still gets through between two slow batches."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from services.config import Settings
from services.model.recommender import Recommender
from services.sandbox.world import World
from tests.faults.conftest import FaultRow
from tests.faults.slow_model import SlowRecommender
from tests.faults.support import acked_by, deploy, log_events, register, repo_env, tally
from tests.integration.serving_support import Collector, encoded, produce, requests_of, wait_for

pytestmark = pytest.mark.faults

DELAY_S = 1.2  # per batch: far above the normal model's milliseconds
N = 2400
RATE = 400.0  # requests/s: twice what two slow replicas can do, so a backlog builds
#: Small batches make each poll-to-poll gap one slow call; the replica's poll settings are the defaults.
ENV = {**repo_env(), "MODELWATCH_SERVE__BATCH_SIZE": "100"}


def both_serving(collector: Collector, names: tuple[str, ...], partitions: int = 6) -> bool:
    owned = [set(collector.serving(n)) for n in names]
    return all(owned) and set().union(*owned) == set(range(partitions))


def test_a_slow_model_degrades_latency_without_loss_or_rebalances(
    settings: Settings,
    models: tuple[Recommender, Recommender],
    world: World,
    collector: Collector,
    replicas: Any,
    fault: FaultRow,
) -> None:
    """Slow model version (1.2 s per batch) under a load twice what it can serve."""
    slow = register(settings, SlowRecommender(models[0], DELAY_S))
    fast = register(settings, models[1])
    deploy(settings, slow)
    names = ("serve-a", "serve-b")
    started = [replicas(name, env=ENV) for name in names]
    wait_for(lambda: both_serving(collector, names), 60, "both replicas to share the group")

    def moves() -> dict[str, int]:
        return {
            r.instance: sum(len(log_events(r.log, e)) for e in ("assigned", "revoked", "lost"))
            for r in started
        }

    before = moves()

    requests = requests_of(world, N, seed=31, tag="s")
    t0 = int(time.time() * 1000)
    for i, r in enumerate(requests):
        r["ts"] = t0 + int(i * 1000 / RATE)  # when the paced producer sends it: latency is measured from it
    stream = threading.Thread(target=produce, args=(settings, encoded(requests), RATE))
    stream.start()
    wait_for(lambda: len(collector.answered()) >= N // 3, 60, "the slow version to answer a third")
    # The control loop while the model is slow: the fast version is loaded off the hot path and swapped in
    # between two slow batches.
    command = deploy(settings, fast, reason="the slow version is too slow")
    acked = wait_for(
        lambda: len(a := acked_by(collector.events(), command["command_id"])) == 2 and a, 60, "acks"
    )
    stream.join(60)
    wait_for(lambda: len(collector.answered()) >= N, 90, f"an answer to each of {N:,} requests")

    predictions = collector.predictions()
    answered, lost, duplicated = tally(predictions, (r["request_id"] for r in requests))
    sent_at = {r["request_id"]: r["ts"] for r in requests}
    by_version = {v: [p for p in predictions if p["model_version"] == v] for v in (slow, fast)}
    end_to_end = {
        v: np.array([p["ts"] - sent_at[p["request_id"]] for p in ps]) for v, ps in by_version.items()
    }
    rebalanced = {name: n - before[name] for name, n in moves().items()}
    fault.measured(N, answered, duplicated, control_loop_ok=acked == set(names))
    in_replica = {v: np.median([p["latency_ms"] for p in ps]) for v, ps in by_version.items()}
    fault.note(
        f"p50 in the replica {in_replica[slow]:,.0f} ms slow, {in_replica[fast]:,.0f} ms after the fast "
        f"deploy; p50 end to end {np.median(end_to_end[slow]) / 1000:.1f} s while slow (backlog); "
        f"partition moves during the run {sum(rebalanced.values())}"
    )

    # The slow version really was in the path: each of its batches took at least the delay.
    assert by_version[slow] and min(p["latency_ms"] for p in by_version[slow]) >= DELAY_S * 1000
    # Guards the poll settings (max.poll.interval.ms far above one batch's time, heartbeats on
    # librdkafka's own thread): no replica was evicted and no partition moved while the model was slow.
    # Tried: a 7 s batch with MODELWATCH_SERVE__MAX_POLL_INTERVAL_MS=6000 (librdkafka's floor is the
    # session timeout) evicts a replica at every batch: 9 partition moves and 323 duplicates, and this fails.
    assert rebalanced == {n: 0 for n in names}
    # Guards at-least-once delivery under backlog: nothing lost, and (no rebalance, no crash) no replay.
    assert lost == 0 and duplicated == 0
    # Guards the control thread: the deploy was obeyed between two slow batches, by both replicas.
    assert acked == set(names)
    assert all(r.proc.poll() is None for r in started)

"""SIGKILL of one of two prediction-service replicas while 50,000 requests flow.

As Kafka's own transaction tests do: hard-kill a member mid-run, then a read_committed reader checks that
every request was answered, and (with ``--exactly-once``) answered once.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from services import kafka
from services.config import Settings
from services.model.recommender import Recommender
from services.sandbox.world import World
from tests.faults.conftest import FaultRow
from tests.faults.support import acked_by, deploy, register, tally
from tests.integration.serving_support import Collector, encoded, produce, requests_of, wait_for

pytestmark = pytest.mark.faults

N = 50_000
RATE = 4000.0  # requests/s: the stream lasts about 12 s, the kill lands in its first third


def both_serving(collector: Collector, names: tuple[str, ...], partitions: int = 6) -> bool:
    owned = [set(collector.serving(n)) for n in names]
    return all(owned) and set().union(*owned) == set(range(partitions))


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_sigkill_of_one_of_two_replicas_under_50000_requests(
    settings: Settings,
    models: tuple[Recommender, Recommender],
    world: World,
    collector: Collector,
    replicas: Any,
    fault: FaultRow,
    mode: str,
) -> None:
    """SIGKILL of one of two service replicas while 50,000 requests flow."""
    fault.fault += f" ({mode})"
    v1, v2 = register(settings, models[0]), register(settings, models[1])
    deploy(settings, v1)
    flags = ["--exactly-once"] if mode == "exactly-once" else []
    victim, survivor = replicas("serve-a", *flags), replicas("serve-b", *flags)
    wait_for(lambda: both_serving(collector, ("serve-a", "serve-b")), 60, "both replicas to share the group")

    requests = requests_of(world, N, seed=21, tag="k")
    stream = threading.Thread(target=produce, args=(settings, encoded(requests), RATE))
    stream.start()
    wait_for(
        lambda: sum(p["instance"] == "serve-a" for p in collector.predictions()) >= 3000,
        60,
        "the victim to be busy",
    )
    victim.kill()
    killed_after = len(collector.answered())
    # The control loop after the crash: a deploy reaches the survivor while the stream still flows.
    command = deploy(settings, v2)
    stream.join(120)
    assert not stream.is_alive()
    wait_for(
        lambda: collector.serving("serve-b") == list(range(6)), 60, "the survivor to own every partition"
    )
    acked = wait_for(lambda: acked_by(collector.events(), command["command_id"]), 30, "the survivor's ack")
    wait_for(lambda: len(collector.answered()) >= N, 120, f"an answer to each of {N:,} requests")

    answered, lost, duplicated = tally(collector.predictions(), (r["request_id"] for r in requests))
    fault.measured(N, answered, duplicated, control_loop_ok=acked == {"serve-b"})
    fault.note(f"killed after {killed_after:,} answers")
    if mode == "exactly-once":
        # What a read_uncommitted reader sees: the killed replica's aborted transaction is really there.
        raw = kafka.read_topic(
            settings, settings.topic("predictions"), timeout=60, **{"isolation.level": "read_uncommitted"}
        )
        aborted = len(raw) - len(collector.predictions())
        fault.note(f"read_uncommitted sees {aborted:,} more (aborted)")

    # Guards at-least-once delivery (offsets stored only after the broker acked the prediction) and the
    # group's takeover of the victim's partitions: without either, requests in flight would be lost.
    assert lost == 0
    assert survivor.proc.poll() is None
    # Guards the control thread: a command is obeyed by the survivor even while it takes over partitions.
    assert acked == {"serve-b"}
    if mode == "exactly-once":
        # Guards transactions (predictions and offsets commit together; the victim's open transaction is
        # aborted) read with isolation.level=read_committed: nothing the victim left half done is seen.
        assert duplicated == 0

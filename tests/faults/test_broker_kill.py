"""SIGKILL of one broker of three, as Kafka's own transaction tests do it: three brokers, topics with
replication 3 and min.insync.replicas 2, a hard kill mid-run, and a read_committed reader that checks
for zero loss and zero duplicates. The replicas run ``--exactly-once``, the monitor goes on counting, and
the killed broker is restarted and rejoins every in-sync replica set.

The cluster is a dedicated one (its own ports and data directory, 384 MB of heap per node), so the shared
test broker is never touched.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from schemas import topics as contract
from schemas.errors import KafkaClientError
from services import kafka
from services.config import BrokerSettings
from services.kafka.topics import create_topics
from services.model.recommender import Recommender
from services.sandbox.broker import LocalCluster
from services.sandbox.processes import ManagedProcess
from services.sandbox.storefront import SimulationPlan, SimulationStats, simulate
from tests.faults.conftest import FaultRow
from tests.faults.support import (
    BROKER_FAULT_MONITOR,
    acked_by,
    available_mb,
    deploy,
    fresh_world,
    latest_totals,
    leader_of,
    led_by,
    partitions_without,
    print_tails,
    register,
    rss_mb,
    tally,
    topic_layout,
)
from tests.integration.monitor_support import READY, write_config
from tests.integration.serving_support import Collector, wait_for

pytestmark = pytest.mark.faults

PORT = int(os.environ.get("MODELWATCH_TEST_FAULT_PORT", "28092"))
HEAP = "384m"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    three = LocalCluster(BrokerSettings(port=PORT, data_dir=tmp_path / "cluster", heap=HEAP), nodes=3)
    try:
        three.start(timeout=180)
        yield three
    finally:
        three.stop()


def _replicas(settings: Any, names: list[str]) -> set[int] | None:
    """How many replicas the partitions of these topics list (``None`` while a topic is not listed yet)."""
    topics = kafka.admin(settings).list_topics(timeout=10).topics
    if not all(n in topics and topics[n].partitions for n in names):
        return None
    return {len(p.replicas) for n in names for p in topics[n].partitions.values()}


def test_topics_are_never_made_with_fewer_replicas_while_a_broker_of_three_is_down(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one broker of three down (fenced: the metadata lists two), `topics create` without a replication
    still makes the cluster's three replicas (the down broker's catch up when it returns), where counting
    the brokers in one metadata response made replication-1 topics on a three-broker cluster without a
    word; a replication the cluster cannot place is refused with Kafka's reason and what to do."""
    settings = fresh_world(cluster.bootstrap, monkeypatch)
    cluster.kill(cluster.nodes[2].node_id)
    alive = [f"127.0.0.1:{n.port}" for n in cluster.nodes if n.running]
    # Every live broker asked alone (a new client asks its bootstrap broker first), so that whichever one
    # answers a count, it counts two: a broker that has not applied the fencing yet still lists three.
    wait_for(
        lambda: all(
            len(AdminClient({"bootstrap.servers": b}).list_topics(timeout=10).brokers) == 2 for b in alive
        ),
        60,
        "every live broker to list the killed one as gone",
    )
    states = create_topics(settings)
    assert all(s.created for s in states)
    # Read until every partition is listed: a broker that has just applied a topic may list fewer replicas.
    names = [s.name for s in states]
    wait_for(lambda: _replicas(settings, names) == {3}, 30, "every partition to list three replicas")

    too_many = fresh_world(cluster.bootstrap, monkeypatch)
    with pytest.raises(KafkaClientError, match="start the missing brokers") as refused:
        create_topics(too_many, replication=4)
    assert "--replication N" in str(refused.value)


def test_sigkill_of_one_of_three_brokers(
    cluster: LocalCluster,
    models: tuple[Recommender, Recommender],
    replicas: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: FaultRow,
) -> None:
    """SIGKILL of one broker of three (replication 3, min.insync.replicas 2) mid-run; it rejoins."""
    settings = fresh_world(cluster.bootstrap, monkeypatch)
    # The cluster's defaults (replication 3, min.insync.replicas 2), applied by its controller: a broker
    # that has not yet applied the third's unfencing lists two, and a count of them made replication 1 once.
    create_topics(settings)
    layout = topic_layout(settings, [t.suffix for t in contract.ALL])
    assert {(r, isr) for _p, r, isr in layout.values()} == {(3, "2")}, layout

    v1, v2 = register(settings, models[0]), register(settings, models[1])
    deploy(settings, v1)
    collector = Collector(settings)
    config = write_config(tmp_path / "monitor.toml", BROKER_FAULT_MONITOR, [])
    monitor = ManagedProcess(
        "monitor",
        ["monitor", "--config", str(config)],
        tmp_path / "monitor.log",
        {"MODELWATCH_MONITOR__DATA_DIR": str(tmp_path / "monitor-data")},
    )
    names = ("serve-a", "serve-b")
    started = [replicas(n, "--exactly-once") for n in names]
    try:
        wait_for(
            lambda: set().union(*(collector.serving(n) for n in names)) == set(range(6)), 90, "the replicas"
        )
        monitor.wait_for_log(READY, 120)
        jvm_mb = sum(rss_mb(n.pid) for n in cluster.nodes if n.pid)
        free_mb = available_mb()

        stats: list[SimulationStats] = []
        plan = SimulationPlan(
            rate=400, duration_s=30, world_seed=11, candidates=10, outcome_delay_s=(0.3, 1.0)
        )
        storefront = threading.Thread(target=lambda: stats.append(simulate(settings, plan)))
        storefront.start()
        wait_for(lambda: len(collector.answered()) >= 2000, 60, "traffic before the crash")
        victim = leader_of(settings, "requests", 0)  # a broker that leads something the replicas read
        cluster.kill(victim)
        at_kill = len(collector.answered())
        # The controller moves leadership off a broker once its session (9 s) lapses; until then producing
        # to its partitions waits.
        wait_for(lambda: not led_by(settings, victim), 60, f"leadership to leave broker {victim}", every=0.5)
        # The control loop with a broker down: a deploy, acknowledged by both replicas.
        command = deploy(settings, v2)
        acked = wait_for(
            lambda: len(a := acked_by(collector.events(), command["command_id"])) == 2 and a, 90, "acks"
        )
        wait_for(lambda: len(collector.answered()) >= at_kill + 2000, 90, "answers with two brokers of three")
        cluster.start(timeout=120)
        wait_for(lambda: not partitions_without(settings, victim), 120, f"broker {victim} back in every ISR")
        storefront.join(120)
        assert not storefront.is_alive() and stats
        sent = stats[0].requests
        wait_for(lambda: len(collector.answered()) >= sent, 120, f"an answer to each of {sent:,} requests")
        wait_for(lambda: sum(latest_totals(settings).values()) >= sent, 120, "the monitor to count them all")
        totals = latest_totals(settings)
        predictions = collector.predictions()
        alive = monitor.running and all(r.proc.poll() is None for r in started)
    finally:
        collector.close()
        monitor.stop()
        print_tails(("monitor", monitor.log()), *((r.instance, r.log) for r in started))

    answered, _lost, duplicated = tally(predictions, {p["request_id"] for p in predictions})
    fault.measured(sent, answered, duplicated, control_loop_ok=acked == set(names) and v2 in totals)
    fault.note(
        f"killed broker {victim} (leader of requests[0]) after {at_kill:,} answers; it rejoined every ISR"
    )
    fault.note(
        f"monitor counted {sum(totals.values()):,}; 3 JVMs {jvm_mb:,.0f} MB RSS, {free_mb:,.0f} MB still free"
    )

    # Guards replication 3 with min.insync.replicas 2 and acks=all: what was acknowledged survived the
    # broker, so every request the storefront sent was answered.
    assert answered == sent
    # Guards the transactions of --exactly-once across a leader and coordinator change, read committed.
    assert duplicated == 0
    # Guards the monitor's clients (aiokafka) failing over: it counted every labelled request.
    assert sum(totals.values()) == sent
    # Guards the control thread's reader across the failover: the deploy was obeyed by both replicas.
    assert acked == set(names) and v2 in totals
    assert alive
    # Three 384 MB brokers fit beside everything else on this machine.
    assert free_mb > 512

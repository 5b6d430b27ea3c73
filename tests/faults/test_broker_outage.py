"""No broker when the service and the monitor start, then the broker appears; later it is SIGKILLed and
restarted mid-run. Both processes retry with backoff, say so in their logs, and recover by themselves.

The broker here is a dedicated one-node cluster on its own port and data directory, so the shared test
broker is never stopped.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import NewTopic

from services import kafka
from services.config import BrokerSettings
from services.kafka.topics import create_topics, ensure_topics
from services.model.recommender import Recommender
from services.sandbox.broker import LocalCluster
from services.sandbox.kafka_node import port_open
from services.sandbox.processes import ManagedProcess
from services.sandbox.storefront import SimulationPlan, SimulationStats, simulate
from tests.faults.conftest import FaultRow
from tests.faults.support import (
    BROKER_FAULT_MONITOR,
    acked_by,
    deploy,
    fresh_world,
    latest_totals,
    log_events,
    print_tails,
    register,
    tally,
)
from tests.integration.monitor_support import READY, write_config
from tests.integration.serving_support import Collector, wait_for

pytestmark = pytest.mark.faults

PORT = int(os.environ.get("MODELWATCH_TEST_FAULT_PORT", "28092")) + 100
#: Quick retries and failure detection, so the test spends its time on the fault, not on waiting.
FAST = {"MODELWATCH_SERVE__RETRY_MAX_S": "2", "MODELWATCH_SERVE__SESSION_TIMEOUT_MS": "6000"}


@pytest.fixture
def lone_broker(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(BrokerSettings(port=PORT, data_dir=tmp_path / "broker", heap="384m"))
    try:
        yield cluster
    finally:
        cluster.stop()


def retry_waits(lines: list[str]) -> list[float]:
    return [float(m.group(1)) for line in lines if (m := re.search(r"retry_in_s=([0-9.]+)", line))]


def test_no_broker_at_start_then_a_broker_restart_mid_run(
    lone_broker: LocalCluster,
    models: tuple[Recommender, Recommender],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: FaultRow,
) -> None:
    """No broker at start, then the broker appears; later the broker is SIGKILLed and restarted mid-run."""
    settings = fresh_world(lone_broker.bootstrap, monkeypatch)
    config = write_config(tmp_path / "monitor.toml", BROKER_FAULT_MONITOR, [])
    env = {**FAST, "MODELWATCH_MONITOR__DATA_DIR": str(tmp_path / "monitor-data")}
    replica = ManagedProcess("serve-a", ["serve", "--instance", "serve-a"], tmp_path / "serve-a.log", env)
    monitor = ManagedProcess("monitor", ["monitor", "--config", str(config)], tmp_path / "monitor.log", env)
    collector: Collector | None = None
    try:
        # 1. Nobody home: both say so, with growing waits, and stay up.
        wait_for(
            lambda: len(log_events(replica.log(), "broker_unreachable")) >= 3, 60, "the replica's retries"
        )
        wait_for(lambda: monitor.log().count("waiting for Kafka") >= 3, 60, "the monitor's retries")
        waits = retry_waits(log_events(replica.log(), "broker_unreachable"))
        monitor_waits = [float(w) for w in re.findall(r"retry in ([0-9.]+)s", monitor.log())]
        # Guards the backoff: each wait longer than the one before, up to the cap.
        assert waits[:3] == sorted(waits[:3]) and waits[2] > waits[0], waits
        assert monitor_waits[:3] == sorted(monitor_waits[:3]) and monitor_waits[2] > monitor_waits[0]

        # 2. The broker appears, an operator creates the topics and deploys: nobody is restarted by hand.
        lone_broker.start()
        create_topics(settings)
        v1, v2 = register(settings, models[0]), register(settings, models[1])
        deploy(settings, v1)
        collector = Collector(settings)
        c = collector
        wait_for(lambda: c.serving("serve-a") == list(range(6)), 90, "the replica to serve every partition")
        monitor.wait_for_log(READY, 90)
        assert "event=broker_reachable" in replica.log()
        assert "Kafka answered" in monitor.log()

        # 3. Traffic, and the broker SIGKILLed under it, then restarted.
        stats: list[SimulationStats] = []
        plan = SimulationPlan(
            rate=250, duration_s=40, world_seed=11, candidates=10, outcome_delay_s=(0.3, 1.0)
        )
        storefront = threading.Thread(target=lambda: stats.append(simulate(settings, plan)))
        storefront.start()
        wait_for(lambda: len(c.answered()) >= 1500, 60, "traffic before the crash")
        replica_before, monitor_before = len(replica.log()), len(monitor.log())
        lone_broker.kill(1)
        # Both notice (the replica through librdkafka's error callback, the monitor through aiokafka).
        wait_for(
            lambda: "kafka_error" in replica.log()[replica_before:], 60, "the replica to report the loss"
        )
        answered_at_kill = len(c.answered())
        lone_broker.start()
        wait_for(lambda: len(c.answered()) > answered_at_kill + 500, 90, "answers after the restart")
        # The control loop after the restart: a deploy is obeyed while the storefront still plays.
        command = deploy(settings, v2)
        acked = wait_for(lambda: acked_by(c.events(), command["command_id"]), 60, "the deploy's ack")
        storefront.join(120)
        assert not storefront.is_alive() and stats
        sent = stats[0].requests
        wait_for(lambda: len(c.answered()) >= sent, 120, f"an answer to each of {sent:,} requests")
        wait_for(lambda: sum(latest_totals(settings).values()) >= sent, 120, "the monitor to count them all")
        totals = latest_totals(settings)

        predictions = c.predictions()
        answered, _lost, duplicated = tally(predictions, {p["request_id"] for p in predictions})
        fault.measured(sent, answered, duplicated, control_loop_ok=acked == {"serve-a"} and v2 in totals)
        fault.note(f"monitor counted {sum(totals.values()):,} labelled")
        fault.note(f"replica retries {waits[:4]} s, monitor retries {monitor_waits[:4]} s")
        monitor_after = monitor.log()[monitor_before:]
        said = sorted(
            {
                w
                for w in ("Connection", "NodeNotReady", "KafkaConnectionError", "Unable")
                if w in monitor_after
            }
        )
        fault.note(f"monitor said: {', '.join(said) or 'nothing'}")

        # Guards the replica's and the monitor's reconnection (no restart by hand): same processes, alive.
        assert replica.running and monitor.running
        # Guards at-least-once delivery across the broker's crash: every request the storefront sent was
        # answered (librdkafka retries the produce; offsets wait for the acks).
        assert answered == sent
        # Guards the monitor's at-least-once join and its deduplication of replayed predictions.
        assert sum(totals.values()) == sent
        # Guards the control thread's reader: it resumes after the broker comes back.
        assert acked == {"serve-a"} and v2 in totals
    finally:
        if collector is not None:
            collector.close()
        for p in (replica, monitor):
            p.stop()
        print_tails(("serve-a", replica.log()), ("monitor", monitor.log()))


def test_topics_are_created_when_the_broker_dies_with_the_request_in_flight(
    lone_broker: LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fault: FaultRow,
) -> None:
    """CreateTopics in flight when the broker is SIGKILLed: tried again, done once the broker is back."""
    lone_broker.start()
    settings = fresh_world(lone_broker.bootstrap, monkeypatch)
    wanted = [NewTopic(settings.topic(f"in-flight-{i}"), 3, 1) for i in range(3)]
    client = kafka.admin(settings)
    # A topic first, so that the client is connected to the controller and the next CreateTopics goes out
    # at once; then its metadata once more, which only the broker by its id can answer (librdkafka retires
    # its bootstrap connection once the metadata names the brokers).
    ensure_topics(settings, [NewTopic(settings.topic("in-flight-warm-up"), 1, 1)], 30, client)
    client.list_topics(timeout=10)
    broker = lone_broker.nodes[0]
    assert broker.pid is not None
    outcome: list[object] = []
    worker = threading.Thread(
        target=lambda: outcome.append(_outcome(ensure_topics, settings, wanted, 90, client))
    )
    # Frozen, the broker reads nothing: the request waits in its socket until the kill resets the connection.
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        with caplog.at_level(logging.WARNING, logger="services.kafka.topics"):
            worker.start()
            wait_for(lambda: unread_bytes(broker.port) > 0, 30, "the request in the frozen broker's socket")
            lone_broker.kill(1)
            # Guards the retry: the request fails with _TRANSPORT (connection reset), which ensure_topics
            # must take for a moment's trouble and try again, not for an answer.
            wait_for(lambda: "creating topics failed" in caplog.text, 30, "a failed CreateTopics, retried")
            # The killed JVM's listeners close a moment after it is reaped; start() refuses ports in use.
            wait_for(
                lambda: not (port_open(broker.port) or port_open(broker.controller_port)),
                30,
                "the killed broker's ports closed",
            )
            lone_broker.start()
            worker.join(90)
    finally:
        if broker.running:
            os.kill(broker.pid, signal.SIGCONT)
    assert not worker.is_alive()
    states = outcome[0]
    assert isinstance(states, list), states
    assert [(s.name, s.partitions, s.created) for s in states] == [(t.topic, 3, True) for t in wanted]
    retried = [r.getMessage() for r in caplog.records]
    fault.note(f"{len(retried)} attempts failed, then done; the first: {retried[0]}")


def unread_bytes(port: int) -> int:
    """Bytes received and not yet read by the listener on ``port``, over its accepted sockets (Linux; the JVM
    listens on an IPv6 socket that also takes IPv4)."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED, the broker's end
                total += int(fields[4].split(":")[1], 16)  # rx_queue
    return total


def _outcome(call: Callable[..., object], *args: object) -> object:
    """``call(*args)``'s result, or the exception it raised: a thread's outcome, for the test to assert."""
    try:
        return call(*args)
    except Exception as exc:
        return exc

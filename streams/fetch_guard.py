"""A fetch that outlives its rebalance takes nothing: a guard on Faust's aiokafka consumer thread.

Why. Faust (faust-streaming 0.15) reads through aiokafka in a thread of its own. Each fetch of the
worker's drain loop is a call into that thread, ``fetcher.fetched_records(active)``, given the consumer's
live set of active partitions, which waits up to a second for records. A rebalance does not interrupt
that call: it waits out the rebalance in the thread, then takes the first records that come, moving
aiokafka's positions past them. Meanwhile Faust has stopped its flow and paused every partition, and
aiokafka reads the empty set of active partitions as *every* partition; Faust drops what a fetch returns
while its flow is stopped. So records fetched in that moment are lost, whichever partition they belong to:
among them, those of a changelog partition that the table recovery has just sought to its start, which
then never receives an event, and the recovery never ends. The worker stands still, with whatever rollback
it had pending (seen once in ``tests/faults/test_monitor_workers.py``; the README's Reliability section
tells the run).

What this does. The call is given a view of the live set that holds nothing once another generation has
begun or the flow has stopped, and that is never empty-as-all. The records stay in aiokafka's buffer for
the next fetch of the generation that owns them, or for a seek to drop. :func:`install` puts the guarded
call in place of Faust's; the monitor installs it when it builds its app.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

from aiokafka.errors import ConsumerStoppedError
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread


class CurrentPartitions:
    """The partitions a fetch may take records from: those active now, as long as the generation that
    asked is the current one and the consumer's flow runs; none after. All aiokafka asks of it is
    ``tp in partitions`` and whether it is empty (it never is: empty would mean every partition)."""

    def __init__(self, active: Set[Any], app: Any, consumer: Any) -> None:
        self._active, self._app, self._consumer = active, app, consumer
        self._generation = app.consumer_generation_id

    def __contains__(self, tp: object) -> bool:
        current = self._app.consumer_generation_id == self._generation and self._consumer.flow_active
        return bool(current) and tp in self._active

    def __bool__(self) -> bool:
        return True


async def fetch_current(
    thread: Any,
    consumer: Any,
    active_partitions: Set[Any] | None,
    timeout: float | None = None,
    max_records: int | None = None,
) -> Any:
    """Faust's ``AIOKafkaConsumerThread._fetch_records``, with :class:`CurrentPartitions` for its set."""
    if not thread.consumer.flow_active:
        return {}
    fetcher = consumer._fetcher
    if consumer._closed or fetcher._closed:
        raise ConsumerStoppedError()
    # None: a client-only app (no group) reads every partition it has; nothing to guard.
    partitions = (
        None
        if active_partitions is None
        else CurrentPartitions(active_partitions, thread.app, thread.consumer)
    )
    with fetcher._subscriptions.fetch_context():
        return await fetcher.fetched_records(partitions, timeout=timeout, max_records=max_records)


def install() -> None:
    """Put :func:`fetch_current` in place of Faust's fetch (idempotent)."""
    AIOKafkaConsumerThread._fetch_records = fetch_current  # type: ignore[method-assign,assignment]

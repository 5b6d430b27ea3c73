"""A fetch that outlives its rebalance takes nothing: a guard on Faust's aiokafka consumer thread.

Why. Faust (faust-streaming 0.15) reads through aiokafka in a thread of its own. Each fetch of the
worker's drain loop is a call into that thread, ``fetcher.fetched_records(active)``, given the consumer's
live set of active partitions, which waits up to a second for records. When a rebalance begins, Faust
cancels the drain loop, but not that call: it goes on in the thread (it first waits out the rebalance),
and when records come it takes them, moving aiokafka's positions past them, and hands them to a caller
that is gone. Worse, aiokafka reads an empty set of partitions as *all* of them, and the live set is
empty while Faust holds every partition paused for the recovery of its tables. So records fetched in that
moment are lost, whichever partition they belong to; among them, those of a changelog partition that the
recovery has just sought to its start. Such a partition then never receives an event, and the recovery
never ends: the worker stands still, with whatever rollback it had pending (seen once in
``tests/faults/test_monitor_workers.py``; the README's Reliability section tells the run).

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
    active_partitions: Set[Any],
    timeout: float | None = None,
    max_records: int | None = None,
) -> Any:
    """Faust's ``AIOKafkaConsumerThread._fetch_records``, with :class:`CurrentPartitions` for its set."""
    if not thread.consumer.flow_active:
        return {}
    fetcher = consumer._fetcher
    if consumer._closed or fetcher._closed:
        raise ConsumerStoppedError()
    with fetcher._subscriptions.fetch_context():
        return await fetcher.fetched_records(
            CurrentPartitions(active_partitions, thread.app, thread.consumer),
            timeout=timeout,
            max_records=max_records,
        )


def install() -> None:
    """Put :func:`fetch_current` in place of Faust's fetch (idempotent)."""
    AIOKafkaConsumerThread._fetch_records = fetch_current  # type: ignore[method-assign,assignment]

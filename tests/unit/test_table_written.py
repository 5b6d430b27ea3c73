"""A batch's table records are awaited before its offsets may be committed (streams.tables).

Faust's flush before a commit waits for its producer buffer only while that drains (0.1 s without a send
and it commits anyway), so the agents await the sends of their table records themselves. Here Faust's
changelog send is replaced by futures the test resolves: what is checked is that ``written()`` waits for
every one of them and raises a failed one's error. The end-to-end check is the two-worker SIGKILL fault test
(tests/faults/test_monitor_workers.py), which lost a batch's counts without it (3 of 6 runs).
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from faust.tables.base import Collection

from streams.tables import PartitionedTable


def test_written_waits_for_every_changelog_record_and_raises_a_failed_ones_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = faust.App("test-written", broker="kafka://127.0.0.1:1")  # never started: nothing connects
    table = PartitionedTable(app, name="windows", key_type=str, partitions=3)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sends: list[asyncio.Future[Any]] = []

        def send_changelog(self: Collection, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
            sends.append(loop.create_future())
            return sends[-1]

        monkeypatch.setattr(Collection, "send_changelog", send_changelog)
        table.send_changelog(1, "a", 1)  # what a table write calls
        table.send_changelog(1, "a", None)  # ...and a deletion
        waiting = asyncio.ensure_future(table.written())
        await asyncio.sleep(0)  # let it run up to its wait
        assert len(sends) == 2 and not waiting.done()
        sends[0].set_result(None)
        await asyncio.sleep(0)
        assert not waiting.done()  # one record is still unsent
        sends[1].set_result(None)
        await asyncio.wait_for(waiting, 5)

        table.send_changelog(1, "b", 2)
        sends[2].set_exception(RuntimeError("NotEnoughReplicas"))
        with pytest.raises(RuntimeError, match="NotEnoughReplicas"):
            await table.written()
        await table.written()  # nothing left to wait for

    asyncio.run(scenario())

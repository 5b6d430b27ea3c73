from __future__ import annotations

import pytest

from schemas import topics
from schemas.errors import CommandError, KafkaClientError
from services.deployment import commands
from services.kafka.topics import check_command_log, partitions_of


def test_signed_commands_verify_and_tampering_is_caught() -> None:
    cmd = commands.make("deploy", "v1", "first", key="k")
    commands.verify(cmd, "k")
    with pytest.raises(CommandError, match="forged"):
        commands.verify({**cmd, "model_version": "v2"}, "k")
    with pytest.raises(CommandError, match="forged"):
        commands.verify(cmd, "other-key")
    unsigned = commands.make("deploy", "v1", "first")
    with pytest.raises(CommandError, match="not signed"):
        commands.verify(unsigned, "k")
    commands.verify(unsigned, None)


def test_history_applies_each_command_once_in_log_order() -> None:
    d1 = commands.make("deploy", "v1", "a", ts=1000)
    d2 = commands.make("deploy", "v2", "b", ts=2000)
    rb = commands.make("rollback", "v1", "alert", ts=3000)
    h = commands.History.of([d1, d2, d2, rb, d2])
    assert h.active_version == "v1"
    assert [c["model_version"] for c in h.applied] == ["v1", "v2", "v1"]
    assert len(h.ignored) == 2
    assert all("already applied" in why for _, why in h.ignored)
    assert h.previous_version() == "v2"


def test_the_issuer_s_clock_never_orders_commands() -> None:
    # An operator's laptop ten minutes ahead, then the monitor's rollback stamped by a right clock: the
    # later command in the log is in force, whatever its ts says.
    ahead = commands.make("deploy", "v2", "laptop ahead", ts=10 * 60_000 + 5000)
    rollback = commands.make("rollback", "v1", "alert", ts=5000)
    h = commands.History.of([commands.make("deploy", "v1", "a", ts=1000), ahead, rollback])
    assert h.active_version == "v1"
    assert not h.ignored


def test_history_with_key_ignores_unsigned_and_forged() -> None:
    good = commands.make("deploy", "v1", "a", key="k", ts=1)
    forged = {**commands.make("deploy", "v2", "b", key="k", ts=2), "model_version": "evil"}
    unsigned = commands.make("deploy", "v3", "c", ts=3)
    h = commands.History.of([good, forged, unsigned], key="k")
    assert h.active_version == "v1"
    assert h.previous_version() is None
    assert not h.feed_raw(b"{not json")


def test_the_command_topic_gets_one_partition_and_more_are_refused() -> None:
    assert partitions_of(topics.MODEL_COMMANDS, 6) == 1
    assert partitions_of(topics.REQUESTS, 6) == 6 and partitions_of(topics.MODEL_EVENTS, 6) == 3
    check_command_log("rec.model-commands", 1)
    with pytest.raises(KafkaClientError, match=r"rec\.model-commands has 3 partitions") as caught:
        check_command_log("rec.model-commands", 3)
    assert "\n" not in str(caught.value) and "delete it" in str(caught.value)

from __future__ import annotations

import pytest

from schemas.errors import CommandError
from services.deployment import commands


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


def test_history_applies_each_command_once_and_never_goes_back_in_time() -> None:
    d1 = commands.make("deploy", "v1", "a", ts=1000)
    d2 = commands.make("deploy", "v2", "b", ts=2000)
    rb = commands.make("rollback", "v1", "alert", ts=3000)
    h = commands.History.of([d1, d2, d2, rb, d2])
    assert h.active_version == "v1"
    assert [c["model_version"] for c in h.applied] == ["v1", "v2", "v1"]
    assert len(h.ignored) == 2
    stale = commands.make("deploy", "v9", "old", ts=1500)
    assert not h.feed(stale)
    assert "older" in h.ignored[-1][1]
    assert h.previous_version() == "v2"


def test_history_with_key_ignores_unsigned_and_forged() -> None:
    good = commands.make("deploy", "v1", "a", key="k", ts=1)
    forged = {**commands.make("deploy", "v2", "b", key="k", ts=2), "model_version": "evil"}
    unsigned = commands.make("deploy", "v3", "c", ts=3)
    h = commands.History.of([good, forged, unsigned], key="k")
    assert h.active_version == "v1"
    assert h.previous_version() is None
    assert not h.feed_raw(b"{not json")

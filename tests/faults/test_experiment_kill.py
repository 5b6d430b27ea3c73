"""SIGKILL of the monitor between an experiment's stages: right after it sent the canary a promoted shadow
goes on to (``[experiments] canary_after_shadow``), and restarted.

No replica and no model: the incumbent's predictions, the shadow candidate's (``rec.predictions.shadow``)
and the outcomes are written straight to the topics, the candidate as good as the incumbent (the same
answers), so the shadow is promoted on to a canary after ``min_samples`` pairs; then the canary's traffic,
each user on the arm the replicas' salted hash gives it. After the restart there is exactly one canary
command for the shadow, the canary runs and reaches one decision, sent once.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from services.deployment.commands import make, publish, read_history
from services.serving.experiment import on_candidate
from streams.experiments import canary_of, command_id
from streams.rollback import ISSUER
from tests.faults.conftest import FaultRow
from tests.faults.support import KEY
from tests.integration.monitor_support import (
    MonitorProcess,
    Req,
    Storefront,
    read_events,
    topic_world,
    traffic,
    wait_consumed,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.faults

PARTITIONS = 3
MONITOR = {"label_window_s": 1, "emit_every_s": 1.0, "commit_interval_s": 0.3, "session_timeout_s": 6}
EXPERIMENTS = {
    "MIN_SAMPLES": "50",
    "BURN_IN": "20",
    "TUNING": "200",
    "MARGIN": "0.2",
    "MAX_DURATION_S": "3600",
    "CANARY_AFTER_SHADOW": "0.5",
}


def experiment_commands(settings: Any) -> list[dict[str, Any]]:
    return [
        c for c in read_events(settings, "model-commands", "model-command") if c["action"] not in ("deploy",)
    ]


def test_sigkill_of_the_monitor_right_after_it_sent_a_shadows_canary(
    kafka_bootstrap: str, tmp_path: Path, fault: FaultRow
) -> None:
    """SIGKILL of the monitor right after it sent the canary a promoted shadow goes on to, restart."""
    with topic_world(kafka_bootstrap, PARTITIONS) as plain:
        settings = plain.model_copy(update={"signing_key": SecretStr(KEY)})
        config = write_config(tmp_path / "monitor.toml", MONITOR, [])
        env = {
            "MODELWATCH_SIGNING_KEY": KEY,
            **{f"MODELWATCH_EXPERIMENTS__{k}": v for k, v in EXPERIMENTS.items()},
        }
        monitor = MonitorProcess(settings, config, tmp_path, env)
        for action, version in (("deploy", "v1"), ("shadow", "v2")):
            publish(settings, make(action, version, "fault test", key=KEY, issued_by="fault-suite"))
        shadow = read_history(settings).experiment
        assert shadow is not None and shadow.mode == "shadow"
        canary_id = canary_of(shadow.experiment_id)
        shop = Storefront(settings)
        t0 = int(time.time() * 1000)
        sent = 0
        monitor.start()
        try:
            # The shadow: the candidate answers every request as the incumbent does.
            shadowed = traffic("v1", 150, seed=1, t0=t0, step_ms=50, hit=0, miss=0, exact=(1, 0))
            shop.predictions(shadowed)
            for r in shadowed:
                shop._send(
                    "predictions.shadow",
                    "prediction",
                    r.request_id,
                    {**r.prediction(), "model_version": "v2"},
                )
            shop.flush()
            # The outcomes only once the monitor has routed every prediction and shadow: its source reader
            # reads the three topics in no set order, and a shadow that comes after its request was
            # labelled is too late to pair (by design: a lagging shadow thread loses pairs). Seen: 49 of
            # 150 paired, too few for the shadow to decide.
            wait_consumed(settings, ["predictions", "predictions.shadow"], timeout=60)
            shop.outcomes(shadowed)
            sent += len(shadowed)
            [canary] = wait_for(
                lambda: [c for c in experiment_commands(settings) if c["action"] == "canary"] or None,
                120,
                "the monitor's canary of the promoted shadow",
                every=0.1,
            )
            monitor.kill()
            killed_at = len(experiment_commands(settings))
            monitor.start()

            # The canary: each user on the arm the salted hash gives it, both arms as good.
            later = traffic("v1", 400, seed=2, t0=t0 + 10_000, step_ms=25, hit=0, miss=0, exact=(1, 0))
            split: list[Req] = [
                dataclasses.replace(r, version="v2")
                if on_candidate(canary_id, r.prediction()["user_id"], 0.5)
                else r
                for r in later
            ]
            shop.predictions(split)
            shop.outcomes(split)
            sent += len(split)

            def ended() -> list[dict[str, Any]] | None:
                ours = [c for c in experiment_commands(settings) if c.get("experiment_id") == canary_id]
                return [c for c in ours if c["action"] in ("promote", "abort")] or None

            [decision] = wait_for(ended, 120, "the canary's decision", every=0.5)
            restored = "restored experiment" in monitor.log()
        finally:
            monitor.stop()
        commands = experiment_commands(settings)
        history = read_history(settings)

    canaries = [c for c in commands if c["action"] == "canary"]
    decisions = [c for c in commands if c["action"] in ("promote", "abort")]
    once = len(canaries) == 1 and len(decisions) == 1
    # The requests written are counted; what the monitor labelled of them is not waited for (the decision
    # needs only its samples), so answered, lost and duplicated stay unmeasured.
    fault.sent, fault.control_loop_ok = sent, once and history.active_version == "v2"
    fault.note(f"killed with {killed_at} experiment commands on the log; restored a run: {restored}")
    fault.note(f"canary commands {len(canaries)}, decisions {[c['action'] for c in decisions]}")

    assert (canary["command_id"], canary["experiment_id"]) == (
        command_id(shadow.experiment_id, "canary"),
        canary_id,
    )
    assert canary["issued_by"] == ISSUER and canary["traffic"] == 0.5
    # Exactly one canary for the shadow, and one decision of the canary, whatever the kill interrupted.
    assert [c["command_id"] for c in canaries] == [canary["command_id"]]
    assert [c["command_id"] for c in decisions] == [decision["command_id"]]
    assert decision["command_id"] == command_id(canary_id, "promote") and decision["action"] == "promote"
    assert [(c["action"], c["model_version"]) for c in history.applied] == [
        ("deploy", "v1"),
        ("shadow", "v2"),
        ("canary", "v2"),
        ("promote", "v2"),
    ]
    assert history.experiment is None and history.active_version == "v2"
    assert not history.ignored

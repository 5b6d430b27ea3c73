"""The main job, shortened: deploy, alert, automatic rollback and recovery; then shadow, canary and promote a
retrain, and abort a degraded canary, each step by the monitor, judged from the topics."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image

from services.config import Settings
from services.sandbox.demo import DemoPlan, run_demo


def test_demo_story_end_to_end(settings: Settings, tmp_path: Path) -> None:
    said: list[str] = []
    result = run_demo(settings, DemoPlan(warmup_s=8.0, out_dir=tmp_path / "demo"), say=said.append)
    assert result.story_complete
    story = [what for _, what in result.timeline.rows]
    # The order of the story: both deploys acknowledged, then the alert, the rollback, its acks, recovery.
    steps = [
        f"deploy {result.good}",
        f"deploy {result.bad} (degraded)",
        "alert f1-low firing",
        f"rollback to {result.good} ordered by the monitor",
        f"recovered: {result.good}",
        f"shadow {result.retrain}",
        f"canary {result.retrain} at 0.2",
        f"promote {result.retrain}",
        f"canary {result.bad} at 0.2",
        f"abort {result.bad}",
    ]
    positions = [next(i for i, what in enumerate(story) if what.startswith(step)) for step in steps]
    assert positions == sorted(positions)
    assert result.predictions[result.good] > 0 and result.predictions[result.bad] > 0
    assert result.dead_letters > 0  # the simulator's malformed requests were dead-lettered, not served
    assert result.report_png is not None and matplotlib.image.imread(result.report_png).shape[0] > 500
    # The stages, each decided by the monitor, with the evidence per arm; the degraded canary answered
    # exactly the users of its share. (The share of predictions is random: users are hashed with the
    # experiment's random id, and a few hundred predictions pass 0.25 in about 1 run in 100.)
    assert result.staged is not None
    issuers = [story[i].rsplit(" by ", 1)[1] for i in positions[5:]]
    monitor = "modelwatch-monitor"
    assert [who == monitor for who in issuers] == [False, True, True, False, True], issuers
    decisions = [(e["mode"], e["decision"]) for e in result.staged.decisions]
    assert decisions == [("shadow", "promote"), ("canary", "promote"), ("canary", "abort")]
    assert all(e["labelled"]["candidate"] >= 50 for e in result.staged.decisions)
    assert result.staged.canary_made["degraded"] > 0
    assert result.staged.canary_off_arm == 0, result.staged.canary_made

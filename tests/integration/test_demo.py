"""The main job, shortened: deploy, alert, automatic rollback and recovery, judged from the topics."""

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
    ]
    positions = [next(i for i, what in enumerate(story) if what.startswith(step)) for step in steps]
    assert positions == sorted(positions)
    assert result.predictions[result.good] > 0 and result.predictions[result.bad] > 0
    assert result.dead_letters > 0  # the simulator's malformed requests were dead-lettered, not served
    assert result.report_png is not None and matplotlib.image.imread(result.report_png).shape[0] > 500

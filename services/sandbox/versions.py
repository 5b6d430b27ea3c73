"""Versions for the sandbox: train on the simulated world and register the result.

``modelwatch train`` without ``--data`` or ``--from-topics``, the demo, the benchmark and the tests train
this way; a deployment trains on its own logs with :func:`services.model.training.train_version`.
"""

from __future__ import annotations

from typing import Any

from services.config import Settings
from services.model.interactions import Interactions
from services.model.training import DEFAULT_SESSIONS, Progress, train_version
from services.registry import Manifest, Registry
from services.sandbox.world import World


def _silent(step: str) -> None:
    """No progress report."""


def world_log(
    seed: int, sessions: int = DEFAULT_SESSIONS, world: World | None = None
) -> tuple[Interactions, dict[str, Any]]:
    """``sessions`` sessions of ``world`` (default: the world of ``seed``), and how a manifest names them."""
    w = world or World.generate(seed)
    source = {
        "source": "world",
        "world": {
            "seed": w.seed,
            "users": w.n_users,
            "items": w.n_items,
            "drift_at_ms": w.drift_at_ms,
            "drift_strength": w.drift_strength,
        },
    }
    return w.interactions(sessions, seed), source


def train_on_world(
    settings: Settings,
    *,
    seed: int = 0,
    degrade: float = 0.0,
    sessions: int = DEFAULT_SESSIONS,
    world: World | None = None,
    registry: Registry | None = None,
    parent: str | None = None,
    progress: Progress = _silent,
) -> Manifest:
    """:func:`~services.model.training.train_version` on ``sessions`` sessions of the simulated world."""
    log, source = world_log(seed, sessions, world)
    return train_version(
        settings,
        seed=seed,
        degrade=degrade,
        data=log,
        source=source,
        registry=registry,
        parent=parent,
        progress=progress,
    )

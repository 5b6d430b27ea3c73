"""Training: get a log, split it by time, fit, compare with the popularity baseline, register a version.

The last ``held_out`` share of sessions (by time) is never seen in fitting; the model and the baseline
are scored on it with :mod:`services.model.evaluation`, exactly as the monitor scores live traffic, and
the model's held-out metrics become the version's baseline in the registry.

``degrade`` shuffles the labels of that fraction of training rows (never the held-out rows), for drills:
the model it makes is honestly worse, and its manifest says so.

:func:`train_version` is what the CLI, the simulator and the demo call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.errors import ModelError
from services.config import Settings
from services.model.evaluation import evaluate
from services.model.interactions import Interactions
from services.model.popularity import Popularity
from services.model.recommender import Recommender
from services.registry import Manifest, Registry

#: Sessions generated when training on the world (20 candidates each: a million interactions).
DEFAULT_SESSIONS = 50_000
HELD_OUT = 0.2

#: The steps :func:`train_version` reports, in order, so a caller can size a progress bar.
STEPS = ("read data", "split by time", "fit model", "fit popularity baseline", "evaluate", "register")

Progress = Callable[[str], None]


def _silent(_step: str) -> None:
    return None


@dataclass
class TrainingReport:
    """A fitted model and how it did on the held-out sessions."""

    model: Recommender
    metrics: dict[str, float | None]
    baseline: dict[str, float | None]
    data: dict[str, Any]


def degrade_labels(log: Interactions, fraction: float, seed: int = 0) -> Interactions:
    """A copy of ``log`` with the labels of ``fraction`` of its rows shuffled among those rows."""
    if not 0.0 <= fraction <= 1.0:
        raise ModelError(f"degrade fraction must be in [0, 1], not {fraction}")
    rng = np.random.default_rng([seed, 7])
    chosen = np.flatnonzero(rng.random(len(log)) < fraction)
    purchased = log.purchased.copy()
    purchased[chosen] = purchased[rng.permutation(chosen)]
    return Interactions(log.user_id, log.item_id, purchased, log.ts, log.session)


def train(
    log: Interactions,
    *,
    degrade: float = 0.0,
    seed: int = 0,
    k: int = 5,
    held_out: float = HELD_OUT,
    progress: Progress = _silent,
    model: Recommender | None = None,
) -> TrainingReport:
    """Fit on the earlier part of ``log``, evaluate model and popularity baseline on the later part."""
    progress("split by time")
    fit_part, held = log.split_by_time(held_out)
    if degrade:
        fit_part = degrade_labels(fit_part, degrade, seed)
    progress("fit model")
    fitted = (model or Recommender(k=k, random_state=seed)).fit(fit_part)
    progress("fit popularity baseline")
    baseline_model = Popularity(k=k).fit(fit_part)
    progress("evaluate")
    metrics = evaluate(fitted, held, k)
    baseline = evaluate(baseline_model, held, k)
    data = {
        **fit_part.summary(),
        "held_out": held.summary(),
        "degrade": degrade,
        "k": k,
    }
    return TrainingReport(model=fitted, metrics=metrics, baseline=baseline, data=data)


def train_version(
    settings: Settings,
    *,
    seed: int = 0,
    degrade: float = 0.0,
    data: str | Interactions | None = None,
    from_topics: bool = False,
    source: dict[str, Any] | None = None,
    registry: Registry | None = None,
    parent: str | None = None,
    progress: Progress = _silent,
) -> Manifest:
    """Train on one source of interactions and register the result; return the new version's manifest.

    The source is ``data`` (a log, or the path/URL of a ``.npz``/``.csv`` log; ``source`` describes a given
    log in the manifest) or the prediction and outcome topics joined (``from_topics``). The sandbox trains
    on its simulated world through :func:`services.sandbox.versions.train_on_world`. ``parent`` defaults to
    the newest version in the registry.
    """
    progress("read data")
    if isinstance(data, Interactions):
        log, source = data, source or {"source": "given"}
    elif data is not None:
        log, source = Interactions.load(data), {"source": "file", "path": data}
    elif from_topics:
        from services.model.feedback import interactions_from_topics

        log = interactions_from_topics(settings)
        source = {"source": "topics", "topics": [settings.topic("predictions"), settings.topic("outcomes")]}
    else:
        raise ModelError("no training data: give an interaction log or train from the topics")
    report = train(log, degrade=degrade, seed=seed, k=settings.serve.default_k, progress=progress)
    progress("register")
    store = registry or Registry.from_settings(settings)
    if parent is None:
        latest = store.latest()
        parent = latest.version if latest else None
    return store.register(
        report.model,
        metrics=report.metrics,
        data_summary={**source, **report.data},
        parent=parent,
        baseline=report.baseline,
    )

"""Registering a model of one's own: check it against the protocol, evaluate it, store it as a version.

The Python API behind ``modelwatch models register FILE [--evaluate DATA]``::

    from services.config import load_settings
    from services.model.registration import register_model

    manifest = register_model(load_settings(), "shop_knn.joblib", evaluate="shop-log.npz")
    print(manifest.version)

``model`` is a joblib file the user wrote (their own artifact: unpickling it is theirs to trust), or the
model object itself. Before anything is stored, the model scores a few generated requests through the
very check the prediction service runs on every batch (:mod:`services.serving.scoring`): a model that
raises, answers with the wrong shape, or scores outside [0, 1] is refused with one line saying what is
wrong. With ``evaluate`` (an interaction log, ``.npz`` or ``.csv``, what ``train --data`` reads), the
model is scored on the log's last 20% of sessions by time, exactly as ``train`` scores its held-out part,
next to a popularity baseline fitted on the earlier 80%: the metrics become the version's baseline for the
monitor's ``below_baseline`` rules. Without it the manifest records no metrics (and ``below_baseline``
rules have nothing to compare with). Train your model on the earlier part (``log.split_by_time(0.2)``)
for these figures to be honest.
"""

from __future__ import annotations

from typing import Any

from schemas.errors import ModelError
from services.config import Settings
from services.model.evaluation import evaluate as evaluate_on
from services.model.interactions import Interactions
from services.model.popularity import Popularity
from services.model.protocol import class_name, served
from services.model.training import HELD_OUT
from services.model.user_code import read_model_file
from services.registry import Manifest, Registry
from services.serving.scoring import score

#: Candidates per generated request; some requests ask for fewer recommendations than the default.
PROBE_CANDIDATES = 12


def probe_requests(log: Interactions | None = None, n: int = 8) -> list[dict[str, Any]]:
    """Requests to try a model on: users and items of ``log`` when given (so a model sees ids it knows),
    ids it has never seen (as live traffic has), a single candidate, a ``k`` and a ``context``."""
    users = [f"probe-user-{i}" for i in range(n)]
    items = [f"probe-item-{i}" for i in range(PROBE_CANDIDATES)]
    if log is not None and len(log):
        known_users = list(dict.fromkeys(log.user_id.tolist()))[: n - 1]
        known_items = list(dict.fromkeys(log.item_id.tolist()))[: PROBE_CANDIDATES - 2]
        users = [*known_users, *users][:n]
        items = [*known_items, *items][:PROBE_CANDIDATES]
    requests: list[dict[str, Any]] = [
        {"request_id": f"probe-{i}", "user_id": user, "items": items, "ts": 0} for i, user in enumerate(users)
    ]
    requests[0]["items"] = items[:1]
    requests[1]["k"] = 2
    requests[2]["context"] = {"page": "home", "device": "mobile"}
    return requests


def check_model(model: Any, default_k: int = 5, log: Interactions | None = None) -> None:
    """Raise :class:`ModelError` with one line naming what is wrong unless ``model`` implements the
    protocol (:mod:`services.model.protocol`) on a few generated requests."""
    scorer = served(model)  # no score_batch: refused here
    requests = probe_requests(log)
    out = score(scorer, requests, default_k)
    if out.failures:
        position, error = out.failures[0]
        raise ModelError(
            f"{class_name(model)} fails the model protocol on {len(out.failures)} of {len(requests)} "
            f"generated requests (user {requests[position]['user_id']!r}): {error.removeprefix('model: ')}"
        )


def register_model(
    settings: Settings,
    model: Any,
    *,
    evaluate: str | Interactions | None = None,
    registry: Registry | None = None,
    parent: str | None = None,
) -> Manifest:
    """Check ``model`` (a joblib file's path or URL, or the object), evaluate it on ``evaluate`` if given,
    and store it as a new immutable version; return the version's manifest (see the module docstring)."""
    source: dict[str, Any] = {"source": "registered"}
    if isinstance(model, str):
        source["path"] = model
        model = read_model_file(model, settings.model_path)
    log: Interactions | None = None
    if evaluate is not None:
        log = evaluate if isinstance(evaluate, Interactions) else Interactions.load(evaluate)
        source["evaluated_on"] = evaluate if isinstance(evaluate, str) else "given"
    k = settings.serve.default_k
    check_model(model, k, log)
    metrics: dict[str, float | None] = {}
    baseline: dict[str, float | None] = {}
    if log is not None:
        earlier, held = log.split_by_time(HELD_OUT)
        if not len(held) or not held.purchased.any():
            raise ModelError("the evaluation log's held-out part (its last 20% of sessions) has no purchases")
        metrics = evaluate_on(model, held, k)
        baseline = evaluate_on(Popularity(k=k).fit(earlier), held, k)
        source.update(held_out=held.summary(), k=k)
    store = registry or Registry.from_settings(settings)
    if parent is None:
        latest = store.latest()
        parent = latest.version if latest else None
    manifest = store.register(model, metrics=metrics, data_summary=source, parent=parent, baseline=baseline)
    return store.verify(manifest.version)

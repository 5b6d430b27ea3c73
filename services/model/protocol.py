"""The model protocol: what a model must offer to be registered, served and watched by modelwatch.

A model is any picklable object with a ``score_batch`` method; :class:`services.model.Recommender` is
one, a storefront team's own class is another, and nothing in serving treats the built-in one apart::

    class MyModel(ModelBase):
        def score_batch(self, user_ids, candidates):           # required
            return [np.full(len(items), 0.5) for items in candidates]

- ``score_batch(user_ids, candidates)``: for a batch of requests (``user_ids[r]`` and its candidate item
  ids ``candidates[r]``), one array per request with one purchase probability in [0, 1] per candidate,
  in the candidates' order. A whole batch comes in one call, so vectorize over it.
- ``score_batch(user_ids, candidates, contexts)``: the same, for a model that wants each request's
  ``context`` (the request's free-form object, ``{}`` when it has none). A ``score_batch`` with a
  parameter named ``contexts`` is given them; one without is not.
- ``select(scores, ks)`` (optional): per request, the indices of the candidates to recommend, best first,
  at most ``ks[r]`` of them. Without it (or with :class:`ModelBase`'s), the default is the top ``k``
  by score, ties to the earlier candidate, keeping only those scoring at least the model's ``threshold_``
  when it has one that is not ``None`` (scikit-learn's convention for a fitted attribute).

The service checks every answer before publishing it: as many score arrays as requests, one number per
candidate, every score in [0, 1] and not NaN, every selected index a distinct candidate and at most k.
A batch that fails the check (or raises) is bisected, and each request it still fails on alone is
dead-lettered as a model failure with the reason (``model: score_batch returned a score outside [0, 1]``);
the replica serves on. ``modelwatch models register`` runs the same check on generated requests before
storing a version (:func:`services.model.registration.register_model`).

A model is unpickled by the replicas, so its class must be importable there: see ``model_path`` in
:mod:`services.config`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from schemas.errors import ModelError
from services.model import ranking

#: The parameter name by which ``score_batch`` asks for the requests' contexts.
CONTEXTS = "contexts"


@runtime_checkable
class Model(Protocol):
    """The one required method (``select`` is optional; ``contexts`` is an optional third parameter)."""

    def score_batch(self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> Sequence[Any]: ...


def default_select(
    scores: Sequence[np.ndarray], ks: Sequence[int], threshold: float | None = None
) -> list[np.ndarray]:
    """The default selection: per request the top ``k`` candidates by score, best first (ties to the
    earlier candidate), keeping only those scoring at least ``threshold`` when it is not ``None``."""
    return ranking.select(scores, ks, threshold)


class ModelBase:
    """A base class giving a model the default :meth:`select`; set ``threshold_`` to cut low scores."""

    #: Scores below this are never recommended (``None``: plain top k).
    threshold_: float | None = None

    def score_batch(self, user_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> Sequence[Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement score_batch")

    def select(self, scores: Sequence[np.ndarray], ks: Sequence[int]) -> list[np.ndarray]:
        """Top k per request, at or above ``threshold_`` when set (see :func:`default_select`)."""
        return default_select(scores, ks, self.threshold_)


def takes_contexts(score_batch: Any) -> bool:
    """Whether a ``score_batch`` method has a ``contexts`` parameter (or takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(score_batch).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: called the plain way
        return False
    return any(p.name == CONTEXTS or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def class_name(model: Any) -> str:
    """``module.Class`` of a model: what a manifest records and what a replica must import."""
    kind = type(model)
    return f"{kind.__module__}.{kind.__qualname__}"


@dataclass(frozen=True)
class Served:
    """A model as the service calls it: contexts passed when it wants them, the default select otherwise.

    Made once per loaded version (:func:`served`), so nothing is inspected per batch."""

    model: Any
    wants_contexts: bool
    has_select: bool

    def score_batch(
        self,
        user_ids: Sequence[str],
        candidates: Sequence[Sequence[str]],
        contexts: Sequence[Mapping[str, Any]] | None = None,
    ) -> Sequence[Any]:
        if self.wants_contexts:
            given = contexts if contexts is not None else [{}] * len(user_ids)
            return self.model.score_batch(user_ids, candidates, **{CONTEXTS: given})
        return self.model.score_batch(user_ids, candidates)

    def select(self, scores: Sequence[np.ndarray], ks: Sequence[int]) -> Sequence[Any]:
        if self.has_select:
            return self.model.select(scores, ks)
        return default_select(scores, ks, getattr(self.model, "threshold_", None))


#: Whether each model class's ``score_batch`` takes contexts: inspecting a signature costs tens of
#: microseconds, so once per class rather than once per batch.
_TAKES_CONTEXTS: dict[type, bool] = {}


def _class_takes_contexts(kind: type) -> bool:
    known = _TAKES_CONTEXTS.get(kind)
    if known is None:
        known = _TAKES_CONTEXTS[kind] = takes_contexts(kind.score_batch)  # type: ignore[attr-defined]
    return known


def served(model: Any) -> Served:
    """Wrap ``model`` for serving; :class:`ModelError` naming what is missing if it is not a model."""
    if isinstance(model, Served):
        return model
    score_batch = getattr(model, "score_batch", None)
    if not callable(score_batch):
        raise ModelError(f"a {class_name(model)} is not a model: it has no score_batch method")
    if "score_batch" in getattr(model, "__dict__", {}):  # set on the instance: inspect that one
        wants_contexts = takes_contexts(score_batch)
    else:
        wants_contexts = _class_takes_contexts(type(model))
    return Served(model, wants_contexts, callable(getattr(model, "select", None)))


__all__ = [
    "CONTEXTS",
    "Model",
    "ModelBase",
    "Served",
    "class_name",
    "default_select",
    "served",
    "takes_contexts",
]

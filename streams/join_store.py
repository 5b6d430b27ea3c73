"""Where the join's pending requests wait: what each keeps (:func:`pending_prediction`,
:func:`pending_outcome`, :func:`pending_shadow`), the store's interface (:class:`PendingStore`) and a store in
memory (:class:`DictStore`).

A request waits in the join (:mod:`streams.join`) from its first half to its second, or until its window
closes, as one entry under its request id: a prediction's kind, event time, version, candidates,
recommended items and user, or an outcome's kind, event time and purchase; a shadow candidate's prediction
(its version, candidates and recommended items) under ``"shadow"`` in either, or alone (kind ``shadow``,
with its event time) while neither half has come. The worker's store is the ``pending`` table, written a few
records per batch (:class:`streams.pending.PendingStore`); a store also keeps the join's markers
(:mod:`streams.markers`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from streams.markers import MarkerRecord, MarkerValue


class PendingStore(Protocol):
    """Where pending requests live: a dict in tests and in the plain baseline, a Faust table in the worker."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...

    def delete(self, key: str) -> None: ...

    def __contains__(self, key: str) -> bool: ...

    def __len__(self) -> int: ...

    def items(self) -> Iterable[tuple[str, dict[str, Any]]]: ...

    def put_markers(self, bucket: int, chunk: int, value: MarkerValue) -> None: ...

    def delete_markers(self, bucket: int, chunks: list[int | None]) -> None: ...

    def marker_records(self) -> Iterable[MarkerRecord]: ...


class DictStore:
    """A :class:`PendingStore` in memory."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.markers: dict[tuple[int, int | None], MarkerValue] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(list(self.data.items()))

    def __len__(self) -> int:
        return len(self.data)

    def put_markers(self, bucket: int, chunk: int, value: MarkerValue) -> None:
        self.markers[bucket, chunk] = value

    def delete_markers(self, bucket: int, chunks: list[int | None]) -> None:
        for chunk in chunks:
            self.markers.pop((bucket, chunk), None)

    def marker_records(self) -> Iterator[MarkerRecord]:
        return iter([(b, c, v) for (b, c), v in self.markers.items()])


def pending_prediction(p: dict[str, Any]) -> dict[str, Any]:
    pending = {k: p[k] for k in ("kind", "ts", "version", "candidates", "recommended")}
    if "user" in p:
        pending["user"] = p["user"]
    return pending


def pending_shadow(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s[k] for k in ("version", "candidates", "recommended")}


def pending_outcome(o: dict[str, Any]) -> dict[str, Any]:
    return {k: o[k] for k in ("kind", "ts", "purchased")}

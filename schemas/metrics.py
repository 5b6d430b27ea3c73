"""The contract's metric semantics, defined once (the README states them in words).

Over the candidate items of a labelled request, an item is *predicted positive* when it is in
``recommended`` and *actually positive* when it is in ``purchased``. A window's accuracy, precision, recall
and F1 come from the item-level counts summed over its requests (micro-average), so they equal
scikit-learn's ``accuracy_score``, ``precision_score``, ``recall_score`` and ``f1_score`` on the
concatenated item labels. Where scikit-learn would warn of a zero division, the value is ``None``.

Training's held-out evaluation and the monitor's rolling windows both count with this module.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Counts:
    """Item-level confusion counts; they add and subtract, so windows can roll."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.tp - other.tp, self.fp - other.fp, self.fn - other.fn, self.tn - other.tn)

    @property
    def items(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def accuracy(self) -> float | None:
        return (self.tp + self.tn) / self.items if self.items else None

    def precision(self) -> float | None:
        predicted = self.tp + self.fp
        return self.tp / predicted if predicted else None

    def recall(self) -> float | None:
        actual = self.tp + self.fn
        return self.tp / actual if actual else None

    def f1(self) -> float | None:
        # sklearn: F1 = 2tp / (2tp + fp + fn); undefined only when that denominator is zero.
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else None

    def as_dict(self) -> dict[str, float | None]:
        return {
            "accuracy": self.accuracy(),
            "precision": self.precision(),
            "recall": self.recall(),
            "f1": self.f1(),
        }


def request_counts(
    candidates: Iterable[str], recommended: Collection[str], purchased: Collection[str]
) -> Counts:
    """The counts of one labelled request. Purchases outside the candidate list are not judged."""
    tp = fp = fn = tn = 0
    rec = set(recommended)
    bought = set(purchased)
    for item in candidates:
        predicted = item in rec
        actual = item in bought
        if predicted and actual:
            tp += 1
        elif predicted:
            fp += 1
        elif actual:
            fn += 1
        else:
            tn += 1
    return Counts(tp, fp, fn, tn)

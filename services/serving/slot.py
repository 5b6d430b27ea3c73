"""The model slot: how a loaded version passes from the control thread to the poll loop.

The :class:`~services.serving.control.Control` thread loads and verifies a version (from a
:class:`ModelSource`, off the hot path) and offers it, as an :class:`Activation`, to its model's
:class:`ModelSlot`; the poll loop swaps it in between two batches and only then acknowledges, so every
prediction is tagged with the version that computed it. The control thread waits on the slot until the
swap (or a stop), so it never offers a second version over one not yet swapped in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

from services.model.protocol import Served
from services.serving.experiment import Trial


class ModelSource(Protocol):
    """Where versions come from (:class:`services.registry.Registry`): verified before unpickled."""

    def load(self, version: str) -> Any: ...


@dataclass(frozen=True)
class Activation:
    """A loaded, verified version, the experiment running beside it (if any), and the command that
    ordered it."""

    version: str
    model: Served
    command: dict[str, Any]
    trial: Trial | None = None


class ModelSlot:
    """The hand-over between the control thread (offers) and the poll loop (swaps between batches)."""

    def __init__(self) -> None:
        self.active: Activation | None = None
        self.pending: Activation | None = None
        self._changed = threading.Condition()

    def offer(self, activation: Activation, stop: threading.Event, idle: Any = None) -> bool:
        """Hand ``activation`` to the poll loop and wait until it is swapped in (or ``stop``)."""
        with self._changed:
            self.pending = activation
            self._changed.notify_all()
            while self.pending is activation and not stop.is_set():
                self._changed.wait(0.1)
                if idle is not None:
                    idle()
            return self.pending is not activation

    def swap(self) -> Activation:
        """Poll loop only, between batches: make the pending version the active one."""
        with self._changed:
            activation = self.pending
            assert activation is not None, "swap() with nothing pending"
            self.active, self.pending = activation, None
            self._changed.notify_all()
            return activation

    def wait_offered(self, timeout: float) -> bool:
        with self._changed:
            if self.pending is None:
                self._changed.wait(timeout)
            return self.pending is not None

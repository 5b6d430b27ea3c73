"""A serving process tunes its cyclic GC: what is loaded is frozen, the youngest generation collected less
often (and a replica run in-process leaves its host's GC alone)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.config import load_settings
from services.serving.process import GC_GEN0_THRESHOLD, tune_gc_for_serving
from services.serving.service import Service


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_tuning_freezes_what_is_loaded_and_raises_the_youngest_threshold() -> None:
    _, middle, oldest = gc.get_threshold()
    tune_gc_for_serving()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, middle, oldest)


def test_only_a_replica_that_is_its_own_process_tunes_the_gc() -> None:
    settings = load_settings()
    assert Service(settings, instance="in-process", registry=object()).own_process is False  # type: ignore[arg-type]

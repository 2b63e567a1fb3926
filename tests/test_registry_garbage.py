"""Registry calls clean up after MLflow's store: ``service.deadline.Bounded`` ends each with
``service.settings.RegistryGarbage``, which frees the reference cycles a call leaves (DESIGN.md, "Garbage
collection")."""

from __future__ import annotations

import gc
import weakref

import pytest

from service.deadline import Bounded
from service.settings import RegistryGarbage


class _Node:
    other: _Node


def _garbage_cycle() -> weakref.ref:
    """Two objects that only refer to each other: freed by a full collection, never by reference counts."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def collector_paused():
    """No automatic collection while the test runs, and nothing left frozen after it."""
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()


def test_the_first_call_collects_and_freezes_then_every_nth_collects(collector_paused):
    tidy = RegistryGarbage(calls=3)
    frozen = gc.get_freeze_count()
    cycle = _garbage_cycle()
    tidy()
    assert cycle() is None  # collected
    assert gc.get_freeze_count() > frozen  # and what the first call loaded is frozen
    cycle = _garbage_cycle()
    tidy()
    tidy()
    assert cycle() is not None  # two calls since the last collection: not yet
    tidy()
    assert cycle() is None


class _Store:
    def read(self) -> str:
        return "answer"

    def broken(self) -> None:
        raise LookupError("no such version")


def test_every_bounded_registry_call_ends_with_the_hook_whatever_it_returns():
    calls = []
    registry = Bounded(_Store(), seconds=5, after=lambda: calls.append(1))
    assert registry.read() == "answer"
    with pytest.raises(LookupError):
        registry.broken()
    assert len(calls) == 2

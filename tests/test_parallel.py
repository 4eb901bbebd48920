"""The keyframe worker pool: order, equal results for any worker count, errors, thread caps."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from vid2scene import parallel


def test_map_ordered_keeps_the_order_and_uses_several_threads():
    seen = set()

    def f(i):
        seen.add(threading.get_ident())
        x = np.random.default_rng(i).random((200, 200), np.float32)
        return i, float(cv2.GaussianBlur(x, (5, 5), 0).sum())

    one = list(parallel.map_ordered(f, range(40), workers=1))
    seen.clear()
    three = list(parallel.map_ordered(f, range(40), workers=3))
    assert [i for i, _ in three] == list(range(40))
    assert one == three
    assert len(seen) >= 2


def test_map_ordered_reraises_at_the_failing_item():
    def f(i):
        if i == 5:
            raise KeyError("item 5")
        return i

    got = []
    with pytest.raises(KeyError):
        for r in parallel.map_ordered(f, range(10), workers=2):
            got.append(r)
    assert got == [0, 1, 2, 3, 4]


def test_native_threads_caps_and_restores_opencv():
    before = cv2.getNumThreads()
    with parallel.native_threads(1):
        assert cv2.getNumThreads() == 1
    assert cv2.getNumThreads() == before


def test_worker_count_from_argument_environment_and_items(monkeypatch):
    monkeypatch.setenv(parallel.ENV_WORKERS, "3")
    assert parallel.worker_count() == 3
    assert parallel.worker_count(5) == 5
    assert parallel.worker_count(None, n_items=2) == 2
    assert parallel.worker_count(None, n_items=0) == 1
    monkeypatch.delenv(parallel.ENV_WORKERS)
    assert parallel.worker_count() == parallel.available_cores()
    monkeypatch.setenv(parallel.ENV_WORKERS, "two")
    with pytest.raises(ValueError):
        parallel.worker_count()

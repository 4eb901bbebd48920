"""The keyframe worker pool: order, equal results for any worker count, errors, thread caps."""

from __future__ import annotations

import os
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


def test_native_threads_blocks_overlapping_in_two_threads_restore_only_when_the_last_closes():
    """A pool's block in a background stage (detect) and one in the foreground stage (depth) open and close in
    any order; the old code restored the first block's saved counts when it closed while the other still ran,
    and the second block's (capped) counts when that one closed, leaving the process capped for good."""
    import threading

    threadpoolctl = pytest.importorskip("threadpoolctl")

    def pools():
        return sorted((p["internal_api"], p["num_threads"]) for p in threadpoolctl.threadpool_info())

    original = cv2.getNumThreads()
    cv2.setNumThreads(2)
    before_cv, before_pools = cv2.getNumThreads(), pools()
    a_open, b_open, a_closed = threading.Event(), threading.Event(), threading.Event()

    def first():
        with parallel.native_threads(1):
            a_open.set()
            b_open.wait(10)
        a_closed.set()

    t = threading.Thread(target=first)
    t.start()
    a_open.wait(10)
    with parallel.native_threads(1):
        b_open.set()
        a_closed.wait(10)
        assert cv2.getNumThreads() == 1  # the first block closed; this one still holds the cap
        assert all(n == 1 for _, n in pools())
    t.join()
    assert cv2.getNumThreads() == before_cv
    assert pools() == before_pools
    cv2.setNumThreads(original)


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


def _blas_threads_now() -> list[int]:
    from threadpoolctl import threadpool_info

    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_blas_threads_caps_numpys_blas_and_restores_it(monkeypatch):
    pytest.importorskip("threadpoolctl")
    from vid2scene.parallel import blas_threads

    before = _blas_threads_now()
    if not before:
        pytest.skip("NumPy's BLAS is not visible to threadpoolctl")
    monkeypatch.delenv("VID2SCENE_BLAS_THREADS", raising=False)
    with blas_threads():
        assert set(_blas_threads_now()) == {1}
    assert _blas_threads_now() == before
    monkeypatch.setenv("VID2SCENE_BLAS_THREADS", "2")
    with blas_threads():
        assert set(_blas_threads_now()) == {min(2, max(before))} or max(before) < 2


def test_the_pipeline_runs_each_stage_with_one_blas_thread(tmp_path, monkeypatch):
    pytest.importorskip("threadpoolctl")
    if not _blas_threads_now():
        pytest.skip("NumPy's BLAS is not visible to threadpoolctl")
    from vid2scene import pipeline
    from vid2scene.config import load_config
    from vid2scene.scene import Scene
    from vid2scene.stage import StageResult

    from types import SimpleNamespace

    seen = []
    fake = SimpleNamespace(OUTPUTS=[], run=lambda sc, cfg: seen.append(_blas_threads_now()) or StageResult())
    real = pipeline.stage_module
    monkeypatch.setattr(pipeline, "stage_module", lambda name: fake if name == "ingest" else real(name))
    monkeypatch.delenv("VID2SCENE_BLAS_THREADS", raising=False)
    scene = Scene.create(tmp_path / "s", {"path": str(tmp_path / "in.mp4"), "kind": "video", "sha256": "0" * 64,
                                          "size_bytes": 1})
    pipeline.run_stage(scene, "ingest", load_config())
    assert seen and set(seen[0]) == {1}
    assert _blas_threads_now() != [1] * len(seen[0]) or os.cpu_count() == 1

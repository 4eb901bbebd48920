"""A worker pool over keyframes for the per-view steps of the stages (depth, detect), with the native libraries'
thread counts capped so that the workers do not oversubscribe the cores.

The per-view work of the CPU stages is OpenCV and NumPy on arrays of 10⁴–10⁵ elements: both release the GIL
inside their kernels, so a *thread* pool uses several cores without copying the views into other processes
(and without forking a process that may hold OpenMP or torch thread pools). Every worker runs with the native
libraries limited to ``cores // workers`` threads each (OpenCV ``cv2.setNumThreads``, torch
``set_num_threads`` when torch is already imported, and the BLAS / OpenMP pools through ``threadpoolctl``
when it is installed): OpenCV's own pool of ``cores`` threads per call on top of two workers would run
``2 × cores`` threads on ``cores`` cores.

The number of workers is ``workers`` when given, else the ``VID2SCENE_WORKERS`` environment variable, else the
number of cores this process may run on (``os.sched_getaffinity``). One worker runs the items in the calling
thread, in order, with no pool.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

ENV_WORKERS = "VID2SCENE_WORKERS"

__all__ = ["ENV_WORKERS", "BLAS_THREADS_ENV", "available_cores", "worker_count", "native_threads", "blas_threads",
           "map_ordered"]


def available_cores() -> int:
    """Cores this process may run on (``os.sched_getaffinity`` where the OS has it, else ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_count(workers: int | None = None, n_items: int | None = None) -> int:
    """Workers to use: ``workers`` if given and > 0, else ``$VID2SCENE_WORKERS``, else :func:`available_cores`;
    never more than ``n_items`` (when given), at least 1.

    Raises:
        ValueError: ``$VID2SCENE_WORKERS`` is set but is not an integer.
    """
    if workers is None or workers <= 0:
        env = os.environ.get(ENV_WORKERS, "").strip()
        if env:
            try:
                workers = int(env)
            except ValueError as e:
                raise ValueError(f"{ENV_WORKERS} must be an integer, got {env!r}") from e
        if workers is None or workers <= 0:
            workers = available_cores()
    if n_items is not None:
        workers = min(workers, max(n_items, 1))
    return max(1, int(workers))


_caps_lock = threading.Lock()
_caps: list[int] = []  # the caps of the native_threads blocks open now, in any thread
_saved: dict = {}  # the settings before the first of them, restored when the last one closes


def _apply_cap(n: int, pools: bool = True) -> None:
    import cv2

    cv2.setNumThreads(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    if pools and _saved.get("pools") is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)  # the first block's limiter restores the original counts


@contextlib.contextmanager
def native_threads(n: int) -> Iterator[None]:
    """Limit OpenCV, torch (if imported) and the BLAS / OpenMP pools (via ``threadpoolctl`` if installed) to
    ``n`` threads each inside the block; the previous settings are restored on exit. Process-wide: every
    thread of the process sees the cap while the block runs.

    Blocks may overlap in different threads without nesting (a stage's pool beside another stage's pool in a
    background thread): while any block is open the smallest open cap applies, and the settings from before
    the first block are restored only when the last one closes, whatever the order.
    """
    import cv2

    n = max(1, int(n))
    with _caps_lock:
        if not _caps:
            torch = sys.modules.get("torch")
            _saved.clear()
            _saved.update(cv=cv2.getNumThreads(), torch=torch.get_num_threads() if torch is not None else None,
                          pools=None)
            try:
                from threadpoolctl import threadpool_limits

                _saved["pools"] = threadpool_limits(limits=n)  # applied now; restored by the last block
            except ImportError:  # optional: without it BLAS keeps its own count (the per-view steps use little BLAS)
                pass
        _caps.append(n)
        _apply_cap(min(_caps), pools=len(_caps) > 1)
    try:
        yield
    finally:
        with _caps_lock:
            _caps.remove(n)
            if _caps:
                _apply_cap(min(_caps))
            else:
                cv2.setNumThreads(_saved["cv"])
                torch = sys.modules.get("torch")
                if torch is not None and _saved["torch"] is not None:
                    torch.set_num_threads(_saved["torch"])
                if _saved["pools"] is not None:
                    _saved["pools"].restore_original_limits()
                _saved.clear()


#: Environment variable: BLAS threads while a stage runs (default 1; see :func:`blas_threads`).
BLAS_THREADS_ENV = "VID2SCENE_BLAS_THREADS"


@contextlib.contextmanager
def blas_threads(n: int | None = None) -> Iterator[None]:
    """Limit NumPy's BLAS pool (OpenBLAS / MKL, via ``threadpoolctl``) to ``n`` threads inside the block.

    ``n`` None: ``$VID2SCENE_BLAS_THREADS``, else 1. The pipeline runs every stage inside this block. Our
    NumPy products are tall-and-thin (``N×3 @ 3×3`` point transforms, ``N×2 @ 2×2`` projections), where a
    multi-threaded OpenBLAS only adds hand-off and spin-waiting: on the 2-core machine, with the stage's own
    threads (Open3D, OpenCV, pools) running, ``300k×3 @ 3×3`` took 108 ms with 2 BLAS threads against 6.4 ms
    with one, and the HoloLens walk's ``instances`` stage 45–49 s against 17–25 s. Nothing changes
    numerically. Without ``threadpoolctl`` the block does nothing.
    """
    if n is None:
        try:
            n = int(os.environ.get(BLAS_THREADS_ENV, "1"))
        except ValueError:
            n = 1
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=max(1, int(n)), user_api="blas"):
        yield


def map_ordered(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """``fn(item)`` for every item, yielded in the items' order, computed by :func:`worker_count` threads.

    With more than one worker, native libraries run with ``available_cores() // workers`` threads each
    (:func:`native_threads`) while the pool is busy, and at most ``2 × workers`` results are computed ahead of
    the consumer (memory stays bounded however many items there are). An exception raised by ``fn`` is
    re-raised here, at its item's turn.
    """
    items = list(items)
    n_workers = worker_count(workers, len(items))
    if n_workers == 1:
        for it in items:
            yield fn(it)
        return
    ahead = 2 * n_workers
    with native_threads(max(1, available_cores() // n_workers)), ThreadPoolExecutor(n_workers) as ex:
        pending = [ex.submit(fn, it) for it in items[:ahead]]
        nxt = len(pending)
        for k in range(len(items)):
            res = pending[k].result()
            pending[k] = None  # type: ignore[call-overload]
            if nxt < len(items):
                pending.append(ex.submit(fn, items[nxt]))
                nxt += 1
            yield res

"""Where build tasks run: a local process pool (default) or Ray. Both run the *same* task function.

Failure isolation is the same on both: :func:`supervise` runs one task in its own freshly spawned Python
process (``multiprocessing`` "spawn" context) and watches it. A Python exception, a crash of native code
(segfault, abort), a kill by the kernel's OOM killer, a time-out (``timeout_s``) and a resident-memory
overrun (``memory_mb``, sampled with psutil every 0.25 s over the process and its children) each end that
process only and come back as a ``failed`` result with a one-line reason; the other tasks go on.

- :class:`LocalEngine`: ``workers`` threads, each supervising one task process at a time. No server, no
  network. Each task process's native thread pools are capped at ``cpu_count // workers`` threads.
- :class:`RayEngine`: one ``ray.remote`` task per video (``num_cpus=cpus_per_task``, ``memory=memory_mb``
  reserved for scheduling) that calls :func:`supervise` on the Ray worker. A local Ray instance, or a
  cluster with ``address`` (``"auto"``, ``"ray://head:10001"``); the dataset folder must then be on a
  file system that every node sees at the same path. Ray's usage-stats reporting is switched off
  (``RAY_USAGE_STATS_ENABLED=0``) unless the caller set that variable.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Iterator

TASK_FN = "vid2scene.dataset.build:run_task"

_live_lock = threading.Lock()
_live: set = set()  # child processes started by supervise() in this process (killed on interrupt)


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _orphan_watchdog(parent_pid: int) -> None:
    """Exit at once when the supervising process is gone (killed build): never keep writing alone."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(137)


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _limit_threads(threads: int | None) -> None:
    """Cap the native thread pools (OpenMP/BLAS: torch, NumPy; OpenCV) of a task process at ``threads``, so
    that ``workers`` tasks share the cores instead of each using all of them. Variables set by the user win."""
    if not threads:
        return
    for var in THREAD_ENV:
        os.environ.setdefault(var, str(int(threads)))
    try:
        import cv2

        cv2.setNumThreads(int(os.environ["OMP_NUM_THREADS"]))
    except ImportError:
        pass


def _child_main(fn: str, task: dict, conn, log_path: str | None, parent_pid: int, threads: int | None = None) -> None:
    threading.Thread(target=_orphan_watchdog, args=(parent_pid,), daemon=True).start()
    _limit_threads(threads)
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    import resource

    msg: dict
    try:
        mod, name = fn.split(":")
        result = getattr(importlib.import_module(mod), name)(task)
        msg = {"ok": True, "result": result}
    except MemoryError:
        msg = {"ok": False, "error_type": "MemoryError", "reason": "out of memory (MemoryError)"}
    except BaseException as e:  # noqa: BLE001 - any exception is this task's failure, reported upward
        traceback.print_exc()
        msg = {"ok": False, "error_type": type(e).__name__,
               "reason": f"internal error {type(e).__name__}: {' '.join(str(e).split())[:500]}"}
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    ru_c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    msg["peak_rss_mb"] = round(max(ru, ru_c), 1)
    try:
        conn.send(msg)
    finally:
        conn.close()


def _tree_rss_mb(proc) -> float:
    import psutil

    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        return 0.0
    return total / 2**20


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def _signal_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"crashed: the task process was killed by {name}{why}"
    return f"crashed: the task process exited with code {code} without a result"


def supervise(task: dict, timeout_s: float | None = None, memory_mb: float | None = None,
              fn: str = TASK_FN, log_path: str | None = None, poll_s: float = 0.25,
              threads: int | None = None) -> dict:
    """Run ``fn(task)`` (``"module:function"``) in a new spawned process and watch it.

    ``threads``: cap of the task process's native thread pools (``OMP_NUM_THREADS`` etc., OpenCV).

    Returns ``{"status": "complete"|"failed", "reason", "error_type", "wall_s", "peak_rss_mb", "worker",
    "result"}``: ``result`` is what ``fn`` returned (a dict; its own ``status``/``reason`` win), or None
    when the process failed. ``peak_rss_mb`` is the task process's peak resident set size in MiB
    (``ru_maxrss`` when it exits normally, else the highest psutil sample). ``error_type`` is the
    exception's class name, or ``"Timeout"``, ``"OutOfMemory"``, ``"Crash"``.
    """
    import psutil

    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(fn, task, send, log_path, os.getpid(), threads),
                       name=f"vid2scene-task-{task.get('task_id', '?')}")
    t0 = time.monotonic()
    proc.start()
    send.close()
    with _live_lock:
        _live.add(proc)
    ps = psutil.Process(proc.pid)
    msg, killed, peak = None, None, 0.0
    try:
        while True:
            if recv.poll(poll_s):
                try:
                    msg = recv.recv()
                except (EOFError, OSError):
                    msg = None
                break
            if not proc.is_alive():
                break
            rss = _tree_rss_mb(ps)
            peak = max(peak, rss)
            elapsed = time.monotonic() - t0
            if memory_mb and rss > memory_mb:
                killed = ("OutOfMemory", f"out of memory: resident memory {rss:.0f} MiB exceeded the "
                                         f"{memory_mb:.0f} MiB limit per task")
            elif timeout_s and elapsed > timeout_s:
                killed = ("Timeout", f"timed out after {timeout_s:g} s")
            if killed:
                _kill_tree(proc.pid)
                break
        proc.join(timeout=10)
        if proc.is_alive():
            _kill_tree(proc.pid)
            proc.join()
    finally:
        with _live_lock:
            _live.discard(proc)
        recv.close()
    wall = round(time.monotonic() - t0, 3)
    out = {"wall_s": wall, "worker": _worker_name(), "peak_rss_mb": round(peak, 1), "result": None}
    if killed:
        out.update(status="failed", error_type=killed[0], reason=killed[1])
    elif msg is None:
        out.update(status="failed", error_type="Crash", reason=_signal_reason(proc.exitcode or 0))
    else:
        out["peak_rss_mb"] = max(out["peak_rss_mb"], msg.get("peak_rss_mb", 0.0))
        if msg["ok"]:
            res = msg["result"] or {}
            out.update(status=res.get("status", "complete"), error_type=res.get("error_type"),
                       reason=res.get("reason"), result=res)
        else:
            out.update(status="failed", error_type=msg["error_type"], reason=msg["reason"])
    return out


def kill_all() -> None:
    """Kill every task process this process is supervising (on Ctrl-C / termination)."""
    with _live_lock:
        procs = list(_live)
    for p in procs:
        if p.pid:
            _kill_tree(p.pid)


class LocalEngine:
    """A local pool: ``workers`` task processes at a time, each spawned fresh for its task."""

    name = "local"

    def __init__(self, workers: int = 1, timeout_s: float | None = None, memory_mb: float | None = None,
                 fn: str = TASK_FN):
        self.workers = max(1, int(workers))
        self.timeout_s, self.memory_mb, self.fn = timeout_s, memory_mb, fn
        self.threads = max(1, (os.cpu_count() or 1) // self.workers)
        self._running = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        return self._running

    def _one(self, task: dict) -> dict:
        with self._lock:
            self._running += 1
        try:
            return supervise(task, self.timeout_s, self.memory_mb, self.fn, task.get("log_path"),
                             threads=self.threads)
        finally:
            with self._lock:
                self._running -= 1

    def run(self, tasks: list[dict], heartbeat_s: float = 1.0) -> Iterator[tuple[dict | None, dict | None]]:
        """Yield ``(task, result)`` as tasks finish, and ``(None, None)`` every ``heartbeat_s`` meanwhile."""
        ex = ThreadPoolExecutor(self.workers, thread_name_prefix="vid2scene-build")
        futs = {ex.submit(self._one, t): t for t in tasks}
        try:
            pending = set(futs)
            while pending:
                done, pending = wait(pending, timeout=heartbeat_s, return_when=FIRST_COMPLETED)
                for f in done:
                    yield futs[f], f.result()
                if not done:
                    yield None, None
        finally:
            for f in futs:
                f.cancel()
            kill_all()
            ex.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        pass


def _ray_task(task: dict, timeout_s, memory_mb, fn: str, threads: int) -> dict:
    return supervise(task, timeout_s, memory_mb, fn, task.get("log_path"), threads=threads)


class RayEngine:
    """Run tasks as Ray tasks (one per video) on a local Ray instance or a cluster.

    ``workers``: CPUs of the local instance started when ``address`` is None (tasks at a time =
    ``workers // cpus_per_task``); ignored with ``address``. ``memory_mb`` is both Ray's memory request
    (scheduling) and :func:`supervise`'s resident-memory limit.

    Raises:
        BackendNotInstalled: Ray is not installed (``pip install 'vid2scene[ray]'``).
    """

    name = "ray"

    def __init__(self, workers: int = 1, address: str | None = None, timeout_s: float | None = None,
                 memory_mb: float | None = None, cpus_per_task: float = 1.0, fn: str = TASK_FN):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            import ray
        except ImportError as e:
            from ..errors import BackendNotInstalled

            raise BackendNotInstalled("--engine ray needs Ray: pip install 'vid2scene[ray]'") from e
        self.ray = ray
        self.timeout_s, self.memory_mb, self.fn = timeout_s, memory_mb, fn
        self.cpus_per_task = cpus_per_task
        env = {"RAY_USAGE_STATS_ENABLED": os.environ["RAY_USAGE_STATS_ENABLED"]}
        if os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        self._owns = not ray.is_initialized()
        if self._owns:
            if address:
                ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": env})
            else:
                ray.init(num_cpus=max(1, int(workers)), include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": env})
        cpus = ray.cluster_resources().get("CPU", 1.0)
        self.capacity = max(1, int(cpus // max(cpus_per_task, 1e-6)))
        opts = {"num_cpus": cpus_per_task, "max_retries": 0}
        if memory_mb:
            opts["memory"] = int(memory_mb * 2**20)
        self._remote = ray.remote(_ray_task).options(**opts)
        self._pending = 0

    @property
    def running(self) -> int:
        return min(self._pending, self.capacity)

    def run(self, tasks: list[dict], heartbeat_s: float = 1.0) -> Iterator[tuple[dict | None, dict | None]]:
        """Yield ``(task, result)`` as tasks finish, and ``(None, None)`` every ``heartbeat_s`` meanwhile."""
        ray = self.ray
        refs = {self._remote.remote(t, self.timeout_s, self.memory_mb, self.fn,
                                       max(1, int(self.cpus_per_task))): t for t in tasks}
        pending = list(refs)
        self._pending = len(pending)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=heartbeat_s)
                self._pending = len(pending)
                for r in done:
                    try:
                        res = ray.get(r)
                    except ray.exceptions.RayError as e:  # the Ray worker died (OOM monitor, node lost, ...)
                        first = " ".join(str(e).split())[:300]
                        res = {"status": "failed", "error_type": type(e).__name__, "reason": f"ray: {first}",
                               "wall_s": None, "peak_rss_mb": None, "worker": None, "result": None}
                    yield refs[r], res
                if not done:
                    yield None, None
        finally:
            for r in pending:
                try:
                    ray.cancel(r, force=True)
                except Exception:  # noqa: BLE001 - best effort on shutdown
                    pass

    def close(self) -> None:
        if self._owns:
            self.ray.shutdown()


def make_engine(engine: str, workers: int = 1, address: str | None = None, timeout_s: float | None = None,
                memory_mb: float | None = None, cpus_per_task: float = 1.0, fn: str = TASK_FN):
    """``"local"`` -> :class:`LocalEngine`, ``"ray"`` -> :class:`RayEngine`.

    Raises:
        InputError: another engine name, or ``--address`` with the local engine.
    """
    from ..errors import InputError

    if engine == "local":
        if address:
            raise InputError("--address is for --engine ray")
        return LocalEngine(workers, timeout_s, memory_mb, fn)
    if engine == "ray":
        return RayEngine(workers, address, timeout_s, memory_mb, cpus_per_task, fn)
    raise InputError(f"unknown engine '{engine}'; choose local or ray")

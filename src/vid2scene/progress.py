"""Rich progress bars shared by all stages; silent when disabled (tests, Ray workers, ``--quiet``)."""

from __future__ import annotations

import contextlib
import threading
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

T = TypeVar("T")

console = Console(stderr=True)
_enabled = True
_local = threading.local()


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled and not getattr(_local, "quiet", False)


@contextlib.contextmanager
def quiet_in_this_thread() -> Iterator[None]:
    """No bars from the calling thread inside the block (a stage run beside another: rich shows one live
    display at a time); other threads keep theirs."""
    before = getattr(_local, "quiet", False)
    _local.quiet = True
    try:
        yield
    finally:
        _local.quiet = before


class _Bar:
    def __init__(self, progress: Progress | None, task_id):
        self._p, self._t = progress, task_id

    def advance(self, n: float = 1) -> None:
        if self._p is not None:
            self._p.advance(self._t, n)

    def update(self, completed: float | None = None, total: float | None = None, description: str | None = None):
        if self._p is not None:
            kw = {k: v for k, v in (("completed", completed), ("total", total), ("description", description))
                  if v is not None}
            self._p.update(self._t, **kw)


@contextlib.contextmanager
def bar(description: str, total: float | None = None) -> Iterator[_Bar]:
    """A progress bar for one step; ``total=None`` shows a spinner with a count."""
    if not enabled():
        yield _Bar(None, None)
        return
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as p:
        yield _Bar(p, p.add_task(description, total=total))


def track(items: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(description, total) as b:
        for item in items:
            yield item
            b.advance()


GLOG_INFO_LINE = __import__("re").compile(rb"^I\d{8} [\d:.]+ +\d+ [\w.]+:\d+\] ")


@contextlib.contextmanager
def quiet_native_info_logs() -> Iterator[None]:
    """Drop native glog INFO lines (``I20261201 12:00:25.1 123 file.cc:46] ...``) written to the process's
    stderr file descriptor inside the block; everything else written there (warnings, errors, Python output) is
    passed on unchanged when the block ends. For native calls that log at INFO level whatever
    ``pycolmap.logging.minloglevel`` says (pycolmap's ``bundle_adjustment`` heading and timer lines)."""
    import os
    import sys
    import tempfile

    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr is not a real file (captured): nothing to filter
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().splitlines(keepends=True) if not GLOG_INFO_LINE.match(line)]
            if kept:
                os.write(fd, b"".join(kept))

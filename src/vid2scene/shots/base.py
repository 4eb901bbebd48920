"""What the shot-detection backends share: the backend protocol and conversions between cut lists,
per-frame transition flags and shot spans.

All indices here are *kept-frame* indices: positions in the list of frames that ``ingest`` kept
(``Scene.frame_index()``), not source frame numbers. The stage maps them to source frames.
"""

from __future__ import annotations

from typing import ClassVar, Iterable, Protocol

import numpy as np

from ..stage import Backend


class ShotBackend(Backend, Protocol):
    """A shot detector (:class:`vid2scene.stage.Backend`): constructed as ``cls(options)`` with its own
    ``Options`` model; stateless between ``detect`` calls. ``threshold`` is its decision threshold, recorded
    in ``shots.json``."""

    name: ClassVar[str]
    threshold: float

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        """``(True, "installed")`` or ``(False, "not installed: pip install …")``. Must be cheap: no model
        loading and no heavy imports."""
        ...

    def warnings(self, fps: float) -> list[str]:
        """Warnings about the input for this detector (e.g. a kept-frame rate it was not trained for)."""
        ...

    def detect(self, frames_iter: Iterable[np.ndarray], n_frames: int, fps: float) -> np.ndarray:
        """Split ``n_frames`` frames into shots.

        Args:
            frames_iter: the kept frames in decode order, each ``H×W×3`` uint8 RGB (consumed once).
            n_frames: how many frames ``frames_iter`` yields.
            fps: rate of the kept frames (frames per second of video time).

        Returns:
            ``n_shots×2`` int64 array of inclusive ``[first, last]`` kept-frame indices, sorted and
            non-overlapping. Cut-based detectors return spans that tile ``[0, n_frames)``; detectors that
            flag transition frames (fades, dissolves) leave those frames out of every shot. The cut indices
            (where a new shot starts) are ``spans[1:, 0]`` (:func:`spans_to_cuts`).
        """
        ...


def cuts_to_spans(cuts: Iterable[int], n_frames: int) -> np.ndarray:
    """Shot spans from cut indices (the kept-frame index where each new shot starts).

    Cuts outside ``1..n_frames-1`` and duplicates are ignored. Returns ``n_shots×2`` int64 inclusive spans
    that tile ``[0, n_frames)``; ``0×2`` when ``n_frames == 0``.
    """
    if n_frames <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    c = sorted({int(x) for x in cuts if 0 < int(x) < n_frames})
    starts = np.asarray([0, *c], dtype=np.int64)
    ends = np.asarray([*(x - 1 for x in c), n_frames - 1], dtype=np.int64)
    return np.stack([starts, ends], axis=1)


def spans_to_cuts(spans: np.ndarray) -> np.ndarray:
    """Cut indices (int64, 1-D): the first kept frame of every shot but the first."""
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    return spans[1:, 0].copy()


def transitions_to_spans(is_transition: np.ndarray) -> np.ndarray:
    """Shot spans from per-frame transition flags: every maximal run of non-transition frames is a shot.

    This is TransNetV2's ``predictions_to_scenes`` (Souček & Lokoč 2020) with one deliberate difference:
    the upstream function ends a shot *on* the first transition frame (``[start, i]``), so a hard cut's
    flagged frame is counted in the shot before it; here transition frames belong to no shot. Like
    upstream, if every frame is a transition the whole input is returned as one shot.

    Args:
        is_transition: ``(n,)`` bool, True where a frame is part of a transition.

    Returns:
        ``n_shots×2`` int64 inclusive kept-frame spans.
    """
    t = np.asarray(is_transition, dtype=bool).reshape(-1)
    n = len(t)
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if t.all():
        return np.asarray([[0, n - 1]], dtype=np.int64)
    inside = np.concatenate([[False], ~t, [False]]).astype(np.int8)
    d = np.diff(inside)
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1) - 1
    return np.stack([starts, ends], axis=1).astype(np.int64)

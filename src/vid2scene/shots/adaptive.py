"""Shot detection with PySceneDetect's ``AdaptiveDetector`` (Castellano, PySceneDetect,
https://www.scenedetect.com), fed the frames ``ingest`` kept instead of re-reading the video.

``AdaptiveDetector`` scores each frame by its mean HSV difference to the previous frame (ContentDetector's
``content_val``) and cuts where that score exceeds ``adaptive_threshold`` times the average score of the
``window_width`` frames on either side (and ``min_content_val``). It finds hard cuts; fades and slow
dissolves mostly pass unnoticed, or give a cut somewhere inside them.

Frames are shrunk to ~256 px wide first, like ``SceneManager``'s automatic downscaling
(``compute_downscale_factor``, linear interpolation), and converted to BGR, which scenedetect expects.
All frame counts (``min_scene_len``, ``window_width``) are in *kept* frames.
"""

from __future__ import annotations

import importlib.util
from typing import Iterable

import numpy as np
from pydantic import Field

from .. import progress, stage
from .base import cuts_to_spans

INSTALL_HINT = "not installed: pip install scenedetect opencv-python"
DOWNSCALE_WIDTH = 256  # scenedetect.scene_manager.DEFAULT_MIN_WIDTH


class AdaptiveBackend:
    """PySceneDetect ``AdaptiveDetector`` on the kept frames; returns contiguous shots split at its cuts."""

    name = "adaptive"

    class Options(stage.Options):
        adaptive_threshold: float = Field(3.0, gt=0, description="score / rolling-average ratio for a cut")
        min_scene_len: int = Field(5, ge=1, description="at least this many kept frames between cuts")
        window_width: int = Field(2, ge=1, description="kept frames on either side in the rolling average")
        min_content_val: float = Field(15.0, ge=0, description="a cut needs at least this content score")

    def __init__(self, options: "AdaptiveBackend.Options | None" = None):
        options = options or self.Options()
        self.adaptive_threshold = float(options.adaptive_threshold)
        self.min_scene_len = int(options.min_scene_len)
        self.window_width = int(options.window_width)
        self.min_content_val = float(options.min_content_val)

    @property
    def threshold(self) -> float:
        """The decision threshold recorded in ``shots.json``."""
        return self.adaptive_threshold

    def warnings(self, fps: float) -> list[str]:
        """Warnings about the input for this detector (none: it compares neighbouring frames only)."""
        return []

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        for mod in ("scenedetect", "cv2"):
            if importlib.util.find_spec(mod) is None:
                return False, INSTALL_HINT
        return True, "installed"

    def detect(self, frames_iter: Iterable[np.ndarray], n_frames: int, fps: float) -> np.ndarray:
        """Shot spans (``n_shots×2`` int64, inclusive kept-frame indices, tiling ``[0, n_frames)``).

        Args:
            frames_iter: ``n_frames`` frames, ``H×W×3`` uint8 RGB.
            n_frames: their number.
            fps: rate of the kept frames (only used to build scenedetect's ``FrameTimecode``s).
        """
        import cv2
        from scenedetect import AdaptiveDetector, FrameTimecode

        det = AdaptiveDetector(adaptive_threshold=self.adaptive_threshold, min_scene_len=self.min_scene_len,
                               window_width=self.window_width, min_content_val=self.min_content_val)
        rate = float(fps) if fps and fps > 0 else 10.0
        cuts: list[int] = []
        tc = None
        with progress.bar("shots: adaptive", total=n_frames) as bar:
            for i, rgb in enumerate(frames_iter):
                h, w = rgb.shape[:2]
                if w > DOWNSCALE_WIDTH:
                    s = DOWNSCALE_WIDTH / w
                    rgb = cv2.resize(rgb, (DOWNSCALE_WIDTH, max(1, int(round(h * s)))),
                                     interpolation=cv2.INTER_LINEAR)
                bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
                tc = FrameTimecode(i, fps=rate)
                cuts += [int(c.frame_num) for c in det.process_frame(tc, bgr)]
                bar.advance()
        if tc is not None:
            cuts += [int(c.frame_num) for c in det.post_process(tc)]
        return cuts_to_spans(cuts, n_frames)

"""Task functions for the supervisor tests (imported by name in spawned task processes), and clip makers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np


def dispatch(task: dict) -> dict:
    """Misbehave as ``task["do"]`` says: ok, raise, segfault, sleep, hog (allocate ~40 MiB every 20 ms)."""
    do = task["do"]
    if do == "ok":
        return {"status": "complete", "pid": os.getpid()}
    if do == "raise":
        raise ValueError("bad value in task")
    if do == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if do == "sleep":
        time.sleep(60)
    if do == "hog":
        keep = []
        for _ in range(200):
            keep.append(np.ones(40 * 2**20, np.uint8))
            time.sleep(0.02)
    raise AssertionError(f"unknown action {do}")


def moving_clip(path: Path, n: int = 40, w: int = 320, h: int = 240, step: int = 9, seed: int = 0) -> Path:
    """A camera panning across a random texture: a ``w×h`` window sliding ``step`` px per frame, 10 fps."""
    from tests.synth import encode_clip, random_texture

    big = random_texture(h + 20, w + n * step + 20, seed)
    return encode_clip(path, [big[10:10 + h, i * step: i * step + w] for i in range(n)])


def two_shot_clip(path: Path, n: int = 30, w: int = 320, h: int = 240, step: int = 4) -> Path:
    """Two slow pans over two different-looking smooth textures with a hard cut between them (a "tour" of
    two rooms): frames ``0..n-1`` and ``n..2n-1``."""
    import cv2

    from tests.synth import encode_clip

    frames = []
    for seed, tint in ((1, (1.0, 0.9, 0.7)), (2, (0.3, 0.6, 1.0))):
        rng = np.random.default_rng(seed)
        big = cv2.GaussianBlur(rng.integers(0, 256, (h + 20, w + n * step + 20, 3), dtype=np.uint8), (0, 0), 3)
        big = cv2.normalize(big, None, 0, 255, cv2.NORM_MINMAX).astype(np.float32) * np.float32(tint)
        big = big.astype(np.uint8)
        frames += [big[10:10 + h, i * step: i * step + w] for i in range(n)]
    return encode_clip(path, frames)

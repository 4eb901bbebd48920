"""``instances``: a synthetic furnished room with six known objects (tests/fixtures/objects.py; mesh, depth and
cameras in an SfM frame that a known rigid ``world_from_sfm`` maps to the world), 30 ray-cast views with exact
depth, and detector boxes made from the objects' visible pixels plus noise (3 % jitter), misses
(10 %), chair→couch mislabels (10 %) and one random false positive per view. The chair stands in front of the
table (occluding it in many views); the cup stands on the table, the tv hangs on the wall above the couch.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from tests.fixtures.objects import OBJECTS, Obj, box_mesh, build_scene, write_detections, yaw_error
from vid2scene.config import PipelineConfig
from vid2scene.geometry import box_corners
from vid2scene.instances.boxes import oriented_box
from vid2scene.instances.scale import object_scale
from vid2scene.instances.segmentation import felzenszwalb_mesh, layout_plane_mask, mesh_edges
from vid2scene.pipeline import STAGES, run_stage
from vid2scene.scene import Scene


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects")
    scene, info = build_scene(root)
    pristine = root / "pristine"
    shutil.copytree(scene.root, pristine)
    result = run_stage(scene, "instances", PipelineConfig())
    doc = json.loads((scene.root / "instances.json").read_text())
    return scene, info, result, doc, pristine


def by_label(doc):
    out = {}
    for i in doc["instances"]:
        out.setdefault(i["label"], []).append(i)
    return out


def test_stage_order_has_semantic_stages():
    i = STAGES.index("layout")
    assert tuple(STAGES[i + 1: i + 3]) == ("instances", "scene_graph")
    assert STAGES[STAGES.index("keyframes") + 1] == "detect"  # detections feed sfm and fusion (people)


def test_every_object_recovered_once_with_its_label(built):
    _, _, result, doc, _ = built
    labels = by_label(doc)
    assert sorted(labels) == sorted(o.label for o in OBJECTS)
    # one instance per object: no duplicates from occlusion (table behind the chair), from an object seen
    # from two sides, or from the false-positive boxes
    assert {k: len(v) for k, v in labels.items()} == {o.label: 1 for o in OBJECTS}
    assert result.qc["n_instances"] == len(OBJECTS)
    chair = labels["chair"][0]
    assert chair["label_votes"]["chair"] > chair["label_votes"].get("couch", 0)  # mislabels outvoted


def test_boxes_within_tolerance(built):
    _, _, _, doc, _ = built
    labels = by_label(doc)
    for o in OBJECTS:
        b = labels[o.label][0]["box"]
        centre_tol = 0.15 if o.label == "tv" else 0.05  # tv: its back 5 cm lie in the wall-removal band
        assert np.linalg.norm(np.subtract(b["center"], o.center)) <= centre_tol, o.label
        sx, sy, sz = o.size
        long_, short = max(sx, sy), min(sx, sy)
        assert abs(b["size"][0] - long_) <= 0.06, o.label
        if o.label != "tv":
            assert abs(b["size"][1] - short) <= 0.06, o.label
        assert abs(b["size"][2] - sz) <= 0.06, o.label
        true_yaw = o.yaw if sx >= sy else o.yaw + math.pi / 2
        period = math.pi / 2 if abs(sx - sy) < 0.05 else math.pi  # a square footprint: yaw modulo 90°
        assert math.degrees(yaw_error(b["yaw_rad"], true_yaw, period)) <= 5.0, o.label


def test_instance_records_follow_the_schema(built):
    scene, info, _, doc, _ = built
    assert doc["frame"] == "gravity_z_up_metric" and doc["units"] == "m" and doc["geometry"] == "mesh.ply"
    assert doc["detector"] == "synthetic"
    frames = {f.source_frame for f in info["frames"]}
    for k, i in enumerate(doc["instances"]):
        assert i["id"] == k
        assert {"label", "score", "n_views", "label_votes", "vertex_ids", "n_points", "box", "aabb", "first_frame",
                "last_frame", "first_timestamp_s", "last_timestamp_s", "views", "caption"} <= set(i)
        assert 0 < i["score"] <= 1 and i["n_views"] == len(i["views"]) >= 3
        ids = np.asarray(i["vertex_ids"])
        assert len(ids) == i["n_points"] and ids.min() >= 0 and ids.max() < doc["n_vertices"]
        assert i["first_frame"] <= i["last_frame"] and {i["first_frame"], i["last_frame"]} <= frames
        for v in i["views"]:
            assert v["frame"] in frames and 0 <= v["iou"] <= 1 and 0 < v["visible_share"] <= 1
        # agreement: the projected box matches the detection in most supporting views
        assert np.median([v["iou"] for v in i["views"]]) >= 0.5, i["label"]


def test_object_size_prior_scale(built):
    _, _, _, doc, _ = built
    s = doc["scale"]
    assert s["layout_metres_per_sfm_unit"] == 1.0
    assert s["n_objects_used"] >= 4
    assert s["object_prior_metres_per_sfm_unit"] == pytest.approx(1.0, abs=0.1)
    assert min(1.0, s["object_prior_metres_per_sfm_unit"]) <= s["combined"] <= max(1.0, s["object_prior_metres_per_sfm_unit"])


def test_object_scale_detects_a_too_small_layout_scale():
    # every object measures 0.8 x its typical size -> metres per SfM unit should be 1 / 0.8 larger
    insts = [{"id": k, "label": lab, "score": 0.8, "n_views": 5, "box": {"size": [1.0, 0.5, 0.8 * h]}}
             for k, (lab, h) in enumerate([("chair", 0.88), ("dining table", 0.75), ("refrigerator", 1.7)])]
    s = object_scale(insts, 0.5, 0.05)
    assert s["object_prior_metres_per_sfm_unit"] == pytest.approx(0.5 / 0.8, rel=0.02)
    assert s["n_objects_used"] == 3 and s["combined"] > 0.5
    assert object_scale(insts, 0.5, 0.0)["combined"] == 0.5  # a user scale (sigma 0) is kept


def test_zero_detections_complete_with_a_warning(built, tmp_path):
    _, info, _, _, pristine = built
    root = tmp_path / "empty"
    shutil.copytree(pristine, root)
    scene = Scene(root)
    write_detections(scene, {sf: [] for sf in info["detections"]}, 320, 240)
    res = run_stage(scene, "instances", PipelineConfig())
    doc = json.loads((root / "instances.json").read_text())
    assert doc["instances"] == [] and res.warnings and "no detections" in res.warnings[0]
    assert scene.is_complete("instances")
    res = run_stage(scene, "scene_graph", PipelineConfig())
    g = json.loads((root / "scene_graph.json").read_text())
    assert g["objects"] == [] and g["relations"] == [] and g["room"]["floor_area_m2"] == 20.0


def test_felzenszwalb_splits_box_faces_and_keeps_a_plane_whole():
    V, F = box_mesh((0, 0), (1.0, 0.6, 0.5), 0.3, 0.0, spacing=0.05)
    import open3d as o3d

    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(V), o3d.utility.Vector3iVector(F.astype(np.int32)))
    m.compute_vertex_normals()
    seg = felzenszwalb_mesh(V, np.asarray(m.vertex_normals), mesh_edges(F), 0.01, 20)
    n = seg.max() + 1
    assert 5 <= n <= 9  # 4 sides + top (edge vertices may form thin strips merged into neighbours)
    big = np.bincount(seg) >= 100
    assert big.sum() == 5


def test_oriented_box_recovers_yaw_and_size():
    rng = np.random.default_rng(0)
    yaw = 0.7
    local = rng.uniform(-0.5, 0.5, (4000, 3)) * [1.6, 0.6, 0.8] + [0, 0, 0.4]
    R = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
    P = local @ R.T + [2.0, 1.0, 0.05]
    b = oriented_box(P)
    assert b["size"] == pytest.approx([1.6, 0.6, 0.85], abs=0.03)  # bottom snapped to the floor (z 0.05 -> 0)
    assert math.degrees(yaw_error(b["yaw_rad"], yaw)) < 1.0
    assert -math.pi / 2 <= b["yaw_rad"] < math.pi / 2
    corners = box_corners(b["center"], b["size"], b["yaw_rad"])
    assert corners[:, 2].min() == pytest.approx(0.0, abs=1e-6)


def test_plane_mask_removes_layout_planes_only():
    layout = {"ceiling": {"normal": [0, 0, -1], "d": 2.7}, "walls": [{"normal": [1, 0, 0], "d": 0.0}]}
    P = np.array([[1, 1, 0.01], [1, 1, 2.69], [0.02, 1, 1], [1, 1, 1], [1, 1, -0.3], [1, 1, 3.0]])
    assert layout_plane_mask(P, layout, 0.05).tolist() == [False, False, False, True, False, False]


def test_requires_detect_stage(tmp_path):
    scene, _ = build_scene(tmp_path, objects=(Obj("chair", (2.5, 2.0), (0.5, 0.5, 0.9), 0.0),), n_views=3,
                           detections=False)
    from vid2scene.errors import StageFailed

    with pytest.raises(StageFailed, match="detect"):
        run_stage(scene, "instances", PipelineConfig())


def test_segments_method_still_available(built, tmp_path):
    _, _, _, _, pristine = built
    root = tmp_path / "seg"
    shutil.copytree(pristine, root)
    cfg = PipelineConfig()
    cfg.instances.method = "segments"
    run_stage(Scene(root), "instances", cfg)
    doc = json.loads((root / "instances.json").read_text())
    assert doc["meta"]["method"] == "segments"
    assert sorted({i["label"] for i in doc["instances"]}) == sorted(o.label for o in OBJECTS)

"""Exporters round-trip: each format is written from the hand-built scene of :mod:`tests.fixtures.five_objects` and read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.fixtures.five_objects import CAMERAS, K, OBJECTS, ROOM, build_scene
from vid2scene.cli import app
from vid2scene.export import EXPORTERS, export
from vid2scene.export.common import label_table, map_label
from vid2scene.export.pointcept import read_pointcept
from vid2scene.export.scannet import read_scannet
from vid2scene.export.sceneverse import read_camera_info
from vid2scene.export.spatiallm import layout_lines, parse_layout, spatiallm_category
from vid2scene.io import read_ply_comments, read_ply_mesh


@pytest.fixture(scope="module")
def s5(tmp_path_factory):
    return build_scene(tmp_path_factory.mktemp("exp") / "room5", with_frames=False)


def test_spatiallm_text_parses_back_to_walls_and_boxes(s5, tmp_path):
    out = export(s5.scene, "spatiallm", tmp_path).qc
    text = (tmp_path / "room5.txt").read_text()
    lay = parse_layout(text)
    X, Y, Z = ROOM
    poly = [(0, 0), (X, 0), (X, Y), (0, Y)]
    assert out["n_walls"] == len(lay["walls"]) == 4
    for i, w in enumerate(lay["walls"]):
        a, b = poly[i], poly[(i + 1) % 4]
        assert (w["ax"], w["ay"], w["bx"], w["by"]) == pytest.approx((*a, *b), abs=1e-4)
        assert w["az"] == w["bz"] == 0 and w["height"] == pytest.approx(Z) and w["thickness"] == 0
    assert len(lay["bboxes"]) == len(OBJECTS)
    for b, (iid, label, centre, size, yaw, _) in zip(lay["bboxes"], OBJECTS):
        assert b["class_name"] == (spatiallm_category(label) or label).replace(" ", "_")
        assert (b["position_x"], b["position_y"], b["position_z"]) == pytest.approx(centre, abs=1e-4)
        assert (b["scale_x"], b["scale_y"], b["scale_z"]) == pytest.approx(size, abs=1e-4)
        assert b["angle_z"] == pytest.approx(yaw, abs=1e-4)
    pts = (tmp_path / "room5.ply")
    assert pts.is_file()


def test_spatiallm_angle_wrap_and_scannet20_classes():
    inst = [{"id": 0, "label": "couch", "box": {"center": [1, 2, 0.4], "size": [2, 1, 0.8], "yaw_rad": 3.5}},
            {"id": 1, "label": "tv", "box": {"center": [0, 0, 1], "size": [1, 0.1, 0.5], "yaw_rad": 0.0}},
            {"id": 2, "label": "dining table", "box": {"center": [3, 1, 0.4], "size": [1, 1, 0.8], "yaw_rad": 0.0}}]
    coco = parse_layout("\n".join(layout_lines(inst, None)))
    assert coco["walls"] == [] and coco["bboxes"][0]["angle_z"] == pytest.approx(3.5 - 2 * np.pi, abs=1e-4)
    s20 = parse_layout("\n".join(layout_lines(inst, None, class_names="scannet20")))
    assert [b["class_name"] for b in s20["bboxes"]] == ["sofa", "table"]  # tv is not a ScanNet20 object class


def test_spatiallm_walls_from_a_staircase_polygon_are_simplified():
    # a 4 m x 3 m room whose x = 4 side is a 5 cm grid staircase (as layout's occupancy footprint produces)
    stairs = [[4.0 - 0.05 * (i % 2), 0.25 * (i // 2 + 1)] for i in range(22)]
    poly = [[0, 0], [4, 0]] + stairs + [[4, 3], [0, 3]]
    lay = {"room": {"polygon_xy": poly, "height_m": 2.6}}
    raw = parse_layout("\n".join(layout_lines([], lay, wall_simplify_m=0)))["walls"]
    walls = parse_layout("\n".join(layout_lines([], lay)))["walls"]
    assert len(raw) == len(poly) and len(walls) == 4
    ends = sorted((round(w["ax"], 2), round(w["ay"], 2)) for w in walls)
    assert ends == [(0, 0), (0, 3), (4, 0), (4, 3)] and all(w["height"] == 2.6 for w in walls)


def test_scannet_segments_and_aggregation_recover_instance_vertices(s5, tmp_path):
    out = export(s5.scene, "scannet", tmp_path).qc
    r = read_scannet(out["dir"])
    assert np.allclose(r["vertices"], s5.verts, atol=1e-5) and np.array_equal(r["triangles"], s5.tris)
    assert np.array_equal(r["colors"], s5.colors)
    groups = {g["id"]: g for g in r["groups"]}
    for iid, label, *_ in OBJECTS:
        assert np.array_equal(groups[iid]["vertex_ids"], np.sort(s5.instance_vertices[iid]))
        assert groups[iid]["label"] == map_label(label)["scannet_raw_category"]
        assert np.all(r["nyu40"][s5.instance_vertices[iid]] == map_label(label)["nyu40_id"])
    assert groups[0]["label"] == "chair" and groups[1]["label"] == "couch"
    structure = [g["label"] for g in r["groups"] if g["id"] >= len(OBJECTS)]
    assert sorted(structure) == ["ceiling", "floor", "wall", "wall", "wall", "wall"]
    floor = next(g for g in r["groups"] if g["label"] == "floor")
    assert np.all(np.abs(s5.verts[floor["vertex_ids"], 2]) < 0.05) and np.all(r["nyu40"][floor["vertex_ids"]] == 2)
    # every segment belongs to one group at most (groups are exact unions of segments)
    owner = np.full(len(s5.verts), -1)
    for g in r["groups"]:
        assert np.all(owner[g["vertex_ids"]] == -1)
        owner[g["vertex_ids"]] = g["id"]
    for sgm in np.unique(r["seg_indices"]):
        assert len(np.unique(owner[r["seg_indices"] == sgm])) == 1
    assert out["n_groups"] == len(OBJECTS) + 6 and out["contested_vertices"] == 0


def test_contested_vertices_go_to_the_higher_score(s5, tmp_path):
    import shutil

    root = tmp_path / "c"
    shutil.copytree(s5.scene.root, root)
    doc = json.loads((root / "instances.json").read_text())
    shared = doc["instances"][0]["vertex_ids"][:10]
    doc["instances"][3]["vertex_ids"] += shared
    doc["instances"][3]["score"] = 0.9
    (root / "instances.json").write_text(json.dumps(doc))
    from vid2scene.scene import Scene

    out = export(Scene(root), "scannet", tmp_path / "x").qc
    assert out["contested_vertices"] == 10
    r = read_scannet(out["dir"])
    g = {g["id"]: set(g["vertex_ids"].tolist()) for g in r["groups"]}
    assert set(shared) <= g[3] and not set(shared) & g[0]


def test_pointcept_arrays(s5, tmp_path):
    export(s5.scene, "pointcept", tmp_path)
    a = read_pointcept(tmp_path / "room5")
    n = len(s5.verts)
    assert a["coord"].dtype == np.float32 and a["coord"].shape == (n, 3)
    assert np.allclose(a["coord"], s5.verts, atol=1e-6)
    assert a["color"].dtype == np.uint8 and np.array_equal(a["color"], s5.colors)
    assert a["normal"].dtype == np.float32 and np.allclose(np.linalg.norm(a["normal"], axis=1), 1, atol=1e-4)
    for k in ("segment20", "segment200", "segment", "instance"):
        assert a[k].dtype == np.int64 and a[k].shape == (n,)
    assert np.array_equal(a["segment"], a["segment20"])
    for iid, label, *_ in OBJECTS:
        assert np.all(a["instance"][s5.instance_vertices[iid]] == iid)
    objects = (a["instance"] >= 0) & (a["instance"] < len(OBJECTS))
    assert objects.sum() == sum(len(v) for v in s5.instance_vertices.values())
    # floor, ceiling and walls carry the ScanNet group ids after the objects (as ScanNet's aggregation does)
    floor_id = len(OBJECTS)
    assert np.all(a["segment20"][a["instance"] == floor_id] == 1)
    assert np.all(a["segment20"][a["instance"] > floor_id + 1] == 0)  # walls (ceiling = floor_id + 1)
    chair, tv = s5.instance_vertices[0], s5.instance_vertices[2]
    assert np.all(a["segment20"][chair] == 4)       # ScanNet20 order: wall floor cabinet bed chair ...
    assert np.all(a["segment20"][tv] == -1)         # television is not a ScanNet20 class ...
    t = label_table()["scannet200"]
    assert np.all(a["segment200"][tv] == t["labels"].index("tv"))  # ... but 'tv' is a ScanNet200 one
    floor = (np.abs(s5.verts[:, 2]) < 1e-6) & (a["instance"] >= len(OBJECTS))
    assert np.all(a["segment20"][floor] == 1)
    floor &= np.abs(s5.verts[:, 0] - 2.2) > 1e-6  # the partition's bottom row is a vertical mesh at z = 0
    inner = floor & (s5.verts[:, 0] > 0.3) & (s5.verts[:, 0] < 3.7) & (s5.verts[:, 1] > 0.3) & (s5.verts[:, 1] < 2.7)
    assert inner.sum() > 20 and np.all(np.abs(a["normal"][inner, 2]) > 0.99)


def test_sceneverse_camera_info_inverts_to_camera_centres(s5, tmp_path):
    out = export(s5.scene, "sceneverse", tmp_path).qc
    d = tmp_path / "room5"
    intr, ext = read_camera_info(d / "camera_info.json")
    assert intr == {"w": 320, "h": 240, "fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2]}
    assert sorted(ext) == [c[0] for c in CAMERAS]  # the unregistered keyframe 40 is left out
    for f, eye, _ in CAMERAS:
        c2w = np.linalg.inv(ext[f])
        assert np.allclose(c2w[:3, 3], eye, atol=1e-9)
        assert np.allclose(ext[f], s5.poses[f])
    meta = json.loads((d / "metadata.json").read_text())
    assert sorted(meta, key=int) == [str(o[0]) for o in OBJECTS]
    for iid, label, *_ in OBJECTS:
        m = meta[str(iid)]
        assert m["point_ids"] == s5.instance_vertices[iid].tolist()
        assert m["pred_class_name"] == map_label(label)["scannet_raw_category"] and m["pred_class_id"] != -1
    assert meta["0"]["pred_class_id"] == 2 and meta["1"]["pred_class_id"] == 6  # ScanNet ids of chair, couch
    # the scene's mesh in the world frame (the scene folder's mesh.ply is in the SfM frame), vertex order kept
    v, t, c, _ = read_ply_mesh(d / "mesh.ply")
    assert np.allclose(v, s5.verts, atol=1e-5) and np.array_equal(t, s5.tris) and np.array_equal(c, s5.colors)
    assert "frame: gravity_z_up_metric" in read_ply_comments(d / "mesh.ply")
    assert json.loads((d / "data_info.json").read_text())["data_frames"] == [0, 10, 20, 30]
    assert out["shared_intrinsic"]


def test_label_table_is_packaged_and_consistent():
    t = label_table()
    ids20 = t["scannet20_nyu40_ids"]
    for coco, rec in t["coco"].items():
        assert 1 <= rec["nyu40_id"] <= 40
        i = t["scannet200"]["labels"].index(rec["scannet_raw_category"])
        assert t["scannet200"]["ids"][i] == rec["scannet_id"]
    assert {c: map_label(c)["nyu40_name"] for c in ("chair", "couch", "bed", "toilet", "refrigerator")} == {
        "chair": "chair", "couch": "sofa", "bed": "bed", "toilet": "toilet", "refrigerator": "refridgerator"}
    assert map_label("giraffe")["nyu40_id"] == 40 and map_label("giraffe")["scannet20_index"] == -1
    assert all(map_label(c)["scannet20_index"] == ids20.index(map_label(c)["nyu40_id"])
               for c in ("chair", "dining table", "sink"))


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_cli_export_writes_under_tasks_exports(s5, fmt):
    res = CliRunner().invoke(app, ["export", str(s5.scene.root), "--format", fmt])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["format"] == fmt
    assert summary["dir"].startswith(str(s5.scene.root / "tasks" / "exports" / fmt))
    assert all(__import__("os").path.isfile(p) for p in summary["files"])


def test_cli_export_errors(s5, tmp_path):
    r = CliRunner().invoke(app, ["export", str(s5.scene.root), "--format", "nope"])
    assert r.exit_code == 3
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(app, ["export", str(tmp_path / "empty"), "--format", "scannet"])
    assert r.exit_code == 3


def test_nerfstudio_export_is_in_the_world_frame(s5, tmp_path):
    from vid2scene.io import cam_from_world_from_opengl

    out = export(s5.scene, "nerfstudio", tmp_path).qc
    doc = json.loads((tmp_path / "transforms.json").read_text())
    assert out["n_frames"] == len(CAMERAS) and doc["vid2scene"]["world"] == "gravity_z_up_metric"
    for f, (sf, eye, _) in zip(doc["frames"], CAMERAS):
        assert f["source_frame"] == sf
        assert np.allclose(cam_from_world_from_opengl(f["transform_matrix"]), s5.poses[sf], atol=1e-9)
        assert np.allclose(np.asarray(f["transform_matrix"])[:3, 3], eye, atol=1e-9)
    default = export(s5.scene, "nerfstudio").qc  # default folder: images relative to the file
    rel = json.loads((s5.scene.root / "tasks/exports/nerfstudio/transforms.json").read_text())["frames"][0]
    assert default["dir"] == str(s5.scene.root / "tasks/exports/nerfstudio")
    assert rel["file_path"] == "../../../frames/000000.jpg"


def test_export_options_are_validated(s5, tmp_path):
    from vid2scene.errors import InputError

    assert export(s5.scene, "scannet", tmp_path, segment_cell_m=0.25).qc["n_segments"] > 0
    with pytest.raises(InputError, match="segment_cell_m"):
        export(s5.scene, "scannet", tmp_path, segment_cell_m=-1)
    with pytest.raises(InputError, match="unknown export format"):
        export(s5.scene, "nope")

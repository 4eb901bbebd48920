"""Conformance of the exports with what their consumers read, written from those consumers' code and docs (facts,
not their code): SpatialLM's evaluation (class names, ``_`` → space, its category list), Pointcept's ScanNet
preprocessing (``scans*/scene*`` folders, split lists, ``<id>.txt`` parsing, ``group["id"]`` as instance id),
nerfstudio's dataparser (``ply_file_path`` read with Open3D next to ``transforms.json``) and SceneVerse++ (the
mesh's lowest point is the floor). Run on the synthetic scene of :mod:`tests.fixtures.five_objects`, and on a real
scene folder when ``VID2SCENE_REAL_SCENE`` names one (a copy: exports are written to a temporary folder)."""

from __future__ import annotations

import glob
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.five_objects import OBJECTS, build_scene
from vid2scene.errors import InputError
from vid2scene.export import export
from vid2scene.export.common import clean_below_floor, label_table
from vid2scene.export.pointcept import read_pointcept
from vid2scene.export.spatiallm import parse_layout, spatiallm_category, spatiallm_table
from vid2scene.scene import Mesh, Scene

# SpatialLM README "Benchmark Results" / eval.py OBJECTS: the categories its evaluation scores
SPATIALLM_EVAL_CATEGORIES = {"curtain", "nightstand", "chandelier", "wardrobe", "bed", "sofa", "chair", "cabinet",
                             "dining table", "plants", "tv cabinet", "coffee table", "side table", "air conditioner",
                             "dresser", "stool", "refrigerator", "painting", "carpet", "tv"}
# Pointcept preprocess_scannet.py: VALID_CLASS_IDS_20 (NYU40 ids of the ScanNet20 benchmark classes)
VALID_CLASS_IDS_20 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)

REAL = os.environ.get("VID2SCENE_REAL_SCENE")


@pytest.fixture(scope="module", params=["synthetic"] + (["real"] if REAL else []))
def scene(request, tmp_path_factory) -> Scene:
    if request.param == "synthetic":
        s5 = build_scene(tmp_path_factory.mktemp("consumers") / "room5", with_frames=False)
        # SfM points: every 7th mesh vertex, in the SfM frame as sfm writes them
        sfm_from_world = np.linalg.inv(s5.scene.world_from_sfm())
        pts = s5.verts[::7]
        s5.scene.write_sparse_points((np.c_[pts, np.ones(len(pts))] @ sfm_from_world.T)[:, :3], s5.colors[::7])
        return s5.scene
    return Scene(REAL)


def _fromstring(val: str) -> np.ndarray:
    """``np.fromstring(val, sep=" ")`` as NumPy < 2.3 gives it (Pointcept's environment): text that is not a
    number parses to an empty array with a DeprecationWarning; NumPy ≥ 2.3 raises instead, on ScanNet's own
    ``sceneType = <text>`` lines as on ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return np.fromstring(val, sep=" ")
        except ValueError:
            return np.array([])


def test_spatiallm_table_names_only_documented_categories():
    t = spatiallm_table()
    assert set(t["categories"]) == SPATIALLM_EVAL_CATEGORIES
    assert set(t["synonyms"].values()) <= SPATIALLM_EVAL_CATEGORIES
    assert all(k == k.strip().lower() for k in t["synonyms"])
    assert {c: spatiallm_category(c) for c in ("couch", "potted plant", "tv", "dining table", "rug", "Chair ")} == {
        "couch": "sofa", "potted plant": "plants", "tv": "tv", "dining table": "dining table", "rug": "carpet",
        "Chair ": "chair"}
    assert spatiallm_category("giraffe") is None and spatiallm_category("coffee_table") == "coffee table"


def test_spatiallm_boxes_survive_its_evaluation_label_filter(scene, tmp_path):
    qc = export(scene, "spatiallm", tmp_path, scene_name="s").qc
    boxes = parse_layout((tmp_path / "s.txt").read_text())["bboxes"]
    # SpatialLM's eval.py: class_name with "_" read as " ", kept only when its label table maps it
    kept = [b for b in boxes if b["class_name"].replace("_", " ") in SPATIALLM_EVAL_CATEGORIES]
    assert len(kept) == qc["n_spatiallm_category"] and len(boxes) == qc["n_bboxes"]
    assert all(" " not in b["class_name"] for b in boxes)  # one token per class, as SpatialLM writes them
    if scene.root.name == "room5":
        assert sorted(b["class_name"] for b in boxes) == ["chair", "dining_table", "sofa", "tv"]
        assert qc["n_unmapped"] == 0
    dropped = export(scene, "spatiallm", tmp_path / "d", scene_name="s", unmapped="drop").qc
    assert dropped["n_bboxes"] == qc["n_spatiallm_category"]
    # SpatialLM reads an axis-aligned, z-up cloud: nothing below the floor after the clean-up
    from vid2scene.io import read_ply_points

    pts, cols, _ = read_ply_points(tmp_path / "s.ply")
    assert pts[:, 2].min() >= 0.0 and cols is not None


def _pointcept_preprocess(scan: Path, raw_to_nyu40: dict, raw_to_id200: dict, ids200: list) -> dict:
    """What Pointcept's preprocess_scannet.py computes for one scan folder (from its documented steps)."""
    from plyfile import PlyData

    sid = scan.name
    v = PlyData.read(str(scan / f"{sid}_vh_clean_2.ply"))["vertex"].data
    coords = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    colors = np.stack([v["red"], v["green"], v["blue"]], axis=1)
    info = {}
    for line in (scan / f"{sid}.txt").read_text().splitlines():
        key, val = line.split(" = ")
        info[key] = _fromstring(val)
    align = info["axisAlignment"].reshape(4, 4)
    coords = (np.c_[coords, np.ones(len(coords))] @ align.T)[:, :3]
    seg = np.array(json.loads((scan / f"{sid}_vh_clean_2.0.010000.segs.json").read_text())["segIndices"])
    groups = json.loads((scan / f"{sid}.aggregation.json").read_text())["segGroups"]
    n = len(coords)
    s20, s200, inst = np.full(n, -1), np.full(n, -1), np.full(n, -1)
    for g in groups:
        idx = np.where(np.isin(seg, np.array(g["segments"])))[0]
        nyu = raw_to_nyu40.get(g["label"], 0)
        s20[idx] = VALID_CLASS_IDS_20.index(nyu) if nyu in VALID_CLASS_IDS_20 else -1
        sid200 = raw_to_id200.get(g["label"], 0)
        s200[idx] = ids200.index(sid200) if sid200 in ids200 else -1
        inst[idx] = g["id"]
    return {"coord": coords, "color": colors, "segment20": s20, "segment200": s200, "instance": inst}


def test_scannet_export_is_what_pointcept_preprocesses(scene, tmp_path):
    qc = export(scene, "scannet", tmp_path / "scannet").qc
    scans = sorted(glob.glob(str(tmp_path / "scannet") + "/scans*/scene*"))  # Pointcept main()'s glob
    assert len(scans) == 1 and re.fullmatch(r"scene\d{4}_\d{2}", Path(scans[0]).name)
    name = Path(scans[0]).name
    assert qc["scene_id"] == name
    train = (tmp_path / "scannet" / "scannetv2_train.txt").read_text().split()
    assert name in train  # in a split list: labelled, not treated as a test scene
    info = dict(ln.split(" = ") for ln in (Path(scans[0]) / f"{name}.txt").read_text().splitlines())
    assert info["vid2sceneSceneId"] == qc["vid2scene_scene_id"] == scene.root.resolve().name.replace(" ", "_")
    # stable: the same scene gets the same ScanNet name, and a second export keeps the list unique
    again = export(scene, "scannet", tmp_path / "scannet").qc
    assert again["scene_id"] == name and (tmp_path / "scannet" / "scannetv2_train.txt").read_text().split() == train
    with pytest.raises(InputError, match="scannet_id"):
        export(scene, "scannet", tmp_path / "x", scannet_id="myscene")
    with pytest.raises(InputError, match="already holds"):  # another scene under the same ScanNet name
        export(scene, "scannet", tmp_path / "scannet", scene_name="other", scannet_id=name)

    t = label_table()
    raw_to_nyu40 = {r["scannet_raw_category"]: r["nyu40_id"] for r in t["coco"].values()}
    raw_to_nyu40.update(wall=1, floor=2, ceiling=22)
    raw_to_id200 = dict(zip(t["scannet200"]["labels"], t["scannet200"]["ids"]))
    theirs = _pointcept_preprocess(Path(scans[0]), raw_to_nyu40, raw_to_id200, t["scannet200"]["ids"])
    export(scene, "pointcept", tmp_path / "pc", scene_name="s")
    ours = read_pointcept(tmp_path / "pc" / "s")
    assert np.allclose(ours["coord"], theirs["coord"], atol=1e-5)
    assert np.array_equal(ours["color"], theirs["color"])
    for k in ("segment20", "segment200", "instance"):
        assert np.array_equal(ours[k], theirs[k]), k
    # floor and walls are ScanNet objects with ids, as ScanNet's own aggregation has them
    floor = theirs["segment20"] == VALID_CLASS_IDS_20.index(2)
    wall = theirs["segment20"] == VALID_CLASS_IDS_20.index(1)
    assert floor.any() and np.all(theirs["instance"][floor] >= 0)
    assert not wall.any() or np.all(theirs["instance"][wall] >= 0)
    if scene.root.name == "room5":
        assert np.all(theirs["instance"][floor] == len(OBJECTS))  # ids after the objects


def test_nerfstudio_transforms_name_the_sparse_points(scene, tmp_path):
    import open3d as o3d

    qc = export(scene, "nerfstudio", tmp_path).qc
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert meta["ply_file_path"] == "sparse_pc.ply"
    pcd = o3d.io.read_point_cloud(str(tmp_path / meta["ply_file_path"]))  # nerfstudio's reader
    pts, cols = np.asarray(pcd.points), np.asarray(pcd.colors)
    world = scene.sparse_points(frame="world")
    assert len(pts) == qc["n_points"] == len(world.points) > 0
    assert cols.shape == pts.shape  # nerfstudio takes colours * 255 as the Gaussians' initial colours
    assert np.allclose(pts, world.points, atol=1e-4)  # the cameras' frame (world), not the SfM frame
    assert np.allclose(np.round(cols * 255), world.colors, atol=1)
    # same frame as the cameras: through nerfstudio's cameras the exported points land on the very pixels that
    # the SfM-frame points reach through the SfM-frame cameras (a similarity keeps projections)
    sfm_pts = scene.sparse_points(frame="sfm").points
    sfm_cams = {c.source_frame: c for c in scene.cameras(frame="sfm") if c.registered}
    for f in meta["frames"][:5]:
        c2w = np.asarray(f["transform_matrix"]) @ np.diag([1, -1, -1, 1])  # OpenGL → OpenCV axes
        p_cam = (np.c_[pts, np.ones(len(pts))] @ np.linalg.inv(c2w).T)[:, :3]
        c = sfm_cams[f["source_frame"]]
        q_cam = (np.c_[sfm_pts, np.ones(len(sfm_pts))] @ c.cam_from_world.T)[:, :3]
        ok = (p_cam[:, 2] > 1e-3) & (q_cam[:, 2] > 1e-9)
        assert ok.sum() > 0
        uv = np.c_[meta["fl_x"] * p_cam[ok, 0] / p_cam[ok, 2] + meta["cx"],
                   meta["fl_y"] * p_cam[ok, 1] / p_cam[ok, 2] + meta["cy"]]
        uv_sfm = (q_cam[ok] @ c.K.T)[:, :2] / q_cam[ok, 2:3]
        near = np.all(np.abs(uv_sfm - [meta["cx"], meta["cy"]]) < [meta["w"], meta["h"]], axis=1)
        assert np.allclose(uv[near], uv_sfm[near], atol=0.05)


def test_sceneverse_floor_is_the_lowest_point(scene, tmp_path):
    from vid2scene.io import read_ply_mesh

    qc = export(scene, "sceneverse", tmp_path, scene_name="s").qc
    v, t, _, _ = read_ply_mesh(tmp_path / "s" / "mesh.ply")
    assert v[:, 2].min() == pytest.approx(0.0, abs=1e-6)  # SceneVerse++: z = 0 at the lowest point = our floor
    meta = json.loads((tmp_path / "s" / "metadata.json").read_text())
    assert all(max(m["point_ids"], default=0) < len(v) for m in meta.values())
    assert qc["min_z_after_m"] >= 0 and len(t) > 0


def test_clean_below_floor_snaps_noise_drops_outliers_and_reindexes():
    v = np.array([[0, 0, 0.0], [1, 0, -0.1], [0, 1, -0.5], [1, 1, 0.3], [2, 0, 0.1]])
    tris = np.array([[0, 1, 3], [0, 2, 3], [1, 4, 3]])
    cols = np.arange(15, dtype=np.uint8).reshape(5, 3)
    insts = [{"id": 0, "vertex_ids": [2, 3, 4]}, {"id": 1, "vertex_ids": [1]}]
    m, out, qc = clean_below_floor(Mesh(v, tris, cols, None, "world"), insts, "snap", 0.25)
    assert qc["n_snapped"] == 1 and qc["n_dropped"] == 1 and qc["min_z_after_m"] == 0.0
    assert m.vertices.tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0.3], [2, 0, 0.1]]
    assert m.triangles.tolist() == [[0, 1, 2], [1, 3, 2]] and m.colors.tolist() == cols[[0, 1, 3, 4]].tolist()
    assert out[0]["vertex_ids"] == [2, 3] and out[1]["vertex_ids"] == [1] and insts[0]["vertex_ids"] == [2, 3, 4]
    m2, _, qc2 = clean_below_floor(Mesh(v, tris, cols, None, "world"), insts, "drop")
    assert qc2["n_dropped"] == 2 and len(m2.vertices) == 3
    m3, _, qc3 = clean_below_floor(Mesh(v, tris, cols, None, "world"), insts, "keep")
    assert m3.vertices is v and qc3["n_dropped"] == 0
    with pytest.raises(InputError, match="vertex_ids"):
        clean_below_floor(Mesh(v, tris, cols, None, "world"), [{"id": 0, "vertex_ids": [9]}])

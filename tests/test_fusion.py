"""``fusion`` stage on a synthetic room (:mod:`tests.fixtures.dense`) with exact depth in a known SfM frame, and
its people masking (person boxes from ``detect``, refined by depth)."""

from __future__ import annotations

import numpy as np
import pytest

from vid2scene import fusion
from vid2scene.errors import StageFailed
from vid2scene.io import read_ply_comments
from vid2scene.scene import Scene
from tests.fixtures.room import ROOM, look_at, room_surface_distance

from tests.fixtures.dense import SFM_SCALE, fused_room, make_dense_scene, room_poses, to_world


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    return fused_room(tmp_path_factory)


def test_mesh_matches_the_true_surfaces(fused):
    scene, result = fused
    mesh = scene.mesh()
    v = to_world(mesh.vertices)
    assert len(mesh.triangles) > 1000
    assert mesh.colors is not None
    d = room_surface_distance(v)
    assert np.median(d) < 0.02, np.median(d)
    assert np.percentile(d, 95) < 0.06
    # qc records the settings in SfM units (voxel = median depth / 100)
    qc = result.qc
    assert qc["units"] == "sfm" and qc["frame"] == "sfm"
    assert qc["voxel_size"] == pytest.approx(qc["median_depth"] / 100, rel=1e-3)
    assert 0.005 < qc["voxel_size"] / SFM_SCALE < 0.04  # ~2 cm in metres


def test_points_are_clean_and_in_the_room(fused):
    scene, result = fused
    cloud = scene.points()
    pts, cols, nrm = cloud.points, cloud.colors, cloud.normals
    assert len(pts) > 2000 and cols is not None and nrm is not None
    p = to_world(pts)
    assert np.all(p > -0.03) and np.all(p < np.asarray(ROOM) + 0.03), (p.min(0), p.max(0))
    d = room_surface_distance(p)
    assert np.percentile(d, 99.5) < 0.03 and d.max() < 0.08, (np.percentile(d, 99.5), d.max())
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-3)


def test_ply_headers_name_the_frame(fused):
    scene, _ = fused
    for name in ("mesh.ply", "points.ply"):
        assert "frame: sfm" in read_ply_comments(scene.root / name)
    assert scene.mesh().frame == "sfm" and scene.points().frame == "sfm"


def test_flat_plane_gives_planar_mesh(tmp_path):
    """Regression guard: open3d 0.20.0's ScalableTSDFVolume returned an empty mesh even for a flat plane."""
    room = (12.0, 12.0, 3.0)
    poses = [look_at((6.0 + 0.2 * i, 6.0, 1.5), (6.6 + 0.2 * i, 6.2, 0.0)) for i in range(4)]
    scene = make_dense_scene(tmp_path / "plane", poses=poses, room=room, furniture=(), sparse=False)
    fusion.run(scene, fusion.Config())
    mesh = scene.mesh()
    assert len(mesh.triangles) > 100, "TSDF produced an empty mesh for a flat plane (open3d regression?)"
    v = to_world(mesh.vertices)
    assert np.abs(v[:, 2]).max() < 0.03, np.abs(v[:, 2]).max()  # on the floor plane z = 0
    s = np.linalg.svd(v - v.mean(0), compute_uv=False)
    assert s[2] / s[0] < 0.01


def test_no_depth_is_a_stage_failure(tmp_path):
    scene = make_dense_scene(tmp_path / "s", poses=room_poses()[:2], sparse=False)
    for p in (scene.root / "depth").glob("*.npz"):
        p.unlink()
    with pytest.raises(StageFailed, match="no depth maps"):
        fusion.run(scene, fusion.Config())


def test_depth_stage_must_be_complete(tmp_path):
    scene = make_dense_scene(tmp_path / "s", poses=room_poses()[:2], sparse=False)
    scene.update_manifest(lambda m: m["stages"].pop("depth"))
    with pytest.raises(StageFailed, match="depth"):
        fusion.run(scene, fusion.Config())


# ---------------------------------------------------------------------------------------------------------
# people masking
# ---------------------------------------------------------------------------------------------------------
def _wall_with_person(h=120, w=160):
    """Far wall at 4 m, a near 'person' block at 2 m (rows 30..110, cols 60..90) inside the box (40..120, 20..115)."""
    depth = np.full((h, w), 4.0, np.float32)
    depth[30:110, 60:90] = 2.0
    box = (40.0, 20.0, 120.0, 115.0, 0.9)  # x0, y0, x1, y1, score
    return depth, box


def _write_people(scene: Scene, source_frame: int, boxes, width: int, height: int) -> None:
    scene.write_detections(source_frame, {"frame": source_frame, "width": width, "height": height,
                                          "detector": "test", "detections": [],
                                          "people": [{"score": 0.9, "bbox_xyxy": list(b[:4])} for b in boxes]})


def test_depth_refinement_keeps_only_the_near_block():
    depth, box = _wall_with_person()
    m = fusion.person_mask([box], depth, dilate_px=2)
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
    m_m = fusion.person_mask([box], depth, dilate_px=2)
    m_sfm = fusion.person_mask([box], depth * 0.137, dilate_px=2)  # SfM units: same mask
    assert np.array_equal(m_m, m_sfm)
    assert m_m[60:64, 70:74].all()


def test_without_depth_the_whole_box_and_no_boxes_empty():
    m = fusion.person_mask([(10.2, 5.0, 20.0, 15.5, 0.5)], shape=(50, 60))
    assert m.sum() == 10 * 11 and m[5:16, 10:20].all()
    assert not fusion.person_mask([], shape=(50, 60)).any()
    depth = np.ones((50, 60), np.float32)
    assert not fusion.person_mask([], depth).any()
    assert not fusion.person_mask([(70, 60, 90, 80)], depth).any()  # box outside the image


def test_mask_people_in_depth_zeroes_exactly_the_mask(tmp_path):
    scene = Scene(tmp_path)
    depth, box = _wall_with_person()
    h, w = depth.shape
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, depth.shape).astype(np.float32)
    d0, c0 = depth.copy(), conf.copy()
    _write_people(scene, 0, [box], w, h)
    d, c, n = fusion.mask_people_in_depth(scene, 0, depth, conf)
    m = fusion.person_mask([box], depth)
    assert n == int(m.sum()) > 0
    assert (d[m] == 0).all() and (c[m] == 0).all()
    assert np.array_equal(d[~m], depth[~m]) and np.array_equal(c[~m], conf[~m])
    assert np.array_equal(depth, d0) and np.array_equal(conf, c0)  # inputs untouched
    _write_people(scene, 1, [], w, h)
    for sf in (1, 2):  # no person boxes; no detections record at all
        d, c, n = fusion.mask_people_in_depth(scene, sf, depth, conf)
        assert n == 0 and np.array_equal(d, depth) and np.array_equal(c, conf)


def test_mask_people_in_depth_scales_the_boxes_to_the_depth_map(tmp_path):
    scene = Scene(tmp_path)
    depth, box = _wall_with_person()
    _write_people(scene, 7, [[2 * v for v in box[:4]]], 320, 240)  # detections of a keyframe 2x the depth size
    d, c, n = fusion.mask_people_in_depth(scene, 7, depth, np.ones_like(depth))
    assert n > 0 and (d[40:100, 65:85] == 0).all()
    assert n == int(fusion.person_mask([box], depth).sum())


def test_fusion_masks_the_people_of_detect_and_warns_without_detections(tmp_path, fused):
    _, result = fused  # no detections/ in the shared scene
    assert result.qc["person_pixels_masked"] == 0
    assert any("people not masked" in w for w in result.warnings)
    scene = make_dense_scene(tmp_path / "s", poses=room_poses()[:2], sparse=False)
    _write_people(scene, 0, [(40.0, 20.0, 120.0, 115.0)], 160, 120)
    r = fusion.run(scene, fusion.Config())
    assert r.qc["person_pixels_masked"] > 0 and not r.warnings
    r_off = fusion.run(scene, fusion.Config(mask_people=False))
    assert r_off.qc["person_pixels_masked"] == 0 and not r_off.warnings


def test_resize_depth_interpolates_smooth_surfaces_and_keeps_edges():
    x = np.linspace(1.0, 2.0, 100, dtype=np.float32)
    d = np.tile(x, (60, 1))
    d[:, 50:] += 3.0  # a discontinuity
    d[:5] = 0  # unknown
    r = fusion.resize_depth(d, (61, 37))
    assert r.shape == (37, 61)
    u = (np.arange(61) + 0.5) * 100 / 61 - 0.5  # source column of each new pixel centre
    want = np.interp(u, np.arange(100), x) + 3.0 * (u >= 50)
    row = r[20]
    far = np.abs(u - 49.5) > 1
    np.testing.assert_allclose(row[far], want[far], rtol=1e-4)
    assert set(np.round(row[~far], 3)) <= set(np.round(d[20], 3))  # at the edge: an existing depth, no mix
    assert (r[:2] == 0).all()


def test_integration_scale_couples_pixels_to_the_voxel():
    cams = [type("C", (), {"K": [[500.0, 0, 270], [0, 500.0, 180], [0, 0, 1]]})()]
    # voxel 0.04 at depth 4 with f = 500: 5 pixels per voxel at full size
    assert fusion.integration_scale(cams, 4.0, 0.04, 3.0) == pytest.approx(0.6)
    assert fusion.integration_scale(cams, 4.0, 0.04, 10.0) == 1.0  # never enlarged
    assert fusion.integration_scale(cams, 4.0, 0.04, None) == 1.0


def test_reduced_integration_size_keeps_the_surface(tmp_path):
    full = make_dense_scene(tmp_path / "full")
    fusion.run(full, fusion.Config(pixels_per_voxel=None))
    small = make_dense_scene(tmp_path / "small")
    qc = fusion.run(small, fusion.Config(pixels_per_voxel=0.8)).qc  # this room's maps are small: force it
    assert qc["integration_scale"] < 0.7
    d_full = room_surface_distance(to_world(full.mesh().vertices))
    d_small = room_surface_distance(to_world(small.mesh().vertices))
    assert np.median(d_small) < 2 * np.median(d_full)
    assert np.percentile(d_small, 90) < 2 * np.percentile(d_full, 90)
    n_full, n_small = len(full.mesh().triangles), len(small.mesh().triangles)
    assert 0.8 * n_full < n_small < 1.2 * n_full

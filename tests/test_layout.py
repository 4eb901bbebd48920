"""``layout`` stage on the synthetic room: gravity, floor, scale, room size; the SfM-frame assets are left as
they are and the world-frame loaders give the metric geometry.

The scene comes from :func:`tests.fixtures.dense.make_dense_scene` (true poses moved into an emulated SfM frame
by a known similarity ``sfm_from_world``), fused by the real ``fusion`` stage. ``new_from_true = world_from_sfm @
sfm_from_world`` must then be a rotation about z by a multiple of 90° (Manhattan yaw), unit scale and a
translation in x, y only.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from vid2scene import fusion, layout
from vid2scene.errors import StageFailed
from vid2scene.geometry import apply_transform
from vid2scene.io import read_json
from vid2scene.scene import PointCloud, Scene
from tests.fixtures.room import ROOM, intrinsics, render_room, room_surface_distance
from tests.fixtures.dense import (H, SFM_SCALE, W, fused_room, make_dense_scene, mark_complete, room_poses,
                                  sfm_from_world)

#: The assets written before ``layout`` (SfM frame): ``layout`` must leave every byte of them as it was.
SFM_FRAME_FILES = ("mesh.ply", "points.ply", "cameras.json", "sparse_points.ply")

TRUE_CAMERA_HEIGHT = 1.55  # median of the two standpoints (1.5 m and 1.6 m)


@pytest.fixture(scope="module")
def fused_scene(tmp_path_factory):
    return fused_room(tmp_path_factory)[0]


def _copy(scene, dst):
    shutil.copytree(scene.root, dst)
    return Scene(dst)


def sfm_frame_bytes(scene) -> dict[str, bytes]:
    """Every SfM-frame asset's bytes (the files of :data:`SFM_FRAME_FILES` and ``depth/*.npz``)."""
    out = {n: (scene.root / n).read_bytes() for n in SFM_FRAME_FILES}
    out.update({f"depth/{p.name}": p.read_bytes() for p in sorted((scene.root / "depth").glob("*.npz"))})
    return out


@pytest.fixture(scope="module")
def laid_out(fused_scene, tmp_path_factory):
    scene = _copy(fused_scene, tmp_path_factory.mktemp("user") / "scene")
    before = sfm_frame_bytes(scene)
    result = layout.run(scene, layout.Config(metric_scale=1.0 / SFM_SCALE))
    return scene, result, before


def new_from_true(scene) -> np.ndarray:
    return np.asarray(read_json(scene.root / "layout.json")["world_from_sfm"]) @ sfm_from_world()


def test_gravity_floor_and_scale_recovered(laid_out):
    scene, result, _ = laid_out
    T = new_from_true(scene)
    s = np.cbrt(np.linalg.det(T[:3, :3]))
    assert s == pytest.approx(1.0, abs=1e-9)
    R = T[:3, :3] / s
    z = R @ [0.0, 0.0, 1.0]
    assert np.degrees(np.arccos(np.clip(z[2], -1, 1))) < 1.0  # floor normal within 1° of gravity
    # Manhattan yaw: walls on the axes
    yaw = np.degrees(np.arctan2(R[1, 0], R[0, 0]))
    assert min(abs(yaw - k) for k in (-180, -90, 0, 90, 180)) < 1.0
    corners = np.array([[0, 0, 0], [ROOM[0], 0, 0], [0, ROOM[1], 0], [ROOM[0], ROOM[1], 0]], float)
    assert np.abs(apply_transform(T, corners)[:, 2]).max() < 0.02  # floor at z = 0
    lj = read_json(scene.root / "layout.json")
    assert lj["frame"] == "gravity_z_up_metric" and lj["scale"]["method"] == "user"
    assert lj["gravity"]["camera_up_vs_floor_normal_deg"] < 20
    assert np.allclose(lj["floor"]["normal"], [0, 0, 1], atol=1e-6) and abs(lj["floor"]["d"]) < 1e-4  # z = 0


def test_room_size_height_area(laid_out):
    scene, _, _ = laid_out
    room = read_json(scene.root / "layout.json")["room"]
    assert sorted(room["extent_m"]) == pytest.approx(sorted(ROOM[:2]), abs=0.1)
    assert room["height_m"] == pytest.approx(ROOM[2], abs=0.05)
    assert room["height_source"] == "ceiling_plane"
    assert room["floor_area_m2"] == pytest.approx(ROOM[0] * ROOM[1], rel=0.05)
    poly = np.asarray(room["polygon_xy"])
    assert 4 <= len(poly) <= 12
    walls = read_json(scene.root / "layout.json")["walls"]
    assert len(walls) >= 3
    centre = apply_transform(new_from_true(scene), np.array([[ROOM[0] / 2, ROOM[1] / 2, ROOM[2] / 2]]))[0]
    for w in walls:
        assert abs(w["normal"][2]) < 0.05
        assert np.dot(w["normal"], centre) + w["d"] > 0  # normals face into the room


def test_layout_leaves_the_sfm_frame_files_untouched(laid_out):
    scene, _, before = laid_out
    assert sfm_frame_bytes(scene) == before
    assert len([n for n in before if n.startswith("depth/")]) == len(room_poses())
    assert not list(scene.root.rglob(".*.tmp.*"))


def test_world_frame_loaders_give_the_metric_geometry(laid_out):
    scene, _, _ = laid_out
    T = new_from_true(scene)
    cams = scene.cameras(frame="world")
    true_centres = [-p[:3, :3].T @ p[:3, 3] for p in room_poses()]
    for c, tc in zip(cams, true_centres):
        assert np.linalg.norm(c.center_in_world - apply_transform(T, tc[None])[0]) < 0.01
        assert np.allclose(c.cam_from_world[:3, :3] @ c.cam_from_world[:3, :3].T, np.eye(3), atol=1e-9)
    assert 1.45 < cams[0].center_in_world[2] < 1.65
    m = scene.read_manifest()
    assert np.allclose(m["world_from_sfm"], read_json(scene.root / "layout.json")["world_from_sfm"])
    assert m["conventions"]["world"] == "gravity_z_up_metric"
    # mesh, points, sparse points: in the world frame, on the true surfaces
    T_inv = np.linalg.inv(T)
    mesh = scene.mesh(frame="world")
    assert mesh.frame == "world"
    assert np.median(room_surface_distance(apply_transform(T_inv, mesh.vertices))) < 0.02
    cloud = scene.points(frame="world")
    pts, nrm = cloud.points, cloud.normals
    assert np.percentile(room_surface_distance(apply_transform(T_inv, pts)), 99) < 0.03
    floorish = pts[:, 2] < 0.02
    assert np.median(nrm[floorish][:, 2]) > 0.99  # floor normals point up (towards the cameras)
    sp = scene.sparse_points(frame="world").points
    assert np.median(room_surface_distance(apply_transform(T_inv, sp))) < 0.01
    # depth in metres
    K = intrinsics(W, H)
    _, true_depth = render_room(room_poses()[0], K, W, H)
    dm = scene.depth(0, frame="world")
    assert dm.frame == "world"
    assert scene.scale("world") == pytest.approx(1 / SFM_SCALE)
    assert np.allclose(dm.depth, true_depth, rtol=1e-5)


def test_world_frame_needs_layout(fused_scene):
    with pytest.raises(StageFailed, match="layout"):
        fused_scene.cameras(frame="world")
    with pytest.raises(StageFailed, match="layout"):
        fused_scene.mesh(frame="world")


def test_layout_is_idempotent(laid_out, tmp_path):
    scene = _copy(laid_out[0], tmp_path / "again")
    before = sfm_frame_bytes(scene)
    lj1 = read_json(scene.root / "layout.json")
    cams1 = scene.cameras(frame="world")
    mesh1 = scene.mesh(frame="world").vertices
    d1 = scene.depth(10, frame="world").depth
    layout.run(Scene(scene.root), layout.Config(metric_scale=1.0 / SFM_SCALE))
    scene = Scene(scene.root)
    lj2 = read_json(scene.root / "layout.json")
    dT = np.abs(np.asarray(lj1["world_from_sfm"]) - np.asarray(lj2["world_from_sfm"])).max()
    assert dT < 1e-6, dT
    assert lj1["room"]["extent_m"] == pytest.approx(lj2["room"]["extent_m"], abs=1e-6)
    assert lj1["room"]["height_m"] == pytest.approx(lj2["room"]["height_m"], abs=1e-3)
    for a, b in zip(cams1, scene.cameras(frame="world")):
        assert np.allclose(a.cam_from_world, b.cam_from_world, atol=1e-7)
    assert np.abs(mesh1 - scene.mesh(frame="world").vertices).max() < 1e-4
    assert np.allclose(scene.depth(10, frame="world").depth, d1)
    assert sfm_frame_bytes(scene) == before


def test_fusion_after_layout_stays_in_the_sfm_frame(laid_out, tmp_path):
    scene = _copy(laid_out[0], tmp_path / "refuse")
    r = fusion.run(scene, fusion.Config(depth_to_voxel=60))  # coarser: quicker
    assert r.qc["units"] == "sfm" and r.qc["frame"] == "sfm"
    assert 0.02 < r.qc["voxel_size"] / SFM_SCALE < 0.06  # metres
    assert "frame: sfm" in fusion_comments(scene)
    T_inv = np.linalg.inv(new_from_true(scene))
    mesh = scene.mesh(frame="world")
    assert np.median(room_surface_distance(apply_transform(T_inv, mesh.vertices))) < 0.02
    # and layout again on top: same frame as before
    layout.run(scene, layout.Config(metric_scale=1.0 / SFM_SCALE))
    T1 = np.asarray(read_json(scene.root / "layout.json")["world_from_sfm"])
    T0 = np.asarray(read_json(laid_out[0].root / "layout.json")["world_from_sfm"])
    assert np.allclose(T1[:3, :3], T0[:3, :3], atol=5e-3)  # the re-fused points differ slightly: the origin
    assert np.allclose(T1[:3, 3], T0[:3, 3], atol=0.06)      # may move by a footprint cell


def fusion_comments(scene) -> list[str]:
    from vid2scene.io import read_ply_comments

    return read_ply_comments(scene.mesh_ply)


@pytest.mark.parametrize("priors,ceiling_m", [(["camera_height"], 2.6), (["camera_height", "ceiling_height"], ROOM[2])])
def test_scale_from_priors(fused_scene, tmp_path, priors, ceiling_m):
    scene = _copy(fused_scene, tmp_path / "priors")
    r = layout.run(scene, layout.Config(scale_priors=priors, camera_height_m=TRUE_CAMERA_HEIGHT,
                                        ceiling_height_m=ceiling_m))
    lj = read_json(scene.root / "layout.json")
    s = lj["scale"]["metres_per_sfm_unit"]
    assert s * SFM_SCALE == pytest.approx(1.0, rel=0.02)
    assert lj["scale"]["method"] == "priors"
    assert [e["source"] for e in lj["scale"]["estimates"]] == priors
    assert 0 < lj["scale"]["sigma"] < 0.15 * s
    assert lj["room"]["height_m"] == pytest.approx(ROOM[2], rel=0.03)
    assert r.qc["camera_height_m"] == pytest.approx(TRUE_CAMERA_HEIGHT, rel=0.02)


def _scene_with_points(tmp_path, pts):
    scene = make_dense_scene(tmp_path / "bad", poses=room_poses()[:3], sparse=False)
    scene.write_points(PointCloud(np.asarray(pts, np.float64)))
    mark_complete(scene, ("fusion",))
    return scene


def test_points_on_a_line_fail_with_reason(tmp_path):
    t = np.linspace(0, 1, 2000)[:, None]
    pts = np.array([0.1, 0.2, 0.3]) + t * np.array([1.0, 0.5, -0.2])
    scene = _scene_with_points(tmp_path, pts + 1e-4 * np.random.default_rng(0).standard_normal(pts.shape))
    with pytest.raises(StageFailed, match="along a line"):
        layout.run(scene, layout.Config())


def test_walls_only_give_a_fallback_layout_with_a_warning(tmp_path):
    rng = np.random.default_rng(0)
    # two vertical walls in the true world (x = 0 and y = 4), moved to the SfM frame: no floor
    a = np.c_[np.zeros(3000), rng.uniform(0, 4, 3000), rng.uniform(0, 2.7, 3000)]
    b = np.c_[rng.uniform(0, 5, 3000), np.full(3000, 4.0), rng.uniform(0, 2.7, 3000)]
    pts = apply_transform(sfm_from_world(), np.concatenate([a, b]))
    scene = _scene_with_points(tmp_path, pts)
    r = layout.run(scene, layout.Config())
    g = read_json(scene.root / "layout.json")["gravity"]
    assert g["floor_observed"] is False and r.qc["floor_observed"] is False
    assert any("no floor plane seen" in w for w in r.warnings)
    # the walls are vertical: the two wall normals fix up exactly (Manhattan), z up within 1°
    z_true = (new_from_true(scene)[:3, :3] @ np.array([0.0, 0.0, 1.0]))
    assert np.degrees(np.arccos(min(1.0, z_true[2] / np.linalg.norm(z_true)))) < 1.0


def test_too_few_points_fail(tmp_path):
    scene = _scene_with_points(tmp_path, np.zeros((5, 3)))
    with pytest.raises(StageFailed, match="only 5 points"):
        layout.run(scene, layout.Config())


def write_colmap_model(scene, frames, points) -> None:
    """A minimal COLMAP model in ``sfm/``: one PINHOLE camera, the registered images, the points."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    K = frames[0].K
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=frames[0].width, height=frames[0].height,
                                                    params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]], camera_id=1))
    for i, f in enumerate(frames):
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(f.cam_from_world[:3, :3]), f.cam_from_world[:3, 3])
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f.name, camera_id=1, image_id=i + 1), pose)
    for p in points:
        rec.add_point3D(np.asarray(p, float), pycolmap.Track(), np.array([128, 128, 128], np.uint8))
    scene.sfm_dir.mkdir(exist_ok=True)
    rec.write(str(scene.sfm_dir))


def test_a_colmap_model_changes_nothing(fused_scene, laid_out, tmp_path):
    """The cameras are read from ``cameras.json`` (SfM frame, never rewritten); a COLMAP model in ``sfm/``
    holding the same cameras gives the same world frame and is left as it is."""
    scene = _copy(fused_scene, tmp_path / "colmap")
    frames = scene.cameras()
    sparse = scene.sparse_points().points
    write_colmap_model(scene, frames, sparse[:500])
    before = sfm_frame_bytes(scene)
    layout.run(scene, layout.Config(metric_scale=1.0 / SFM_SCALE))
    ref = laid_out[0].cameras(frame="world")
    for a, b in zip(scene.cameras(frame="world"), ref):
        assert a.name == b.name and np.allclose(a.cam_from_world, b.cam_from_world, atol=1e-6)
    assert sfm_frame_bytes(scene) == before
    assert len(scene.reconstruction().points3D) == 500


def _warped_floor_and_wall(rng, tilt_deg: float):
    """A 6 m × 4 m floor with a ±2 cm bowl-shaped warp whose flat RANSAC-sized patch (x < 1.2 m) is tilted by
    ``tilt_deg`` about y, and a vertical wall at y = 4 m; true up is +z."""
    x = rng.uniform(0, 6, 40000)
    y = rng.uniform(0, 4, 40000)
    z = 0.02 * (((x - 3) / 3) ** 2 + ((y - 2) / 2) ** 2) + rng.normal(0, 0.003, x.size)
    patch = x < 1.2
    z[patch] += np.tan(np.radians(tilt_deg)) * (x[patch] - 0.6)
    floor = np.stack([x, y, z], 1)
    wx, wz = rng.uniform(0, 6, 20000), rng.uniform(0, 2.5, 20000)
    wall = np.stack([wx, np.full_like(wx, 4.0) + rng.normal(0, 0.003, wx.size), wz], 1)
    return floor, wall


def test_floor_refit_and_manhattan_gravity_beat_a_tilted_patch():
    rng = np.random.default_rng(0)
    floor, wall = _warped_floor_and_wall(rng, tilt_deg=3.0)
    patch = floor[floor[:, 0] < 1.2]
    c = patch.mean(0)
    n_patch = np.linalg.svd(patch - c)[2][2]
    n_patch *= np.sign(n_patch[2])
    err = lambda n: np.degrees(np.arccos(min(1.0, abs(n[2]) / np.linalg.norm(n))))  # noqa: E731
    assert err(n_patch) > 2.0  # what a thin RANSAC patch gives
    n_refit, d_refit, used = layout.refit_floor(floor, n_patch, -float(n_patch @ c), band=0.15, huber=0.01)
    assert used > 0.9 * len(floor)
    assert err(n_refit) < 0.6 * err(n_patch)
    assert abs(d_refit) < 0.05  # the plane stays at the floor
    wall_plane = {"normal": np.array([0.0, -1.0, 0.0]), "inliers": np.arange(len(wall))}
    n_m = layout.manhattan_up(n_refit, [wall_plane])
    assert abs(n_m @ wall_plane["normal"]) < 1e-3  # orthogonal to the vertical wall
    assert n_m[2] > 0 and err(n_m) <= err(n_refit) + 1e-9
    assert np.allclose(layout.manhattan_up(n_refit, []), n_refit)


def test_footprint_opening_cuts_a_bridge_to_a_neighbouring_space():
    rng = np.random.default_rng(1)
    room = rng.uniform([0, 0], [5, 4], (40000, 2))
    bridge = np.stack([rng.uniform(5, 6, 400), rng.uniform(1.95, 2.05, 400)], 1)  # 10 cm wide door spur
    annex = rng.uniform([6, 0], [7, 3], (3000, 2))  # a smaller space beyond it
    poly, area, extent, mn = layout.footprint(np.concatenate([room, bridge, annex]), 0.05)
    assert area == pytest.approx(20.0, rel=0.05)
    assert extent[0] == pytest.approx(5.0, abs=0.1) and extent[1] == pytest.approx(4.0, abs=0.1)
    assert len(poly) <= 6  # a rectangle, not a staircase
    poly2, area2, _, _ = layout.footprint(np.concatenate([room, bridge, annex]), 0.05, open_m=0.0)
    assert area2 > area + 2.0  # without the opening the annex is joined through the bridge

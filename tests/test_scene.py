"""Scene: typed loaders and writers, and the world frame applied on load (never by rewriting files)."""

from __future__ import annotations

import numpy as np
import pytest

from vid2scene import geometry
from vid2scene.errors import InputError, StageFailed
from vid2scene.scene import SFM, WORLD, CameraFrame, Mesh, PointCloud, Scene

T_WS = geometry.sim3(0.5, geometry.rot_z(0.7), [1.0, -2.0, 0.3])
K = np.array([[100.0, 0, 40.0], [0, 100.0, 30.0], [0, 0, 1]])


def _scene(tmp_path) -> Scene:
    return Scene.create(tmp_path / "s", {"path": "x", "kind": "synthetic", "sha256": "0" * 64, "size_bytes": 0})


def _with_sfm_assets(scene: Scene) -> None:
    pose = np.eye(4)
    pose[:3, 3] = [0.1, 0.2, 0.3]
    scene.write_cameras([CameraFrame("000000.jpg", 0, 0.0, 80, 60, K, pose),
                         CameraFrame("000010.jpg", 10, 1.0, 80, 60, K, None)],
                        distortion={"model": "PINHOLE", "params": [100, 100, 40, 30]})
    pts = np.array([[0.0, 0, 2], [1, 0, 2], [0, 1, 3]])
    scene.write_sparse_points(pts, np.array([[255, 0, 0]] * 3, np.uint8))
    scene.write_points(PointCloud(pts, np.zeros((3, 3), np.uint8), np.array([[0, 0, 1.0]] * 3)))
    scene.write_mesh(Mesh(pts, np.array([[0, 1, 2]]), np.full((3, 3), 9, np.uint8), None))
    scene.write_depth(0, np.full((6, 8), 2.0, np.float32), np.ones((6, 8), np.float32), n_sources=np.int32(3))


def test_world_frame_is_applied_on_load_and_files_are_untouched(tmp_path):
    scene = _scene(tmp_path)
    _with_sfm_assets(scene)
    with pytest.raises(StageFailed, match="layout"):
        scene.cameras(frame=WORLD)
    before = {p.name: p.read_bytes() for p in scene.root.rglob("*") if p.is_file() and p.name != "manifest.json"}
    scene.write_layout({"frame": "gravity_z_up_metric", "world_from_sfm": T_WS.tolist()})
    after = {p.name: p.read_bytes() for p in scene.root.rglob("*") if p.is_file() and p.name in before}
    assert after == before  # nothing written before layout is rewritten
    assert np.allclose(scene.world_from_sfm(), T_WS)
    assert scene.read_manifest()["world_from_sfm"] == T_WS.tolist()
    assert scene.scale(WORLD) == pytest.approx(0.5) and scene.scale(SFM) == 1.0

    sfm_pts = scene.sparse_points(SFM).points
    world = scene.sparse_points(WORLD)
    assert world.frame == WORLD and np.allclose(world.points, geometry.apply_transform(T_WS, sfm_pts))
    assert np.array_equal(world.colors, scene.sparse_points().colors)

    cams_s, cams_w = scene.cameras(SFM), scene.cameras(WORLD)
    assert not cams_w[1].registered
    uv_s, z_s = geometry.project(sfm_pts, K, cams_s[0].cam_from_world)
    uv_w, z_w = geometry.project(world.points, K, cams_w[0].cam_from_world)
    assert np.allclose(uv_s, uv_w) and np.allclose(z_w, 0.5 * z_s)

    d_s, d_w = scene.depth(0, SFM), scene.depth(0, WORLD)
    assert np.allclose(d_w.depth, 0.5 * d_s.depth) and d_w.frame == WORLD
    assert int(d_s.extras["n_sources"]) == 3

    pc = scene.points(WORLD)
    assert np.allclose(pc.normals, [[0, 0, 1.0]] * 3)  # a rotation about z keeps vertical normals
    mesh = scene.mesh(WORLD)
    assert np.allclose(mesh.vertices, world.points) and mesh.triangles.tolist() == [[0, 1, 2]]
    assert mesh.colors.dtype == np.uint8 and (mesh.colors == 9).all()
    assert scene.camera_distortion()["model"] == "PINHOLE"


def test_missing_assets_name_the_stage_to_run(tmp_path):
    scene = _scene(tmp_path)
    for load, stage in ((scene.cameras, "sfm"), (scene.mesh, "fusion"), (scene.points, "fusion"),
                        (scene.layout, "layout"), (scene.instances, "instances"), (scene.keyframes, "keyframes")):
        with pytest.raises(StageFailed, match=stage):
            load()
    with pytest.raises(StageFailed, match="depth"):
        scene.depth(5)
    assert scene.detections(5) is None and scene.people_boxes(5) == [] and scene.depth_frames() == []
    with pytest.raises(ValueError):
        scene.cameras(frame="metric")
    with pytest.raises(InputError):
        Scene(tmp_path / "nothing").read_manifest()


def test_writers_refuse_world_frame_geometry(tmp_path):
    scene = _scene(tmp_path)
    with pytest.raises(ValueError):
        scene.write_mesh(Mesh(np.zeros((3, 3)), np.array([[0, 1, 2]]), frame=WORLD))
    with pytest.raises(ValueError):
        scene.write_points(PointCloud(np.zeros((3, 3)), frame=WORLD))


def test_detections_and_people_boxes(tmp_path):
    scene = _scene(tmp_path)
    scene.write_detections(7, {"frame": 7, "width": 200, "height": 100, "detector": "x",
                               "detections": [{"label": "chair", "score": 0.9, "bbox_xyxy": [1, 2, 3, 4]}],
                               "people": [{"score": 0.8, "bbox_xyxy": [20, 10, 60, 50]}]})
    assert scene.detection_frames() == [7]
    assert scene.detections(7)["detections"][0]["label"] == "chair"
    assert scene.people_boxes(7) == [[20.0, 10.0, 60.0, 50.0]]
    assert scene.people_boxes(7, size=(100, 50)) == [[10.0, 5.0, 30.0, 25.0]]


def test_keyframe_image_and_resize(tmp_path):
    from vid2scene.io import write_image_rgb

    scene = _scene(tmp_path)
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :30] = [255, 0, 0]
    write_image_rgb(scene.keyframe_path(3), img, jpeg_quality=100)
    rgb = scene.keyframe_image(3)
    assert rgb.shape == (40, 60, 3) and rgb[20, 5, 0] > 240 and rgb[20, 5, 2] < 20  # RGB order kept
    assert scene.keyframe_image(3, size=(30, 20)).shape == (20, 30, 3)
    with pytest.raises(StageFailed):
        scene.keyframe_image(4)

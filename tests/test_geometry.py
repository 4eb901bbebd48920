"""vid2scene.geometry: transforms, projection, back-projection, ray casting and boxes against hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vid2scene import geometry as g


def _rot(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = math.radians(deg)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * K @ K


T_WS = g.sim3(0.37, _rot([0.3, -0.8, 0.5], 57.0), [0.4, -1.1, 2.3])  # world_from_sfm
K = np.array([[200.0, 0, 80.0], [0, 210.0, 60.0], [0, 0, 1]])


def _pose():
    T = np.eye(4)
    T[:3, :3] = _rot([0.1, 1.0, 0.2], 20.0)
    T[:3, 3] = [0.2, -0.1, 3.0]
    return T


def test_sim3_parts_and_inverse():
    assert g.sim3_scale(T_WS) == pytest.approx(0.37, rel=1e-12)
    R = g.sim3_rotation(T_WS)
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-12) and np.linalg.det(R) == pytest.approx(1.0)
    p = np.random.default_rng(0).normal(size=(10, 3))
    assert np.allclose(g.apply_transform(g.invert(T_WS), g.apply_transform(T_WS, p)), p, atol=1e-12)
    assert g.sim3_scale(None) == 1.0


def test_transform_pose_keeps_every_pixel():
    """A camera moved into another frame sees the moved points at the same pixels, depth scaled by s."""
    rng = np.random.default_rng(1)
    pts_sfm = rng.uniform([-1, -1, 2], [1, 1, 5], size=(50, 3))
    pose_sfm = np.eye(4)
    uv0, z0 = g.project(pts_sfm, K, pose_sfm)
    pose_world = g.transform_pose(pose_sfm, T_WS)
    uv1, z1 = g.project(g.apply_transform(T_WS, pts_sfm), K, pose_world)
    assert np.allclose(uv0, uv1, atol=1e-9)
    assert np.allclose(z1, 0.37 * z0, rtol=1e-12)
    R = pose_world[:3, :3]
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.allclose(g.camera_center(pose_world), g.apply_transform(T_WS, [[0, 0, 0]])[0], atol=1e-12)


def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(40, 3))
    T = g.umeyama(src, g.apply_transform(T_WS, src))
    assert np.allclose(T, T_WS, atol=1e-9)
    T_rigid = g.umeyama(src, g.apply_transform(g.sim3(1.0, _rot([0, 0, 1], 30), [1, 2, 3]), src), with_scale=False)
    assert g.sim3_scale(T_rigid) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        g.umeyama(src[:2], src[:2])


def test_backproject_inverts_project():
    pose = _pose()
    depth = np.full((120, 160), 2.5, np.float32)
    depth[10, 20] = 0  # unknown
    pts, idx = g.backproject(depth, K, pose)
    assert len(pts) == depth.size - 1 and (10 * 160 + 20) not in set(idx.tolist())
    uv, z = g.project(pts, K, pose)
    v, u = np.divmod(idx, 160)
    assert np.allclose(uv, np.stack([u + 0.5, v + 0.5], 1), atol=1e-6)
    assert np.allclose(z, 2.5, atol=1e-6)
    pts2, idx2 = g.backproject(depth, K, pose, stride=4)
    assert set(idx2.tolist()) <= set(idx.tolist()) and np.all((idx2 // 160) % 4 == 0)


def test_intrinsics_for_size_scales_pixels():
    pose = _pose()
    p = np.random.default_rng(3).uniform([-0.5, -0.5, 0], [0.5, 0.5, 1], size=(20, 3))
    uv, _ = g.project(p, K, pose)
    K2 = g.intrinsics_for_size(K, (160, 120), (80, 30))
    uv2, _ = g.project(p, K2, pose)
    assert np.allclose(uv2, uv * [0.5, 0.25], atol=1e-9)
    assert np.allclose(g.cv_K(K)[:2, 2], K[:2, 2] - 0.5)


def test_raycaster_sees_a_plane_at_its_depth():
    pytest.importorskip("open3d")
    V = np.array([[-10, -10, 2.0], [10, -10, 2.0], [10, 10, 2.0], [-10, 10, 2.0]])
    F = np.array([[0, 1, 2], [0, 2, 3]])
    ray = g.MeshRaycaster(V, F)
    d, tri = ray.cast(K, np.eye(4), 160, 120)
    assert d.shape == (120, 160) and np.allclose(d, 2.0, atol=1e-5)
    assert set(np.unique(tri).tolist()) <= {0, 1}
    # looking away: nothing hit
    back = np.diag([1.0, -1.0, -1.0, 1.0])
    d2, tri2 = ray.cast(K, back, 160, 120)
    assert np.isinf(d2).all() and (tri2 == -1).all()
    assert np.isinf(g.MeshRaycaster(V, np.zeros((0, 3), int)).depth(K, np.eye(4), 16, 12)).all()


def test_box_corners_order_and_edges():
    c = g.box_corners([1.0, 2.0, 0.5], [2.0, 1.0, 1.0], math.pi / 2)
    assert c.shape == (8, 3)
    assert np.allclose(c[:4, 2], 0.0) and np.allclose(c[4:, 2], 1.0)
    assert np.allclose(c[:4, :2], c[4:, :2])  # i and i + 4 are a vertical edge
    # yaw 90°: local x (length 2) along world y; first corner is (-x, -y) local = (+0.5, -1) world offset
    assert np.allclose(c[0, :2], [1.5, 1.0])
    assert np.allclose(c[1, :2], [1.5, 3.0])
    # counter-clockwise footprint: positive signed area
    x, y = c[:4, 0], c[:4, 1]
    assert 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) == pytest.approx(2.0)
    lengths = sorted(np.linalg.norm(c[a] - c[b]) for a, b in g.box_edges())
    assert np.allclose(lengths, [1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2])


def test_box_ious():
    a = {"center": [0, 0, 0.5], "size": [2, 2, 1], "yaw_rad": 0.0}
    assert g.box_iou_3d(a, a) == pytest.approx(1.0)
    b = dict(a, center=[1, 0, 0.5])  # half overlap: 2 / (4 + 4 - 2)
    assert g.box_iou_3d(a, b) == pytest.approx(1 / 3)
    r = dict(a, yaw_rad=math.pi / 2)  # a square rotated by 90° is itself
    assert g.box_iou_3d(a, r) == pytest.approx(1.0)
    assert g.box_iou_3d(a, dict(a, center=[0, 0, 5])) == 0.0
    A = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 6]], float)
    M = g.box_iou_2d_matrix(A, A)
    for i in range(3):
        for j in range(3):
            assert M[i, j] == pytest.approx(g.box_iou_2d(A[i], A[j]))
    assert M[0, 1] == pytest.approx(1 / 7)


def test_project_box_and_in_image():
    box = g.project_box([0, 0, 4.0], [0.4, 0.4, 0.4], 0.0, K, np.eye(4), 160, 120)
    assert box is not None
    x0, y0, x1, y1 = box
    assert x0 < 80 < x1 and y0 < 60 < y1
    assert g.project_box([0, 0, -4.0], [0.4, 0.4, 0.4], 0.0, K, np.eye(4), 160, 120) is None
    uv = np.array([[5.0, 5.0], [170.0, 5.0], [5.0, 5.0]])
    assert g.in_image(uv, np.array([1.0, 1.0, -1.0]), 160, 120).tolist() == [True, False, False]

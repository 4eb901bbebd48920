"""eval-geometry on hand-made cases: a plane shifted by 2 cm, rescaled depth, a random SfM frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from vid2scene.evaluation import geometry as eg
from tests.fixtures.adapt_rooms import grid_plane, plane_scene


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    return plane_scene(tmp_path_factory.mktemp("plane"), shift_m=0.02)


def test_plane_shifted_by_2cm_has_accuracy_2cm(plane):
    ref = eg.read_reference(plane.reference_ply, plane.poses_txt)
    res = eg.evaluate_geometry(plane.scene, ref, icp=False, tau_m=0.05, n_samples=20_000)
    assert res["camera_centre_rmse_m"] < 1e-6
    assert res["scale_ref_per_sfm"] == pytest.approx(1 / np.cbrt(np.linalg.det(plane.sfm_from_ref[:3, :3])), rel=1e-6)
    assert res["accuracy_m"] == pytest.approx(0.02, abs=2e-4)
    assert res["completeness_m"] == pytest.approx(0.02, abs=2e-3)
    assert res["chamfer_m"] == pytest.approx(0.02, abs=1e-3)
    assert res["fscore"] == pytest.approx(1.0)
    tight = eg.evaluate_geometry(plane.scene, ref, icp=False, tau_m=0.01, n_samples=20_000, depth=False)
    assert tight["fscore"] == 0.0
    # depth: our depth is the shifted plane's, the reference the plane's: AbsRel = mean 2 cm / depth along the ray
    assert 0.005 < res["absrel"] < 0.03 and res["delta1"] == pytest.approx(1.0)
    assert res["n_depth_frames"] == 8


def test_icp_removes_a_rigid_offset(plane):
    ref = eg.read_reference(plane.reference_ply, plane.poses_txt)
    res = eg.evaluate_geometry(plane.scene, ref, icp=True, n_samples=20_000, depth=False)
    assert res["accuracy_m"] < 0.003 and res["fscore"] == pytest.approx(1.0)


def test_rescaled_depth_gives_its_absrel(tmp_path):
    case = plane_scene(tmp_path, shift_m=0.0, depth_factor=1.1, seed=3)
    ref = eg.read_reference(case.reference_ply, case.poses_txt)
    res = eg.evaluate_geometry(case.scene, ref, icp=False, n_samples=10_000)
    assert res["accuracy_m"] < 1e-3 and res["completeness_m"] < 5e-3
    assert res["absrel"] == pytest.approx(0.1, abs=2e-3)
    assert res["delta1"] == pytest.approx(1.0)


def test_observed_space_ignores_unseen_reference():
    v, t = grid_plane(2.0, 11)
    views = [eg.View(0, np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]),
                     np.array([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1.0], [0, 0, 0, 1]]), (64, 48), None)]
    # camera 1 m above the origin looking down: sees |x| < 0.64, |y| < 0.48
    pts = np.array([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.0, 2.0]])
    assert eg.observed_mask(pts, views).tolist() == [True, False, False]
    d = np.full((48, 64), 1.0, np.float32)
    views[0].depth = d
    behind = np.array([[0.0, 0.0, -0.5], [0.0, 0.0, 0.5]])  # hidden behind the surface / in front of it
    assert eg.observed_mask(behind, views).tolist() == [False, True]


def test_surface_metrics_hand_computed():
    m = eg.surface_metrics(np.array([0.01, 0.03]), np.array([0.02, 0.06, 0.1]), 0.05)
    assert m["accuracy_m"] == pytest.approx(0.02) and m["completeness_m"] == pytest.approx(0.06)
    assert m["chamfer_m"] == pytest.approx(0.04)
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(1 / 3)
    assert m["fscore"] == pytest.approx(0.5)


def test_hololens_layout_reader(tmp_path):
    import cv2

    (tmp_path / "depth").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "depth" / f"{i + 3:05d}.png"), np.full((6, 8), 1500 + i, np.uint16))
    c2w = np.tile(np.eye(4).ravel(), (3, 1))
    c2w[:, 3] = [0.0, 1.0, 2.0]
    np.savetxt(tmp_path / "poses.txt", c2w)
    np.savetxt(tmp_path / "K.txt", np.array([[5.0, 0, 4], [0, 5, 3], [0, 0, 1]]))
    ref = eg.read_reference(tmp_path)
    assert ref.size == (8, 6) and sorted(ref.poses) == [0, 1, 2]
    assert ref.poses[2][0, 3] == pytest.approx(-2.0)
    assert ref.depth_image(1)[0, 0] == pytest.approx(1.501)


def test_cli_json_keys(plane):
    import typer

    app = typer.Typer()
    app.command("eval-geometry")(eg.make_command())
    app.command("noop")(lambda: None)
    r = CliRunner().invoke(app, ["eval-geometry", str(plane.scene.root), "--gt", str(plane.reference_ply),
                                 "--gt-poses", str(plane.poses_txt), "--no-icp", "--samples", "5000", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert set(eg.JSON_KEYS) <= set(res)
    assert res["accuracy_m"] == pytest.approx(0.02, abs=5e-4)
    r = CliRunner().invoke(app, ["eval-geometry", str(plane.scene.root), "--gt", str(plane.reference_ply)])
    assert r.exit_code != 0 and "poses" in r.output


def test_hololens_layout_end_to_end(tmp_path):
    from tests.fixtures.adapt_rooms import hololens_reference, room_scene, with_true_mesh

    case = room_scene(tmp_path / "room", n=6, w=64, h=48, write_true_depth=True)
    with_true_mesh(case)
    ref = eg.read_reference(hololens_reference(case, tmp_path / "gt"))
    res = eg.evaluate_geometry(case.scene, ref, icp=True, n_samples=30_000)
    # the reference is a TSDF of the true depth (voxel = median depth / 100): ours is the exact surface
    assert res["n_aligned_cameras"] == 6 and res["camera_centre_rmse_m"] < 1e-6
    assert res["accuracy_m"] < 0.01 and res["completeness_m"] < 0.01 and res["fscore"] > 0.97
    assert res["absrel"] < 1e-3 and res["delta1"] == pytest.approx(1.0)

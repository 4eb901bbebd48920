"""``layout``'s gravity cues on the synthetic room: each cue alone recovers up, a room whose floor is never in
view still gets z up and a complete layout with ``floor_observed: false`` (and a warning), and the layout.json
contract fields (``gravity.floor_observed / cue / uncertainty_deg / cues``, ``floor.height_uncertainty_m``)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures.dense import SFM_SCALE, fused_room, make_dense_scene, mark_complete, sfm_from_world
from tests.fixtures.room import look_at
from vid2scene import fusion, layout
from vid2scene.io import read_json


def true_up_in_sfm() -> np.ndarray:
    u = sfm_from_world()[:3, :3] @ np.array([0.0, 0.0, 1.0])
    return u / np.linalg.norm(u)


def z_error_deg(scene) -> float:
    """Angle (degrees) between the layout's +z and the true up."""
    T = np.asarray(read_json(scene.root / "layout.json")["world_from_sfm"])
    z = (T[:3, :3] @ sfm_from_world()[:3, :3]) @ np.array([0.0, 0.0, 1.0])
    return float(np.degrees(np.arccos(np.clip(z[2] / np.linalg.norm(z), -1, 1))))


def pitched_up_poses(pitch_deg: float = 32.0) -> list[np.ndarray]:
    """Cameras looking around from two standpoints, pitched up so far that the floor (and the furniture tops
    below the cameras) never enter the 120-px-high view (vertical half-FOV ~25°)."""
    poses = []
    for eye in ((1.8, 1.6, 1.5), (3.0, 1.8, 1.6)):
        eye = np.asarray(eye)
        for k in range(10):
            yaw, p = np.radians(36.0 * k), np.radians(pitch_deg)
            poses.append(look_at(eye, eye + np.array([np.cos(yaw) * np.cos(p), np.sin(yaw) * np.cos(p), np.sin(p)])))
    return poses


@pytest.fixture(scope="module")
def no_floor_scene(tmp_path_factory):
    scene = make_dense_scene(tmp_path_factory.mktemp("nofloor") / "scene", poses=pitched_up_poses())
    fusion.run(scene, fusion.Config())
    mark_complete(scene, ("fusion",))
    return scene


def test_floor_never_in_view_gives_z_up_and_floor_observed_false(no_floor_scene):
    r = layout.run(no_floor_scene, layout.Config())
    lj = read_json(no_floor_scene.root / "layout.json")
    g = lj["gravity"]
    assert g["floor_observed"] is False and lj["floor"]["observed"] is False
    assert z_error_deg(no_floor_scene) < 5.0
    assert lj["floor"]["height_cue"] in ("horizontal_support", "lowest_points", "camera_height_prior")
    assert lj["floor"]["height_uncertainty_m"] > 0 and g["uncertainty_deg"] > 0
    assert {c["cue"] for c in g["cues"]} >= {"camera_axes"} and "floor" not in {c["cue"] for c in g["cues"]}
    assert any("no floor plane seen" in w for w in r.warnings)
    assert lj["room"]["floor_area_m2"] > 0 and lj["scale"]["metres_per_sfm_unit"] > 0


def test_vanishing_points_alone_recover_up(no_floor_scene):
    layout.run(no_floor_scene, layout.Config(gravity_cues=["vanishing_points"], manhattan_gravity=False))
    g = read_json(no_floor_scene.root / "layout.json")["gravity"]
    assert [c["cue"] for c in g["cues"]] == ["vanishing_points"], g["cues"]
    assert g["cues"][0]["n_inliers"] >= 20
    assert z_error_deg(no_floor_scene) < 2.0


def test_camera_axes_are_robust_to_pitch(no_floor_scene):
    # a walk that turns through ~110° only (views 0-3 of each standpoint), pitched up by 32°
    frames = [f for i, f in enumerate(no_floor_scene.cameras()) if f.registered and i % 10 < 4]
    mean_up = layout.camera_up(frames)
    axes_up, spread = layout.camera_axes_up(frames)
    assert layout.angle_deg(mean_up, true_up_in_sfm()) > 15.0  # the mean −y axis leans with the pitch
    assert layout.angle_deg(axes_up, true_up_in_sfm()) < 1.5 and spread > 0.05


def test_floor_scene_reports_every_cue_and_the_floor_dominates(tmp_path_factory):
    import shutil

    scene0 = fused_room(tmp_path_factory)[0]
    root = tmp_path_factory.mktemp("cues") / "scene"
    shutil.copytree(scene0.root, root)
    from vid2scene.scene import Scene

    scene = Scene(root)
    r = layout.run(scene, layout.Config(metric_scale=1.0 / SFM_SCALE))
    g = read_json(root / "layout.json")["gravity"]
    assert g["floor_observed"] is True and g["cue"].startswith("floor")
    names = [c["cue"] for c in g["cues"]]
    assert "floor" in names and "camera_axes" in names
    floor = next(c for c in g["cues"] if c["cue"] == "floor")
    assert floor["weight"] == max(c["weight"] for c in g["cues"])
    assert z_error_deg(scene) < 1.0 and not any("no floor" in w for w in r.warnings)
    # the floor cue disabled: the fallback alone still gives z up within 5°
    layout.run(scene, layout.Config(metric_scale=1.0 / SFM_SCALE, gravity_cues=["horizontal_planes",
                                                                                "vanishing_points", "camera_axes"]))
    assert read_json(root / "layout.json")["gravity"]["floor_observed"] is False
    assert z_error_deg(scene) < 5.0


def test_combine_cues_weights_by_inverse_variance():
    a = {"cue": "a", "up_in_sfm": np.array([0.0, 0.0, 1.0]), "sigma_deg": 1.0}
    b = {"cue": "b", "up_in_sfm": np.array([0.0, -np.sin(0.1), -np.cos(0.1)]), "sigma_deg": 3.0}  # sign flipped
    u, sigma = layout.combine_cues([a, b], np.array([0.0, 0.0, 1.0]))
    # weights 1 and 1/9: the mean lies ~1/10 of the way from a to b (5.7° apart)
    assert layout.angle_deg(u, a["up_in_sfm"]) == pytest.approx(0.573, abs=0.06)
    assert a["weight"] == pytest.approx(1.0) and b["weight"] == pytest.approx(1 / 9)
    assert sigma >= 1 / np.sqrt(1 + 1 / 9)

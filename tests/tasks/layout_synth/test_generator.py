"""The ``layout_synth`` generator end to end on the synthetic scene: outputs, planted errors, config file,
missing inputs."""

from __future__ import annotations

import pytest

from tests.fixtures import layout_scene as ls
from vid2scene.errors import InputError, StageFailed
from vid2scene.export.spatiallm import parse_layout
from vid2scene.io import read_json
from vid2scene.tasks import layout_synth as L
from vid2scene.tasks.layout_synth.plan import Plan

SCORES = ("collision_rate", "out_of_room_rate", "support_violation_rate", "reachable_floor_share", "f1_iou25",
          "wall_parallel_share", "frame_agreement")


def fast(render=None, **kw) -> L.Config:
    return L.Config(render={"width": 96, "max_trajectory_frames": 4, "max_walk_frames": 6, **(render or {})},
                    max_agreement_frames=4, agreement_width=96, **kw)


def test_plugin_shape():
    assert L.NAME == "layout_synth" and L.OUTPUTS == ["tasks/layout_synth/"]
    with pytest.raises(Exception):
        L.Config(unknown=1)


def test_outputs_on_the_clean_scene(tmp_path):
    import av

    scene = ls.write_layout_scene(tmp_path / "s", n_cameras=6)
    res = L.run(scene, fast())
    d = scene.task_path("layout_synth")
    plan = Plan.from_json(read_json(d / "plan.json"))
    raw = Plan.from_json(read_json(d / "plan_raw.json"))
    assert len(plan.objects) == len(raw.objects) == 8
    text = parse_layout((d / "layout.txt").read_text())
    assert len(text["walls"]) == 4 and len(text["bboxes"]) == 8
    assert {b["class_name"] for b in text["bboxes"]} >= {"dining_table", "chair", "laptop"}
    s = read_json(d / "scores.json")
    for k in SCORES:
        assert k in s["before"] and k in s["after"]
    assert s["after"]["f1_iou25"] == 1.0 and s["after"]["collision_rate"] == 0 and s["after"]["frame_agreement"] > 0.9
    assert s["solver"]["mean_displacement_xy_m"] == 0 and s["after"]["fpvscore"]["status"] == "skipped"
    views = read_json(d / "fpv/views.json")
    traj, walk = views["paths"]["trajectory"]["frames"], views["paths"]["walk"]["frames"]
    assert len(traj) == 4 and len(walk) >= 6 and (d / "fpv" / traj[0]["image"]).is_file()
    assert (d / "fpv" / walk[-1]["image"]).is_file() and traj[0]["width"] == 96
    for name, n in (("trajectory", len(traj)), ("walk", len(walk))):
        with av.open(str(d / f"fpv/{name}.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == n
    assert res.qc["f1_iou25_after"] == 1.0 and res.qc["render_s"] > 0 and res.warnings == []


def test_planted_errors_are_fixed(tmp_path):
    recs = ls.plant_overlap(ls.instance_records(), 2, 1, 0.2)
    recs = ls.plant_through_wall(recs, 4, 0.3, "west")
    recs = ls.plant_floating(recs, 3, 0.4)
    scene = ls.write_layout_scene(tmp_path / "s", recs, n_cameras=4)
    res = L.run(scene, fast(render={"enabled": False}, n_variations=2))
    s = read_json(scene.task_path("layout_synth/scores.json"))
    b, a = s["before"], s["after"]
    assert b["collision_rate"] > 0 and b["out_of_room_rate"] > 0 and b["support_violation_rate"] > 0
    assert a["collision_rate"] == a["out_of_room_rate"] == a["support_violation_rate"] == 0
    assert s["solver"]["mean_displacement_xy_m"] <= 0.3 and "render" not in s
    assert len(s["variations"]) == 2 and scene.task_path("layout_synth/variations/plan_01.json").is_file()
    assert all(v["collision_rate"] == 0 for v in s["variations"])
    assert res.qc["collision_rate_before"] > 0 and res.qc["collision_rate_after"] == 0


def test_cli_function_with_a_config_file(tmp_path):
    scene = ls.write_layout_scene(tmp_path / "s", n_cameras=3)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("layout_synth:\n  render: {enabled: false}\n  solver: {padding_m: 0.1}\n")
    res = L.synth_layout(scene.root, cfg)
    assert res.qc["n_objects"] == 8 and scene.task_path("layout_synth/plan.json").is_file()
    assert not scene.task_path("layout_synth/fpv").exists()
    bad = tmp_path / "b.yaml"
    bad.write_text("solver: {step: 3}\n")
    with pytest.raises(InputError, match="invalid layout_synth config"):
        L.synth_layout(scene.root, bad)
    with pytest.raises(InputError, match="no such scene folder"):
        L.synth_layout(tmp_path / "nope")


def test_missing_inputs(tmp_path):
    scene = ls.write_layout_scene(tmp_path / "s", n_cameras=3)
    scene.cameras_json.unlink()
    res = L.run(scene, fast(render={"max_walk_frames": 2}))
    assert any("no cameras" in w for w in res.warnings)
    s = read_json(scene.task_path("layout_synth/scores.json"))
    assert s["after"]["frame_agreement"] is None and s["render"]["n_trajectory_frames"] == 0
    scene.instances_json.unlink()
    with pytest.raises(StageFailed):
        L.run(scene, fast())
    lay = ls.layout_doc()
    lay["room"] = None
    scene = ls.write_layout_scene(tmp_path / "t", n_cameras=3)
    scene.write_layout(lay)
    with pytest.raises(InputError, match="room polygon"):
        L.run(scene, fast())


def test_config_file_forms(tmp_path):
    j = tmp_path / "c.json"
    j.write_text('{"solver": {"padding_m": 0.02}, "n_variations": 1}')
    cfg = L.load_config(j)
    assert cfg.solver.padding_m == 0.02 and cfg.n_variations == 1
    assert L.load_config(None) == L.Config()
    broken = tmp_path / "x.yaml"
    broken.write_text("layout_synth: [unclosed\n")
    with pytest.raises(InputError, match="cannot parse"):
        L.load_config(broken)
    with pytest.raises(InputError, match="not found"):
        L.load_config(tmp_path / "missing.yaml")

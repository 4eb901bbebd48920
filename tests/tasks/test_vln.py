"""Navigation: trajectory refinement, free space / navigation graph, VLN-CE action encoding (replay reaches the
goal), habitat conventions, landmark naming and the episodes of the synthetic scene."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.fixtures.task_scene import walk_length, walk_points, write_scene
from vid2scene.cli import app
from vid2scene.tasks import common, nav, vln


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("vln") / "room")


def _is_simple(seg: np.ndarray, radius: float, gap: float) -> bool:
    xy = seg[:, :2]
    arc = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    behind = np.abs(arc[:, None] - arc[None])
    return not np.any((d < radius) & (behind > gap))


def test_refine_erases_back_tracking():
    pts = walk_points()
    t = np.arange(len(pts)) * 0.1
    tr = nav.refine_trajectory(pts, t, nav.NavConfig(backtrack="erase"))
    assert tr.stats["n_segments"] == 1 and tr.stats["n_splits"] == 0
    assert tr.stats["backtrack_cut_m"] + tr.stats["erased_loop_m"] == pytest.approx(2.0, abs=0.4)
    # the 1 m back-track (2 m of walking) is cut; smoothing rounds the corners a little
    assert tr.stats["raw_length_m"] == pytest.approx(walk_length(), abs=0.01)
    assert tr.length_m == pytest.approx(walk_length() - 2.0, abs=0.6)
    seg = tr.segments[0]
    assert _is_simple(seg, 0.3, 1.0)
    steps = np.linalg.norm(np.diff(seg[:, :2], axis=0), axis=1)
    assert steps == pytest.approx(0.25, abs=0.06)  # arc-length spacing; chords are shorter at corners
    assert np.all(np.diff(seg[:, 2]) >= -1e-9)  # time still increases
    # the cut happens at the turn-back point's neighbourhood: no refined point south of y = 1.9
    assert seg[:, 1].min() > 1.75


def test_refine_splits_at_the_u_turn():
    pts = walk_points()
    tr = nav.refine_trajectory(pts, np.arange(len(pts)) * 0.1)  # default: backtrack="split"
    assert tr.stats["n_uturn_splits"] == 1 and tr.stats["n_segments"] == 2
    a, b = tr.segments
    # out leg ends, back leg starts at the turn-back point (4.6, 1.0); smoothing (σ = 1.5 keyframes = 0.22 m)
    # pulls a reversal's apex back by about 0.27 m
    assert a[-1, :2] == pytest.approx([4.6, 1.0], abs=0.35) and b[0, :2] == pytest.approx(a[-1, :2])
    assert a[-1, 2] <= b[0, 2]
    assert tr.length_m == pytest.approx(walk_length(), abs=1.0)  # the shortened apex (2 × 0.27 m), corners
    assert all(_is_simple(s, 0.3, 1.0) for s in tr.segments)
    for s in tr.segments:
        assert np.linalg.norm(np.diff(s[:, :2], axis=0), axis=1) == pytest.approx(0.25, abs=0.06)


def test_refine_splits_a_long_loop_and_erases_a_small_one():
    # a 3 m square walked once and back to the start (12 m > max_erase 6 m): split, not erased
    sq = np.array([[0, 0], [3, 0], [3, 3], [0, 3], [0, 0], [-2, 0]], float)
    dense = nav.resample_polyline(sq, 0.1)
    tr = nav.refine_trajectory(dense, np.arange(len(dense)) * 0.1, nav.NavConfig(smooth_sigma=0))
    assert tr.stats["n_splits"] == 1 and tr.stats["n_loops_erased"] == 0
    assert tr.length_m == pytest.approx(14.0, abs=0.3)
    assert all(_is_simple(s, 0.3, 1.0) for s in tr.segments)
    # a 1 m square detour in the middle of a straight walk is erased
    det = np.array([[0, 0], [3, 0], [3, 1], [2, 1], [2, 0], [6, 0]], float)  # loop 3..3,1..2,1..2,0 .. back
    dense = nav.resample_polyline(det, 0.05)
    tr = nav.refine_trajectory(dense, np.arange(len(dense)) * 0.1, nav.NavConfig(smooth_sigma=0))
    assert tr.stats["n_loops_erased"] >= 1 and tr.stats["n_segments"] == 1
    assert tr.length_m == pytest.approx(6.0, abs=0.4)


@pytest.mark.parametrize("seed", range(5))
def test_actions_replay_to_goal(seed):
    rng = np.random.default_rng(seed)
    # a random wiggly path: 8 waypoints about 1 m apart, random start heading
    steps = rng.uniform(0.6, 1.0, 8)[:, None] * np.column_stack([np.cos(a := rng.uniform(-1.5, 1.5, 8).cumsum()),
                                                                 np.sin(a)])
    ref = np.vstack([[0.0, 0.0], np.cumsum(steps, axis=0)])
    yaw0 = rng.uniform(-math.pi, math.pi)
    actions = nav.encode_actions(ref[0], yaw0, ref[1:])
    assert actions[-1] == nav.STOP and nav.STOP not in actions[:-1] and set(actions) <= {0, 1, 2, 3}
    path, _ = nav.replay_actions(ref[0], yaw0, actions)
    assert np.linalg.norm(path[-1] - ref[-1]) < 0.5
    # every reference waypoint is passed within 0.5 m
    for w in ref[1:]:
        assert np.min(np.linalg.norm(path - w, axis=1)) < 0.5


def test_action_encoding_by_hand():
    # facing +x at the origin; go 1 m north: six left turns of 15°, four 0.25 m steps, stop
    assert nav.encode_actions([0, 0], 0.0, [[0, 1]]) == [2] * 6 + [1] * 4 + [0]
    assert nav.encode_actions([0, 0], 0.0, [[0, -0.5]]) == [3] * 6 + [1] * 2 + [0]
    path, yaw = nav.replay_actions([0, 0], 0.0, [2] * 6 + [1] * 4 + [0])
    assert path[-1] == pytest.approx([0, 1], abs=1e-9) and yaw == pytest.approx(math.pi / 2)


def test_habitat_conventions():
    p = np.array([1.0, 2.0, 0.5])
    assert vln.world_to_habitat(p) == pytest.approx([1.0, 0.5, -2.0])
    assert vln.habitat_to_world(vln.world_to_habitat(p)) == pytest.approx(p)
    assert vln.quat_xyzw_from_yaw(math.pi / 2) == pytest.approx([0, 0, 0, 1])  # facing world +y = habitat −z
    for yaw in np.linspace(-3, 3, 7):
        q = vln.quat_xyzw_from_yaw(yaw)
        assert np.linalg.norm(q) == pytest.approx(1.0)
        assert vln.yaw_from_quat_xyzw(q) == pytest.approx(yaw, abs=1e-9)
    assert np.linalg.det(np.asarray(vln.HABITAT_FROM_WORLD)[:3, :3]) == pytest.approx(1.0)


def test_landmark_names(scene):
    inst = common.instances(scene)
    names = vln.landmark_names(inst, common.scene_graph(scene))
    assert names[0] == "the couch" and names[8] == "the laptop"
    assert names[6] == "the potted plant next to the tv"  # the scene graph singles it out
    assert 10 not in names  # the other plant has no distinguishing relation
    assert 3 not in names and 4 not in names and 5 not in names  # both chairs 3 and 4 are "near" the table


def test_free_space_and_graph(scene):
    inst = common.instances(scene)
    lay = common.room_layout(scene)
    xy, t, _ = nav.floor_trajectory(common.cameras(scene))
    tr = nav.refine_trajectory(xy, t)
    space = nav.build_free_space(common.room_polygon(lay), inst, tr.segments)
    table = inst[2]
    assert not space.is_free(table.center[None, :2])[0]
    assert not space.is_free(np.array([[0.1, 2.5]]))[0]  # within the agent radius of the west wall
    assert space.is_free(np.array([[2.0, 3.2]]))[0]  # on the walk
    g = nav.build_nav_graph(space, tr.segments)
    import networkx as nx

    assert nx.is_connected(g.graph)
    xyn = g.xy
    for a, b, d in g.graph.edges(data=True):
        assert d["length"] == pytest.approx(np.linalg.norm(xyn[a] - xyn[b]))
    n_tv, d_tv = g.approach_node(inst[1])
    n_couch, _ = g.approach_node(inst[0])
    assert n_tv is not None and d_tv <= 1.0
    path = np.array([g.graph.nodes[n]["xy"] for n in g.shortest_path(n_tv, n_couch)])
    fine = nav.resample_polyline(path, 0.02)
    assert space.is_free(fine).all()
    lo, hi = table.aabb_min[:2], table.aabb_max[:2]
    inside = np.all((fine > lo - 0.15) & (fine < hi + 0.15), axis=1)
    assert not inside.any()  # the route keeps clear of the table
    js = g.to_json()
    assert len(js["nodes"]) == g.graph.number_of_nodes() and js["edges"]


def test_episodes_replay_and_fields(scene):
    docs, _ = vln.generate(scene, vln.Config(stride_m=0.5, seed=2))
    eps, gt, extra = docs["dataset"]["episodes"], docs["gt"], docs["extra"]
    assert len(eps) >= 5 and extra["quaternion_order"] == "xyzw" and extra["frame"] == "habitat_y_up"
    names = vln.landmark_names(common.instances(scene), common.scene_graph(scene))
    for e in eps:
        x = extra["episodes"][str(e["episode_id"])]
        start = vln.habitat_to_world(e["start_position"])[:2]
        yaw = vln.yaw_from_quat_xyzw(e["start_rotation"])
        assert yaw == pytest.approx(x["start_yaw_rad"], abs=1e-6)
        assert e["start_position"][1] == 0.0
        actions = gt[str(e["episode_id"])]["actions"]
        path, _ = nav.replay_actions(start, yaw, actions)
        goal = vln.habitat_to_world(e["goals"][0]["position"])[:2]
        assert np.linalg.norm(path[-1] - goal) < 0.5
        assert actions[-1] == 0
        ref = np.array([vln.habitat_to_world(p)[:2] for p in e["reference_path"]])
        assert np.allclose(ref, x["reference_path_world"], atol=1e-3)
        length = np.sum(np.linalg.norm(np.diff(ref, axis=0), axis=1))
        assert e["info"]["geodesic_distance"] == pytest.approx(length, abs=1e-3)
        assert 2.0 - 0.125 <= x["walk_length_m"] <= 8.0 + 0.125 and length <= x["walk_length_m"] + 1e-3
        goal_mark = [m for m in x["landmarks"] if m["role"] == "goal"][0]
        assert goal_mark["name"] == names[goal_mark["id"]] and goal_mark["name"] in e["instruction"]["instruction_text"]
        # the goal landmark is really by the goal
        o = common.instances(scene)[goal_mark["id"]]
        assert vln.footprint_distance(o, goal)[0] <= 1.5
    assert len({x["template"] for x in extra["episodes"].values()}) >= 3
    a, _ = vln.generate(scene, vln.Config(stride_m=0.5, seed=2))
    assert json.dumps(a) == json.dumps(docs)  # deterministic


def test_cli_tasks(scene, tmp_path):
    r = CliRunner().invoke(app, ["tasks", str(scene), "--only", "vln", "--seed", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["vln"]["n_episodes"] > 0
    d = vln.read_gz(scene / "tasks" / "vln" / "train" / "train.json.gz")
    assert d["episodes"] and (scene / "tasks" / "nav_graph.json").is_file()
    r = CliRunner().invoke(app, ["tasks", str(tmp_path)])
    assert r.exit_code == 3 and "instances.json" in r.output
    r = CliRunner().invoke(app, ["tasks", str(scene), "--only", "bogus"])
    assert r.exit_code == 3

"""The first-person rasteriser: a box lands on its projected pixels, the shell is drawn, walks, video files."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from tests.fixtures import layout_scene as ls
from tests.fixtures.room import intrinsics, look_at
from vid2scene.geometry import box_corners, project, project_box
from vid2scene.tasks.layout_synth.plan import build_plan
from vid2scene.tasks.layout_synth.render import (CEILING, FACES, FLOOR, WALL, View, plan_colours, render_view,
                                                 visible_objects, walk_path, walk_views, write_video)

ROOM4 = {"room": {"polygon_xy": [[0, 0], [4, 0], [4, 4], [0, 4]], "height_m": 2.5}}


def one_box_plan(center=(2.0, 2.5, 0.3), size=(0.8, 0.6, 0.6), yaw=0.4):
    return build_plan([{"id": 0, "label": "chair", "box": {"center": list(center), "size": list(size),
                                                            "yaw_rad": yaw}}], ROOM4)


def test_box_lands_on_its_projected_pixels():
    plan = one_box_plan()
    K = intrinsics(320, 240, 70.0)
    T = look_at((2.0, 0.4, 1.4), (2.0, 2.5, 0.3))
    r = render_view(plan, View("v", K, T, 320, 240), labels=False)
    o = plan.objects[0]
    uv, z = project(box_corners(o.position, o.size, o.yaw), K, T)
    hull = shapely.MultiPoint(uv).convex_hull
    rr, cc = np.mgrid[0:240, 0:320]
    inside = shapely.contains_xy(hull, cc.ravel() + 0.5, rr.ravel() + 0.5).reshape(240, 320)
    mask = r.ids == 0
    iou = (mask & inside).sum() / (mask | inside).sum()
    assert iou > 0.97
    assert not (mask & ~shapely.contains_xy(hull.buffer(1.0), cc + 0.5, rr + 0.5)).any()  # nothing 1 px outside
    x0, y0, x1, y1 = visible_objects(r.ids)[0]
    bx = project_box(o.position, o.size, o.yaw, K, T, 320, 240)
    assert np.allclose([x0, y0, x1, y1], bx, atol=1.0)
    # the top face's colour at the projected centre of the top face (shade 1.0), depth = camera z there
    top = box_corners(o.position, o.size, o.yaw)[4:].mean(0)
    (u, v), zc = project(top[None], K, T)[0][0], project(top[None], K, T)[1][0]
    assert r.ids[int(v), int(u)] == 0
    assert np.allclose(r.rgb[int(v), int(u)], np.clip(plan_colours(plan)["chair"] * FACES[1][1], 0, 255), atol=1)
    assert r.depth[int(v), int(u)] == pytest.approx(zc, rel=0.02)


def test_shell_and_occlusion():
    # a small box hidden behind a big one: not visible; floor below the horizon, ceiling above
    plan = build_plan([{"id": 0, "label": "couch", "box": {"center": [2, 3, 0.5], "size": [2, 0.5, 1], "yaw_rad": 0}},
                       {"id": 1, "label": "cup", "box": {"center": [2, 3.6, 0.1], "size": [0.2, 0.2, 0.2],
                                                         "yaw_rad": 0}}], ROOM4)
    K = intrinsics(160, 120, 70.0)
    T = look_at((2.0, 0.3, 1.0), (2.0, 3.9, 1.0))
    r = render_view(plan, View("v", K, T, 160, 120))
    vis = visible_objects(r.ids)
    assert 0 in vis and 1 not in vis
    assert r.ids[119, 5] == FLOOR and r.ids[0, 80] == CEILING and r.ids[60, 2] == WALL
    # a camera 2 cm from the west wall looking along it: the wall crosses the near plane and is clipped
    r = render_view(plan, View("v", K, look_at((0.02, 2.0, 1.2), (0.5, 0.0, 1.2)), 160, 120))
    assert (r.ids == WALL).mean() > 0.3 and np.isfinite(r.depth[r.ids != -1]).all()  # beyond the clipped wall: nothing


def test_walls_are_seen_from_inside_only():
    plan = one_box_plan(center=(2.0, 0.8, 0.3))
    K = intrinsics(160, 120, 70.0)
    outside = View("v", K, look_at((2.0, -1.5, 1.0), (2.0, 2.0, 0.3)), 160, 120)   # behind the south wall
    assert 0 in visible_objects(render_view(plan, outside, labels=False).ids)
    inside = View("v", K, look_at((2.0, 3.8, 1.0), (2.0, -2.0, 0.6)), 160, 120)    # facing the south wall
    ids = render_view(plan, inside, labels=False).ids
    assert (ids == WALL).any() and 0 in visible_objects(ids)


def test_walk_goes_through_free_space():
    plan = build_plan(ls.instance_records(), ls.layout_doc(), ls.cameras())
    path = walk_path(plan)
    assert len(path) > 5 and np.linalg.norm(path[0] - plan.room.entrance_xy) < 0.6
    for o in plan.objects:
        if o.location != "top":
            inside = shapely.contains_xy(shapely.Polygon(o.footprint()), path[:, 0], path[:, 1])
            assert not inside.any(), o.object_name
    assert np.all((path > 0) & (path < [6, 5]))
    views = walk_views(plan, intrinsics(320, 240), (320, 240), eye_height_m=1.5, width=96)
    assert len(views) >= len(path[:64]) and views[0].width == 96 and views[0].height == 72
    C = -views[0].cam_from_world[:3, :3].T @ views[0].cam_from_world[:3, 3]
    assert C[2] == pytest.approx(1.5)


def test_video_file(tmp_path):
    import av

    frames = [np.full((48, 64, 3), 20 * k, np.uint8) for k in range(5)]
    codec = write_video(tmp_path / "v.mp4", frames, fps=5)
    assert codec
    with av.open(str(tmp_path / "v.mp4")) as c:
        got = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(got) == 5 and got[0].shape == (48, 64, 3)
    assert abs(float(got[4].mean()) - 80) < 6
    with pytest.raises(ValueError):
        write_video(tmp_path / "e.mp4", [])

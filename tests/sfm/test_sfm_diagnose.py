"""Reasons for unregistered keyframes and the loop-closure check, on the synthetic room.

A walk in which one frame is heavily blurred and one frame shows another room (other textures, no
furniture): both are keyframes, neither can be placed, and ``cameras.json`` says why (``blurred``,
``few_matches``) with match counts. A false loop closure — matches that pass two-view verification but put a
keyframe at the wrong place, as repeated structure does — is injected into the database: the check against
the model finds it, drops it and maps again.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pycolmap
import pytest

import vid2scene.sfm as sfm
from vid2scene.sfm import diagnose
from vid2scene.sfm.features import verify_pairs
from vid2scene.scene import frame_name, unregistered_reasons
from tests.fixtures.room import fast_config, intrinsics, render_room, run_stages, scene_from_images, walk_trajectory

W, H = 320, 240
K_TRUE = intrinsics(W, H)


def test_reasons_for_a_blurred_frame_and_a_frame_from_another_room(tmp_path):
    n = 18
    poses = walk_trajectory(n)
    frames = [render_room(p, K_TRUE, W, H)[0] for p in poses]
    blurred, other = 6, 12
    # defocused far beyond what SIFT can match: 1/16 resolution, blown up again and smoothed
    small = cv2.resize(frames[blurred], (W // 16, H // 16), interpolation=cv2.INTER_AREA)
    frames[blurred] = cv2.GaussianBlur(cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC), (0, 0), 4)
    frames[other] = render_room(poses[other], K_TRUE, W, H, room=(6.0, 5.0, 3.0), furniture=(), seed=11)[0]
    scene = scene_from_images(tmp_path, frames)
    # no shot cut at the other room's frame (it is one frame, not a shot), and 1.8 s is a usable shot here
    cfg = fast_config(shots={"min_shot_s": 1.0, "adaptive": {"adaptive_threshold": 1e6, "min_content_val": 255.0}},
                      quality={"blur_min_var": 0.0, "blur_rel": 0.0},
                      keyframes={"min_disparity": 0.001, "min_keyframes": 8},
                      sfm={"loop_closure": False, "min_registered_share": 0.5})
    result = run_stages(scene, cfg, "sfm")["sfm"]
    kf = [k["source_frame"] for k in scene.keyframes()["keyframes"]]
    assert blurred in kf and other in kf
    assert result.qc["pairing"] == "exhaustive"  # photos: every pair matched
    doc = json.loads(scene.cameras_json.read_text())
    by_frame = {f["source_frame"]: f for f in doc["frames"]}
    for sf, reason in ((blurred, "blurred"), (other, "few_matches")):
        f = by_frame[sf]
        assert f["registered"] is False, sf
        assert f["reason"] == reason, (sf, f["reason"], f["figures"])
        assert set(f["figures"]) >= {"best_inliers", "neighbours", "sharpness_rel"}
    assert by_frame[blurred]["figures"]["sharpness_rel"] < 0.35
    assert by_frame[other]["figures"]["best_inliers"] < 30
    assert set(by_frame[other]["figures"]["neighbours"]) == {frame_name(other - 1), frame_name(other + 1)}
    # registered frames carry no reason; the qc counts the reasons
    assert all("reason" not in f for f in doc["frames"] if f["registered"])
    assert result.qc["unregistered_reasons"]["blurred"] >= 1 and result.qc["unregistered_reasons"]["few_matches"] >= 1
    reasons = unregistered_reasons(scene)
    assert reasons[frame_name(blurred)]["reason"] == "blurred"


def test_reason_rules():
    names = ["a", "b", "c", "d", "e", "f"]
    pairs = {"a": {"b": {"matches": 300, "inliers": 250, "tri_angle_deg": 5.0}},
             "b": {"a": {"matches": 300, "inliers": 250, "tri_angle_deg": 5.0}},
             "c": {"b": {"matches": 40, "inliers": 12, "tri_angle_deg": 3.0}},
             "d": {"c": {"matches": 400, "inliers": 380, "tri_angle_deg": 0.3}},
             "e": {"d": {"matches": 400, "inliers": 380, "tri_angle_deg": 6.0}},
             "f": {}}
    sharp = dict(a=100.0, b=100.0, c=100.0, d=100.0, e=100.0, f=100.0)
    out = diagnose.unregistered_reasons(names, {"a", "b"}, {"f"}, pairs, sharp, set())
    assert {k: v["reason"] for k, v in out.items()} == {"c": "few_matches", "d": "low_parallax",
                                                       "e": "rejected_by_mapper", "f": "other_model"}
    assert out["c"]["figures"]["best_inliers"] == 12
    out = diagnose.unregistered_reasons(names, {"a", "b"}, set(), pairs, dict(sharp, e=20.0), {"d"})
    assert out["e"]["reason"] == "blurred" and out["d"]["reason"] == "blurred"
    assert set(diagnose.REASONS) == {"blurred", "few_matches", "low_parallax", "rejected_by_mapper", "other_model"}


def _inject_false_loop(db_path, a: str, b: str, donor: str) -> int:
    """Make image ``b`` 'see' what ``donor`` sees from ``a``: append the donor's matched keypoints to ``b``'s and
    write them as matches of (a, b). They pass two-view verification (it is real geometry, of the wrong
    image). Returns the number of injected matches."""
    db = pycolmap.Database.open(str(db_path))
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        g = db.read_two_view_geometry(ids[a], ids[donor])
        m = np.asarray(g.inlier_matches).reshape(-1, 2)
        kd = np.asarray(db.read_keypoints(ids[donor]), np.float32)
        kb = np.asarray(db.read_keypoints(ids[b]), np.float32)
        new = np.concatenate([kb, kd[m[:, 1]]])
        db.update_keypoints(ids[b], new) if hasattr(db, "update_keypoints") else db.write_keypoints(ids[b], new)
        fake = np.stack([m[:, 0], len(kb) + np.arange(len(m))], 1).astype(np.uint32)
        if db.exists_two_view_geometry(ids[a], ids[b]):
            db.delete_two_view_geometry(ids[a], ids[b])
        if db.exists_matches(ids[a], ids[b]):
            db.delete_matches(ids[a], ids[b])
        db.write_matches(ids[a], ids[b], fake)
    finally:
        db.close()
    return len(fake)


def test_an_injected_false_loop_is_detected_dropped_and_reported(tmp_path, monkeypatch):
    n = 30
    poses = walk_trajectory(n)
    scene = scene_from_images(tmp_path, [render_room(p, K_TRUE, W, H)[0] for p in poses])
    cfg = fast_config(keyframes={"min_disparity": 0.02, "min_keyframes": 8, "image_folder": "disparity"},
                      sfm={"loop_closure": False, "pairing": "sequential", "sequential_overlap": 4})
    run_stages(scene, cfg, "keyframes")
    names = [frame_name(k["source_frame"]) for k in scene.keyframes()["keyframes"]]
    assert len(names) >= 10
    last = len(names) - 1
    false_loop = (1, last)   # keyframe 1 and the last keyframe: far apart along the walk
    true_loop = (2, 6)       # an honest long-range pair, also handed to the check as a loop

    real_pairs, real_match = sfm.image_pairs, sfm.match_pairs

    def pairs_with_loops(names_, descs, config, kind="video"):
        seq, _, mode = real_pairs(names_, descs, config, kind)
        return seq - {false_loop, true_loop}, {false_loop, true_loop}, mode

    injected = {}

    def match_then_inject(db_path, work, names_, groups, config, **kw):
        real_match(db_path, work, names_, groups, config, **kw)
        if "loop" in groups:
            a, b = names_[false_loop[0]], names_[false_loop[1]]
            injected["n"] = _inject_false_loop(db_path, a, b, donor=names_[false_loop[0] + 1])
            txt = work / "pairs_false.txt"
            txt.write_text(f"{a} {b}\n")
            verify_pairs(db_path, txt, pycolmap.TwoViewGeometryOptions())
            db = pycolmap.Database.open(str(db_path))
            ids = {im.name: im.image_id for im in db.read_all_images()}
            injected["verified"] = len(db.read_two_view_geometry(ids[a], ids[b]).inlier_matches)
            db.close()

    monkeypatch.setattr(sfm, "image_pairs", pairs_with_loops)
    monkeypatch.setattr(sfm, "match_pairs", match_then_inject)
    result = run_stages(scene, cfg.model_copy(update={"sfm": cfg.sfm.model_copy(update={"loop_closure": True})}),
                        "sfm", start="sfm")["sfm"]
    assert injected["verified"] >= 30  # the false loop passed two-view verification
    dropped = result.qc.get("loops_dropped", [])
    assert [d["pair"] for d in dropped] == [[names[false_loop[0]], names[false_loop[1]]]], dropped
    assert dropped[0]["consistent_share"] < 0.5
    assert any("loop closure" in w for w in result.warnings)
    assert result.qc["registered_share"] >= 0.9


def _every_second_view(tmp_path, n):
    """Every second view of an ``n``-pose walk through the textured room, written to ``tmp_path/images``:
    (folder, names, all n poses)."""
    poses = walk_trajectory(n)
    img = tmp_path / "images"
    img.mkdir()
    names = [frame_name(i) for i in range(0, n, 2)]
    for nm, i in zip(names, range(0, n, 2)):
        cv2.imwrite(str(img / nm), cv2.cvtColor(render_room(poses[i], K_TRUE, W, H)[0], cv2.COLOR_RGB2BGR))
    return img, names, poses


def test_check_loops_keeps_true_and_flags_false_pairs(tmp_path):
    """The check itself, on a model mapped without loops: a long-range true pair agrees, an injected one not."""
    img, names, poses = _every_second_view(tmp_path, 24)
    cfg = sfm.Config(loop_closure=False, known_intrinsics=[K_TRUE[0, 0], K_TRUE[1, 1], K_TRUE[0, 2], K_TRUE[1, 2]])
    work = tmp_path / "work"
    work.mkdir()
    db_path, feats, _ = sfm.prepare_database(work, img, names, cfg, 1.0, W)
    seq = sfm.sequential_pairs(len(names), 3, quadratic=False)
    sfm.match_pairs(db_path, work, names, {"seq": (seq, 15, 0.0)}, cfg, backend=sfm.feature_backend(cfg))
    (work / "m").mkdir()
    rec, _, _ = sfm.map_images(db_path, img, work / "m", cfg, names)
    assert rec.num_reg_images() >= len(names) - 1
    _inject_false_loop(db_path, names[0], names[-1], donor=names[1])
    txt = work / "p.txt"
    txt.write_text(f"{names[0]} {names[-1]}\n")
    verify_pairs(db_path, txt, pycolmap.TwoViewGeometryOptions())
    res = {tuple(r["pair"]): r for r in diagnose.check_loops(rec, db_path, [(names[0], names[3]),
                                                                            (names[0], names[-1])])}
    assert res[(names[0], names[3])]["ok"] and res[(names[0], names[3])]["consistent_share"] > 0.8
    assert not res[(names[0], names[-1])]["ok"]


def test_match_graph_groups_counts_linked_keyframes():
    from vid2scene.sfm.diagnose import match_graph_groups

    names = [f"{i:06d}.jpg" for i in range(6)]
    fig = {"matches": 80, "inliers": 40, "tri_angle_deg": 3.0}
    weak = {"matches": 30, "inliers": 8, "tri_angle_deg": 3.0}
    pairs = {nm: {} for nm in names}
    for a, b, f in [(0, 1, fig), (1, 2, fig), (2, 3, weak), (3, 4, fig)]:
        pairs[names[a]][names[b]] = pairs[names[b]][names[a]] = f
    assert match_graph_groups(pairs, names) == [3, 2, 1]  # the 8-inlier pair does not link 2 and 3
    assert match_graph_groups(pairs, names, min_inliers=5) == [5, 1]


def test_check_loops_accepts_a_revisit_from_the_same_spot(tmp_path):
    """Walking back along the same path sees a keyframe again from (almost) the same pose: no parallax, so the
    pair's triangulated depth is meaningless and only the epipolar check may judge it."""
    img, names, poses = _every_second_view(tmp_path, 16)
    again = frame_name(999)  # keyframe 2's view, seen again at the end of the walk
    cv2.imwrite(str(img / again), cv2.cvtColor(render_room(poses[4], K_TRUE, W, H)[0], cv2.COLOR_RGB2BGR))
    names.append(again)
    cfg = sfm.Config(loop_closure=False, known_intrinsics=[K_TRUE[0, 0], K_TRUE[1, 1], K_TRUE[0, 2], K_TRUE[1, 2]])
    work = tmp_path / "work"
    work.mkdir()
    db_path, _, _ = sfm.prepare_database(work, img, names, cfg, 1.0, W)
    last = len(names) - 1
    pairs = sfm.sequential_pairs(last, 3, quadratic=False) | {(1, last), (2, last), (3, last)}
    sfm.match_pairs(db_path, work, names, {"seq": (pairs, 15, 0.0)}, cfg, backend=sfm.feature_backend(cfg))
    (work / "m").mkdir()
    rec, _, _ = sfm.map_images(db_path, img, work / "m", cfg, names)
    assert again in {im.name for im in rec.images.values() if im.has_pose}
    (r,) = diagnose.check_loops(rec, db_path, [(names[2], again)])
    assert r["baseline_ratio"] is not None and r["baseline_ratio"] < 0.02
    assert r["depth_ratio"] is None and r["consistent_share"] > 0.8 and r["ok"]
    (far,) = diagnose.check_loops(rec, db_path, [(names[1], again)])  # real parallax: the depth check runs
    assert far["baseline_ratio"] > 0.02 and far["depth_ratio"] is not None and far["ok"]

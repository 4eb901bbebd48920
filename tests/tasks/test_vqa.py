"""Spatial QA generator: every question type's ground truth against hand-computed answers on a synthetic scene
with objects at known places (tests/fixtures/task_scene.py), ambiguous candidates rejected, determinism."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from tests.fixtures.task_scene import OBJECTS, aabb, box_distance, read_jsonl, write_scene
from vid2scene.errors import InputError
from vid2scene.tasks import run_tasks, vqa

UNIQUE = {"couch", "tv", "dining table", "refrigerator", "laptop", "clock"}
CENTRES = {label: np.asarray(c) for _, label, c, _, _ in OBJECTS if label in UNIQUE}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("vqa") / "room")


@pytest.fixture(scope="module")
def generated(scene):
    cfg = vqa.Config(max_per_type=10_000, referring=False)  # keep every accepted question; unique names only
    return vqa.generate(scene, cfg)


def rows_of(generated, qtype):
    return [r for r in generated[0] if r["question_type"] == qtype]


def label_distance(label: str, ref_label: str) -> float:
    """Analytic closest distance between the nearest box of ``label`` and the (unique) box of ``ref_label``."""
    ref = next(o[0] for o in OBJECTS if o[1] == ref_label)
    return min(box_distance(*aabb(o[0]), *aabb(ref)) for o in OBJECTS if o[1] == label)


def test_row_fields_follow_vsi_bench(generated):
    rows, meta = generated
    assert [r["id"] for r in rows] == list(range(len(rows)))
    for r in rows:
        assert r["dataset"] == "vid2scene" and r["scene_name"] == "room"
        if r["question_type"] in vqa.MC_TYPES:
            assert r["options"] and all(o[:3] == f"{'ABCD'[k]}. " for k, o in enumerate(r["options"]))
            letter = r["ground_truth"]
            assert r["options"]["ABCD".index(letter)][3:] == r["answer"]
        else:
            assert r["options"] is None
            float(r["ground_truth"])
    assert {r["question_type"] for r in rows} == set(vqa.QUESTION_TYPES)


def test_object_counting(generated):
    got = {r["objects"][0]["label"]: r["answer"] for r in rows_of(generated, "object_counting")}
    assert got == {"chair": 3, "potted plant": 2}
    q = rows_of(generated, "object_counting")[0]
    assert q["question"] == "How many chair(s) are in this room?" and q["ground_truth"] == "3"


def test_room_size(generated):
    (r,) = rows_of(generated, "room_size_estimation")
    assert r["answer"] == pytest.approx(30.0) and r["ground_truth"] == "30.0"


def test_object_size_single_instance_categories_only(generated):
    got = {r["objects"][0]["label"]: r["answer"] for r in rows_of(generated, "object_size_estimation")}
    assert got == pytest.approx({"couch": 180, "tv": 120, "dining table": 140, "refrigerator": 180,
                                 "laptop": 35, "clock": 30})


def test_object_abs_distance_hand_computed_and_contact_rejected(generated):
    rows = rows_of(generated, "object_abs_distance")
    got = {frozenset(o["label"] for o in r["objects"]): r["answer"] for r in rows}
    # 15 pairs of the six unique objects; laptop on the table (gap 0 m) is rejected
    assert len(got) == 14 and frozenset({"laptop", "dining table"}) not in got
    assert got[frozenset({"couch", "refrigerator"})] == pytest.approx(0.95, abs=0.01)
    assert got[frozenset({"dining table", "tv"})] == pytest.approx(math.hypot(1.95, 0.5), abs=0.015)
    assert got[frozenset({"couch", "clock"})] == pytest.approx(math.sqrt(0.95**2 + 0.225**2 + 1.05**2), abs=0.015)
    for pair, d in got.items():
        a, b = sorted(pair)
        assert d == pytest.approx(label_distance(a, b), abs=0.02)
    st = generated[1]["generation"]["per_type"]["object_abs_distance"]
    assert st["n_candidates"] == 15 and st["rejected_by_reason"] == {"closer_than_min": 1}
    assert st["rejected_share"] == pytest.approx(1 / 15, abs=1e-3)


def test_object_rel_distance_answers_and_margin(generated):
    rows = rows_of(generated, "object_rel_distance")
    assert rows
    for r in rows:
        ref = r["objects"][0]["label"]
        cands = [o[3:] for o in r["options"]]
        d = {c: label_distance(c, ref) for c in cands}
        order = sorted(cands, key=d.get)
        assert r["answer"] == order[0]
        assert d[order[1]] - d[order[0]] >= 0.15 - 0.02
        assert ref in UNIQUE
        # the table's nearest chair (0.10 m) and the laptop on it (0 m) differ by < 0.15 m: never asked together
        assert not (ref == "dining table" and {"chair", "laptop"} <= set(cands))
    st = generated[1]["generation"]["per_type"]["object_rel_distance"]
    assert st["rejected_by_reason"]["margin_below_min"] > 0
    # a hand-computed one: the tv's nearest among these is the potted plant by the tv (1.2 m; table 2.01 m)
    hit = [r for r in rows if r["objects"][0]["label"] == "tv"
           and {o[3:] for o in r["options"]} == {"couch", "dining table", "potted plant", "refrigerator"}]
    assert hit and hit[0]["answer"] == "potted plant"
    assert hit[0]["figures"]["distance_m"]["potted plant"] == pytest.approx(1.2, abs=0.01)


@pytest.mark.parametrize("query,expected", [
    ("tv", ("right", "right", "front-right")),             # θ = atan2(-2.7, 1.5) = -60.9°
    ("refrigerator", ("left", "left", "front-left")),      # θ = +58.4°
    ("couch", ("left", "left", "front-left")),             # θ = +31.2°
])
def test_object_rel_direction_hand_computed(generated, query, expected):
    # standing by the dining table (3, 1) facing the clock (3, 4.95): facing +y
    for level, want in zip(("easy", "medium", "hard"), expected):
        rows = [r for r in rows_of(generated, f"object_rel_direction_{level}")
                if [o["label"] for o in r["objects"]] == ["dining table", "clock", query]]
        assert len(rows) == 1, level
        assert rows[0]["answer"] == want


def test_direction_class_boundaries():
    dc = vqa.direction_class
    assert [dc(5, lv, 10) for lv in ("easy", "medium", "hard")] == [None, None, None]
    assert [dc(95, lv, 10) for lv in ("easy", "medium", "hard")] == ["left", "left", None]
    assert [dc(130, lv, 10) for lv in ("easy", "medium", "hard")] == ["left", None, "back-left"]
    assert [dc(-150, lv, 10) for lv in ("easy", "medium", "hard")] == ["right", "back", "back-right"]
    assert [dc(-175, lv, 10) for lv in ("easy", "medium", "hard")] == [None, "back", None]
    assert vqa.signed_angle_deg((0, 0), (0, 1), (1, 1)) == pytest.approx(-45.0)  # facing +y, +x is right


def test_rel_direction_rows_are_consistent_and_clear_of_boundaries(generated):
    for level in ("easy", "medium", "hard"):
        rows = rows_of(generated, f"object_rel_direction_{level}")
        assert rows
        for r in rows:
            a, b, c = (CENTRES[o["label"]] for o in r["objects"])
            th = vqa.signed_angle_deg(a, b, c)
            assert th == pytest.approx(r["figures"]["angle_deg"], abs=0.01)
            assert vqa.direction_class(th, level, 10.0) == r["answer"]
            bounds = {"easy": (0, 180), "medium": (0, 135), "hard": (0, 90, 180)}[level]
            assert min(abs(abs(th) - x) for x in bounds) >= 10.0
        st = generated[1]["generation"]["per_type"][f"object_rel_direction_{level}"]
        assert st["n_candidates"] == 6 * 5 * 4 and st["rejected_by_reason"].get("near_boundary", 0) > 0


def test_appearance_order(generated):
    first = {"refrigerator": 0.5, "couch": 1.0, "tv": 3.0, "dining table": 5.0, "laptop": 5.3, "chair": 5.5,
             "potted plant": 8.0, "clock": 12.0}
    rows = rows_of(generated, "obj_appearance_order")
    # 4-subsets of the 8 categories with all first appearances >= 1 s apart, counted by hand: 2 + 3 + 18
    assert len(rows) == 23
    st = generated[1]["generation"]["per_type"]["obj_appearance_order"]
    assert st["n_candidates"] == 70 and st["n_rejected"] == 47
    for r in rows:
        cats = r["answer"].split(", ")
        assert cats == sorted(cats, key=first.get)
        assert min(np.diff(sorted(first[c] for c in cats))) >= 1.0
        assert len(set(r["options"])) == 4
    hit = [r for r in rows if set(r["answer"].split(", ")) == {"refrigerator", "tv", "potted plant", "clock"}]
    assert hit[0]["answer"] == "refrigerator, tv, potted plant, clock"


def test_route_legs_turns():
    path = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0], [1.0, 2.0], [2.0, 2.0]])
    legs, simp, angles = vqa.route_legs(path, 0.0, 0.1, 10.0)  # facing +x: up is a left turn, then right
    assert [n for n, _ in legs] == ["Turn Left", "Turn Right"]
    assert np.allclose(legs[0][1], [0, 2]) and np.allclose(legs[1][1], [2, 2])
    assert angles == pytest.approx([90.0, -90.0])
    legs, _, _ = vqa.route_legs(path, math.pi / 2, 0.1, 10.0)  # facing +y: straight first
    assert [n for n, _ in legs] == ["", "Turn Right"]
    legs, _, _ = vqa.route_legs(path, math.radians(-90), 0.1, 10.0)  # facing -y: turn back first
    assert legs[0][0] == "Turn Back"
    assert vqa.route_legs(path, math.radians(58), 0.1, 10.0) is None  # a 32° turn is too close to 30°


def test_route_planning_rows(generated, scene):
    rows = rows_of(generated, "route_planning")
    assert rows
    for r in rows:
        f = r["figures"]
        legs, _, _ = vqa.route_legs(np.asarray(f["route_xy"]), f["start_yaw_rad"], 0.01, 10.0)
        turns = [n for n, _ in legs if n]
        assert r["answer"] == ", ".join(turns)
        assert r["question"].count("[please fill in]") == len(turns) + 1  # + the note that explains it
        roles = {o["role"]: o["label"] for o in r["objects"]}
        assert {roles["start"], roles["facing"], roles["goal"]} <= UNIQUE
        marks = [o["id"] for o in r["objects"] if o["role"] == "landmark"]
        assert len(set(marks)) == len(marks) and not {o["id"] for o in r["objects"][:3:2]} & set(marks)
        # the route starts next to the start object and ends next to the goal (approach radius 1 m)
        s, e = (next(o for o in OBJECTS if o[1] == roles[k]) for k in ("start", "goal"))
        for (oid, _, c, sz, _), p in ((s, f["route_xy"][0]), (e, f["route_xy"][-1])):
            lo, hi = np.asarray(c)[:2] - np.asarray(sz)[:2] / 2, np.asarray(c)[:2] + np.asarray(sz)[:2] / 2
            assert np.linalg.norm(np.maximum(0, np.maximum(lo - p, np.asarray(p) - hi))) <= 1.0 + 1e-6
    # the route tv -> couch passes north of the dining table (5.45, 3.45) -> (0.45, 3.45): one leg, heading -x
    hit = [r for r in rows if [o["label"] for o in r["objects"][:3]] == ["tv", "dining table", "couch"]]
    assert len(hit) == 1
    assert hit[0]["answer"] == "Turn Right"  # facing the table (south-west), west is to the right


def test_unique_referents_only(generated):
    for r in generated[0]:
        if r["question_type"] in ("object_counting", "obj_appearance_order", "room_size_estimation"):
            continue
        named = [o["label"] for o in r["objects"] if o["role"] not in ("candidate",)]
        assert set(named) <= UNIQUE, (r["question_type"], named)


def test_meta(generated):
    meta = generated[1]
    assert meta["room_size"] == pytest.approx(30.0)
    assert meta["room_center"] == pytest.approx([3.0, 2.5, 1.3])
    assert meta["object_counts"]["chair"] == 3 and meta["object_counts"]["couch"] == 1
    couch = meta["object_bbox"]["couch"][0]
    assert couch["centroid"] == pytest.approx([1.0, 4.3, 0.4]) and couch["axesLengths"] == pytest.approx([1.8, 0.8, 0.8])
    assert couch["min"] == pytest.approx([0.1, 3.9, 0.0]) and couch["max"] == pytest.approx([1.9, 4.7, 0.8])
    assert set(meta["generation"]["per_type"]) == set(vqa.QUESTION_TYPES)


def test_deterministic_given_seed(scene):
    cfg = vqa.Config(max_per_type=5, seed=4)
    a, _ = vqa.generate(scene, cfg)
    b, _ = vqa.generate(scene, cfg)
    assert json.dumps(a) == json.dumps(b)
    c, _ = vqa.generate(scene, vqa.Config(max_per_type=5, seed=5))
    assert json.dumps(a) != json.dumps(c)


def test_run_writes_files_and_refuses_missing_inputs(scene, tmp_path):
    res = run_tasks(scene, ["vqa"], seed=1)
    rows = read_jsonl(scene / "tasks" / "vqa.jsonl")
    assert res["vqa"].qc["n_questions"] == len(rows) > 0
    assert json.loads((scene / "tasks" / "vqa_meta.json").read_text())["generation"]["seed"] == 1
    with pytest.raises(InputError, match="instances.json, layout.json"):
        run_tasks(tmp_path, ["vqa"])
    sfm = write_scene(tmp_path / "sfm", with_graph=False)
    d = json.loads((sfm / "instances.json").read_text())
    d["frame"] = "sfm"
    (sfm / "instances.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match="layout"):
        vqa.generate(sfm)
    with pytest.raises(InputError, match="unknown task generator"):
        run_tasks(scene, ["nope"])


def test_combos_caps_deterministically():
    rng = np.random.default_rng(0)
    full = vqa._combos(list(range(6)), 2, 100, rng)
    assert full == list(itertools.combinations(range(6), 2))
    a = vqa._combos(list(range(30)), 4, 50, np.random.default_rng(1))
    b = vqa._combos(list(range(30)), 4, 50, np.random.default_rng(1))
    assert a == b and len(set(a)) == 50


def test_multiple_choice_letters_balanced_when_capped(scene):
    from collections import Counter

    rows, meta = vqa.generate(scene, vqa.Config(max_per_type=12))
    for level, n_opts in (("easy", 2), ("medium", 3), ("hard", 4)):
        qt = f"object_rel_direction_{level}"
        c = Counter(r["ground_truth"] for r in rows if r["question_type"] == qt)
        assert sum(c.values()) == 12
        accepted = Counter(r["ground_truth"] for r in vqa.GENERATORS[qt](vqa._Context(scene, vqa.Config()),
                                                                        np.random.default_rng(0)).accepted)
        # every letter gets min(its accepted count, a fair share)
        fair = 12 // n_opts
        for letter, k in accepted.items():
            assert c[letter] >= min(k, fair)


def test_cli_tasks_config_file_sections(scene, tmp_path):
    from typer.testing import CliRunner

    from vid2scene.cli import app

    cfg = tmp_path / "tasks.yaml"
    cfg.write_text("vqa: {max_per_type: 2, seed: 3, types: [object_counting, room_size_estimation]}\n")
    r = CliRunner().invoke(app, ["tasks", str(scene), "--only", "vqa", "--config", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["vqa"]["per_type"] == {"object_counting": 2, "room_size_estimation": 1}
    meta = json.loads((scene / "tasks" / "vqa_meta.json").read_text())
    assert meta["generation"]["seed"] == 3 and meta["generation"]["config"]["max_per_type"] == 2
    for bad in ("nope: {}\n", "vqa: {max_per_type: 0}\n"):
        cfg.write_text(bad)
        r = CliRunner().invoke(app, ["tasks", str(scene), "--config", str(cfg)])
        assert r.exit_code == 3 and "invalid tasks config" in r.output
    r = CliRunner().invoke(app, ["tasks", str(scene), "--config", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 3 and "config file not found" in r.output


# ---------------------------------------------------------------------------------------------------------
# referring expressions: "the chair nearest the couch"
# ---------------------------------------------------------------------------------------------------------
def expected_referents(margin_m: float) -> dict[int, tuple[int, float]]:
    """By hand from the boxes: {instance id: (anchor id, margin)} of the repeated-label instances whose best
    anchor (a unique-label object) gives a margin ≥ ``margin_m``."""
    labels = {}
    for oid, lab, *_ in OBJECTS:
        labels.setdefault(lab, []).append(oid)
    unique = [g[0] for g in labels.values() if len(g) == 1]
    out = {}
    for lab, g in labels.items():
        if len(g) < 2:
            continue
        for i in g:
            best = None
            for u in unique:
                d = {j: box_distance(*aabb(j), *aabb(u)) for j in g}
                m = min(v for k, v in d.items() if k != i) - d[i]
                if best is None or m > best[1]:
                    best = (u, m)
            out[i] = best
    return {i: b for i, b in out.items() if b[1] >= margin_m}


@pytest.fixture(scope="module")
def referring(scene):
    return vqa.generate(scene, vqa.Config(max_per_type=10_000))


def test_referring_expressions_name_the_right_instance(referring):
    rows, meta = referring
    exp = expected_referents(0.3)
    label = {oid: lab for oid, lab, *_ in OBJECTS}
    seen = {}
    for r in rows:
        for k, ref in r["figures"].get("referents", {}).items():
            i, a = int(k), ref["anchor_id"]
            seen[i] = a
            # the expression in the text names the anchor, and the anchor follows the instance in objects
            assert f"the {label[i]} nearest the {label[a]}" in r["question"]
            assert any(o["id"] == a and o["role"] == "anchor" and o.get("of") == i for o in r["objects"])
            assert ref["next_same_label_m"] - ref["distance_m"] >= 0.3
    assert seen, "no referring question generated"
    for i, a in seen.items():  # every referred instance is one the boxes say is unambiguous, with that anchor
        assert i in exp and exp[i][0] == a, (i, a, exp.get(i))
    # instances clearly below the margin by the boxes are never referred to
    clear_no = {i for i, (_, m) in expected_referents(-1e9).items() if m < 0.3 - 0.05}
    assert not clear_no & set(seen)
    ref = meta["generation"]["referring"]
    assert ref["n_repeated_instances"] == 5 and ref["n_referable"] == len(exp)
    assert ref["n_questions_with_referents"] > 0


def test_referring_answers_follow_vsi_rules(referring):
    rows, _ = referring
    label = {oid: lab for oid, lab, *_ in OBJECTS}
    n = 0
    for r in rows:
        if "referents" not in r["figures"]:
            continue
        n += 1
        main = [o for o in r["objects"] if o["role"] != "anchor"]
        if r["question_type"] == "object_abs_distance":
            a, b = main
            assert r["answer"] == pytest.approx(box_distance(*aabb(a["id"]), *aabb(b["id"])), abs=0.02)
        if r["question_type"] == "object_size_estimation":
            _, _, _, size, _ = OBJECTS[main[0]["id"]]
            assert r["answer"] == pytest.approx(100 * max(size), abs=1.0)
        if r["question_type"] == "object_rel_distance":
            ref = main[0]
            anchor = next(o for o in r["objects"] if o["role"] == "anchor")
            cands = [o[3:] for o in r["options"]]
            assert label[ref["id"]] not in cands and anchor["label"] not in cands
            d = {c: min(box_distance(*aabb(j), *aabb(ref["id"])) for j, lab, *_ in OBJECTS if lab == c) for c in cands}
            assert r["answer"] == min(cands, key=d.get)
    assert n >= 5


def test_referring_rejected_when_ambiguous(scene):
    rows, meta = vqa.generate(scene, vqa.Config(max_per_type=10_000, referring_margin_m=100.0))
    ref = meta["generation"]["referring"]
    assert ref["n_referable"] == 0 and ref["rejected_by_reason"] == {"no_anchor_with_margin": 5}
    assert not any("nearest the" in r["question"] for r in rows)
    assert ref["n_questions_with_referents"] == 0

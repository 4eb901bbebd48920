"""Spatial question answering in VSI-Bench's form (Yang et al., "Thinking in Space", CVPR 2025).

Writes ``tasks/vqa.jsonl`` (one question per line) and ``tasks/vqa_meta.json`` (per-scene meta as VSI-Bench's
annotation scripts keep it, plus generation statistics).

Row schema (VSI-Bench's fields first)::

    {"id": 0, "dataset": "vid2scene", "scene_name": "office",
     "question_type": "object_rel_distance",
     "question": "Measuring from the closest point of each object, which of these objects (...) is the closest to
                  the tv?",
     "options": ["A. chair", "B. couch", ...] | null,      # multiple-choice types only
     "ground_truth": "B" | "2.35",                          # option letter, or the number as a string
     "answer": "couch" | 2.3512,                            # option text, or the exact number
     "objects": [{"id": 3, "label": "tv", "role": "reference"}, ...],
     "figures": {...}}                                      # the measurements the answer came from

Question types and answer rules (world ``gravity_z_up_metric``, metres). Objects are named so that the name is
an unambiguous referent: "unique" below means *named* — the only instance of its label in the scene ("the
couch"), or, with ``referring`` on, an instance of a repeated label named by its nearest uniquely named anchor
("the chair nearest the couch") when its closest-point distance to the anchor is at least
``referring_margin_m`` (0.3 m) below that of every other instance of its label (else it stays unnamed and is
counted as rejected in the meta's ``generation.referring``). A referred instance's anchor follows it in
``objects`` (role ``anchor``) and ``figures.referents`` holds both distances. VSI-Bench's answer rules apply
unchanged to named objects; ``object_rel_distance`` never offers the reference's anchor label as a candidate.

- ``object_counting`` (numeric): number of instances of a label with more than one instance.
- ``object_abs_distance`` (numeric, metres): closest-point distance between the points (mesh vertices) of two
  unique objects; pairs closer than ``abs_distance_min_m`` (0.2 m) are rejected (touching / contact).
- ``object_size_estimation`` (numeric, cm): longest side of a unique object's gravity-aligned box.
- ``room_size_estimation`` (numeric, m²): ``layout.json`` floor area.
- ``object_rel_distance`` (MC, 4 options): which of four labels is closest to a unique reference (a label's
  distance is its nearest instance's closest-point distance); rejected when the runner-up is within
  ``rel_distance_margin_m`` (0.15 m).
- ``object_rel_direction_easy / _medium / _hard`` (MC): standing at unique A's centre facing unique B's centre,
  the signed floor angle θ of unique C's centre (+ = left). easy: left (θ > 0) / right; medium: back when
  |θ| ≥ 135°, else left / right; hard: front-left, front-right, back-left, back-right quadrants. Rejected when θ
  is within ``direction_margin_deg`` (10°) of a class boundary (easy 0°, 180°; medium 0°, ±135°; hard 0°, ±90°,
  180°) or when B or C is closer than ``direction_min_m`` to A.
- ``obj_appearance_order`` (MC, 4 options): order of first appearance (earliest ``first_timestamp_s`` over a
  label's instances) of four labels; rejected unless every pair is at least ``appearance_min_gap_s`` (1 s) apart.
- ``route_planning`` (MC): the navigation graph's (:mod:`.nav`) shortest route from unique S (facing unique F) to
  unique E, simplified (Douglas–Peucker) into straight legs; the turn before each leg is classified left / right
  (30°..150°), back (≥ 150°) or none (< 30°, merged); the answer is the sequence of turns. Rejected when a turn is
  within ``direction_margin_deg`` of 30° or 150°, when a leg end has no uniquely named object within
  ``landmark_radius_m``, or the route has no turn / more than ``route_max_legs`` legs / no path.

Candidates are enumerated in a fixed order (at most ``max_candidates`` per type, a seeded sample beyond), each is
accepted or rejected with a reason, and at most ``max_per_type`` accepted questions are kept (seeded sample; for
multiple choice drawn round-robin over the ground-truth letters, so a most-frequent-letter guess gains little).
Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from ..io import atomic_path, write_json
from ..scene import INSTANCES_JSON, LAYOUT_JSON
from ..stage import StageResult
from . import common, nav
from .common import Instance, PointCache
from .nav import NavConfig

NAME = "vqa"
OUTPUTS = ["tasks/vqa.jsonl", "tasks/vqa_meta.json"]

MC_TYPES = ["object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard",
            "object_rel_distance", "route_planning", "obj_appearance_order"]
NA_TYPES = ["object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation"]
QUESTION_TYPES = ["object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation",
                  "object_rel_distance", "object_rel_direction_easy", "object_rel_direction_medium",
                  "object_rel_direction_hard", "obj_appearance_order", "route_planning"]
LETTERS = "ABCDEFGH"


class Config(BaseModel):
    """VQA generator settings (metres, degrees, seconds)."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = "vid2scene"
    types: list[str] = Field(default_factory=lambda: list(QUESTION_TYPES))
    max_per_type: int = Field(20, ge=1, description="accepted questions kept per type (seeded sample)")
    max_candidates: int = Field(5000, ge=1, description="candidates examined per type (seeded sample beyond)")
    max_route_candidates: int = Field(400, ge=1)
    abs_distance_min_m: float = Field(0.2, ge=0)
    rel_distance_margin_m: float = Field(0.15, ge=0)
    direction_margin_deg: float = Field(10.0, ge=0, lt=45)
    direction_min_m: float = Field(0.5, ge=0, description="A–B and A–C centre distance floor for directions")
    appearance_min_gap_s: float = Field(1.0, ge=0)
    route_max_legs: int = Field(4, ge=1)
    route_simplify_m: float = Field(0.3, gt=0)
    landmark_radius_m: float = Field(1.0, gt=0)
    referring: bool = Field(True, description="name an instance of a repeated label by its nearest uniquely "
                            "named object ('the chair nearest the couch') when that is unambiguous")
    referring_margin_m: float = Field(0.3, ge=0, description="the referred instance must be this much closer to "
                                      "the anchor than every other instance of its label")
    nav: NavConfig = Field(default_factory=NavConfig)
    seed: int = 0


# ---------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------
class _Tally:
    """Per type: candidates examined, accepted, rejected by reason."""

    def __init__(self):
        self.n_candidates = 0
        self.rejected: Counter = Counter()
        self.accepted: list[dict] = []

    def reject(self, reason: str) -> None:
        self.n_candidates += 1
        self.rejected[reason] += 1

    def accept(self, row: dict) -> None:
        self.n_candidates += 1
        self.accepted.append(row)


def _obj(inst: Instance, role: str) -> dict:
    return {"id": inst.id, "label": inst.label, "role": role}


def _mc(options: list[str], correct: str) -> tuple[list[str], str]:
    return [f"{LETTERS[k]}. {o}" for k, o in enumerate(options)], LETTERS[options.index(correct)]


def _cap(items: list, n: int, rng: np.random.Generator) -> list:
    """The first ``n`` of ``items`` in a seeded random order when there are more than ``n``, else all of them
    (order kept)."""
    if len(items) <= n:
        return list(items)
    idx = np.sort(rng.choice(len(items), size=n, replace=False))
    return [items[i] for i in idx]


def _balanced_cap(rows: list[dict], n: int, rng: np.random.Generator) -> list[dict]:
    """At most ``n`` rows, drawn round-robin over their ground-truth letters (each letter's rows in a seeded
    order), so that no letter is over-represented when there is a choice; kept in their original order."""
    if len(rows) <= n:
        return list(rows)
    groups: dict[str, list[int]] = {}
    for k, r in enumerate(rows):
        groups.setdefault(r["ground_truth"], []).append(k)
    queues = {g: [idx[i] for i in rng.permutation(len(idx))] for g, idx in sorted(groups.items())}
    picked: list[int] = []
    while len(picked) < n:
        for g in sorted(queues):
            if queues[g] and len(picked) < n:
                picked.append(queues[g].pop(0))
    return [rows[k] for k in sorted(picked)]


def _combos(pool: list, k: int, limit: int, rng: np.random.Generator, ordered: bool = False) -> list[tuple]:
    """All k-combinations (or permutations) of ``pool`` when there are at most ``limit``, else ``limit`` distinct
    seeded random ones."""
    n = len(pool)
    total = math.perm(n, k) if ordered else math.comb(n, k)
    if total <= limit:
        it = itertools.permutations(pool, k) if ordered else itertools.combinations(pool, k)
        return list(it)
    seen: set = set()
    out: list[tuple] = []
    while len(out) < limit:  # vectorised draws of k distinct indices, deduplicated, in draw order
        idx = np.argsort(rng.random((2 * (limit - len(out)) + 8, n)), axis=1)[:, :k]
        for row in idx.tolist():
            key = tuple(row) if ordered else tuple(sorted(row))
            if key not in seen:
                seen.add(key)
                out.append(tuple(pool[i] for i in key))
                if len(out) == limit:
                    break
    return out


def signed_angle_deg(a_xy, b_xy, c_xy) -> float:
    """Signed floor angle (degrees, (-180, 180], + = left/counter-clockwise) of C seen from A facing B."""
    f = np.asarray(b_xy, float)[:2] - np.asarray(a_xy, float)[:2]
    v = np.asarray(c_xy, float)[:2] - np.asarray(a_xy, float)[:2]
    return math.degrees(math.atan2(f[0] * v[1] - f[1] * v[0], f[0] * v[0] + f[1] * v[1]))


def direction_class(theta_deg: float, level: str, margin_deg: float) -> str | None:
    """Direction answer for ``level`` in {"easy", "medium", "hard"} of a signed angle, or None when θ lies within
    ``margin_deg`` of a class boundary (ambiguous)."""
    a = abs(theta_deg)
    if level == "easy":
        bounds, ans = (0.0, 180.0), ("left" if theta_deg > 0 else "right")
    elif level == "medium":
        bounds = (0.0, 135.0)
        ans = "back" if a >= 135.0 else ("left" if theta_deg > 0 else "right")
    elif level == "hard":
        bounds = (0.0, 90.0, 180.0)
        ans = ("front-" if a < 90.0 else "back-") + ("left" if theta_deg > 0 else "right")
    else:
        raise ValueError(f"unknown level {level!r}")
    return None if min(abs(a - b) for b in bounds) < margin_deg else ans


DIRECTION_OPTIONS = {"easy": ["left", "right"], "medium": ["left", "right", "back"],
                     "hard": ["front-left", "front-right", "back-left", "back-right"]}

TURN_OPTIONS = ["Turn Left", "Turn Right", "Turn Back"]


def turn_class(theta_rad: float, margin_deg: float) -> str | None | bool:
    """Turn name of a signed turn angle (+ = left): "" for none (< 30°), "Turn Left" / "Turn Right"
    (30°..150°), "Turn Back" (≥ 150°); None when within ``margin_deg`` of 30° or 150° (ambiguous)."""
    d = math.degrees(theta_rad)
    a = abs(d)
    if min(abs(a - 30.0), abs(a - 150.0)) < margin_deg:
        return None
    if a < 30.0:
        return ""
    if a >= 150.0:
        return "Turn Back"
    return "Turn Left" if d > 0 else "Turn Right"


# ---------------------------------------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------------------------------------
class _Context:
    def __init__(self, scene, config: Config):
        self.cfg = config
        self.name = common.scene_name(scene)
        self.layout = common.room_layout(scene)
        instances = common.instances(scene)
        graph = common.scene_graph(scene, required=False)
        outside = set()
        if graph:
            outside = {int(o["id"]) for o in graph.get("objects", []) if o.get("inside_room") is False}
        self.graph = graph
        self.all_instances = instances
        self.instances = [i for i in instances if i.id not in outside]
        self.inside = {i.id for i in self.instances}
        self.labels = common.by_label(instances)  # counted over all instances: uniqueness is scene-wide
        self.unique = [g[0] for lab, g in self.labels.items() if len(g) == 1 and g[0].id not in outside]
        self.points = PointCache(instances, common.mesh_vertices(scene))
        self.scene = scene
        self._nav = None
        self.referents, self.referring_stats = self._referents()
        self.named = self.unique + sorted((i for i in self.instances if i.id in self.referents), key=lambda i: i.id)

    def _referents(self) -> tuple[dict[int, dict], dict]:
        """Instances of repeated labels that a referring expression names unambiguously: ``{id: {"anchor",
        "distance_m", "next_same_label_m"}}`` where the instance's closest-point distance to the uniquely
        named ``anchor`` is at least ``referring_margin_m`` below that of every other instance of its label
        (the anchor with the largest margin wins; ties by id). Also returns the counts of referable and
        rejected (ambiguous) instances."""
        out: dict[int, dict] = {}
        stats = {"n_repeated_instances": 0, "n_referable": 0, "rejected_by_reason": {}}
        if not self.cfg.referring:
            return out, stats
        rej: Counter = Counter()
        for lab, g in self.labels.items():
            if len(g) < 2:
                continue
            dist = {u.id: {j.id: self.points.distance(j.id, u.id) for j in g} for u in self.unique
                    if u.label != lab}
            for i in g:
                if i.id not in self.inside:
                    continue
                stats["n_repeated_instances"] += 1
                best = None
                for u in self.unique:
                    if u.id not in dist:
                        continue
                    d = dist[u.id]
                    nxt = min(v for k, v in d.items() if k != i.id)
                    margin = nxt - d[i.id]
                    if margin >= self.cfg.referring_margin_m and (best is None or margin > best[0] + 1e-9):
                        best = (margin, u, d[i.id], nxt)
                if best is None:
                    rej["no_anchor_with_margin" if dist else "no_unique_anchor"] += 1
                    continue
                out[i.id] = {"anchor": best[1], "distance_m": round(best[2], 4), "next_same_label_m": round(best[3], 4)}
        stats["n_referable"] = len(out)
        stats["rejected_by_reason"] = dict(sorted(rej.items()))
        return out, stats

    def the(self, i: Instance) -> str:
        """The referring expression of a named instance: "the couch", or "the chair nearest the couch"."""
        r = self.referents.get(i.id)
        return f"the {i.label}" if r is None else f"the {i.label} nearest the {r['anchor'].label}"

    def objs(self, pairs: list[tuple[Instance, str]]) -> list[dict]:
        """``objects`` records of (instance, role) pairs, each referred instance followed by its anchor."""
        out = []
        for i, role in pairs:
            out.append(_obj(i, role))
            r = self.referents.get(i.id)
            if r is not None:
                out.append({**_obj(r["anchor"], "anchor"), "of": i.id})
        return out

    def ref_figures(self, insts: list[Instance]) -> dict:
        """``{"referents": {id: {anchor_id, distance_m, next_same_label_m}}}`` for the referred ones (or {})."""
        rs = {str(i.id): {"anchor_id": self.referents[i.id]["anchor"].id,
                          "distance_m": self.referents[i.id]["distance_m"],
                          "next_same_label_m": self.referents[i.id]["next_same_label_m"]}
              for i in insts if i.id in self.referents}
        return {"referents": rs} if rs else {}

    def navgraph(self) -> nav.NavGraph | None:
        if self._nav is None:
            try:
                cams = common.cameras(self.scene)
            except InputError:  # no usable cameras: no trajectory nodes, free-space lattice only
                cams = []
            ncfg = self.cfg.nav
            segs = []
            if len(cams) >= 2:
                xy, t, _ = nav.floor_trajectory(cams)
                segs = nav.refine_trajectory(xy, t, ncfg).segments
            space = nav.build_free_space(common.room_polygon(self.layout), self.all_instances, segs, ncfg)
            self._nav = nav.build_nav_graph(space, segs, ncfg)
        return self._nav

    def label_distance(self, label: str, ref: Instance) -> tuple[float, int]:
        """(closest-point distance of ``label``'s nearest instance to ``ref``, that instance's id)."""
        best = min((self.points.distance(i.id, ref.id), i.id) for i in self.labels[label])
        return best


def gen_object_counting(ctx: _Context, rng) -> _Tally:
    t = _Tally()
    for label, insts in ctx.labels.items():
        insts = [i for i in insts if i.id in ctx.inside]
        if len(insts) < 2:
            continue
        t.accept({"question": f"How many {label}(s) are in this room?", "answer": len(insts),
                  "ground_truth": str(len(insts)), "objects": [_obj(i, "counted") for i in insts],
                  "figures": {"count": len(insts)}})
    return t


def gen_object_abs_distance(ctx: _Context, rng) -> _Tally:
    t = _Tally()
    for a, b in _combos(ctx.named, 2, ctx.cfg.max_candidates, rng):
        d = ctx.points.distance(a.id, b.id)
        if d < ctx.cfg.abs_distance_min_m:
            t.reject("closer_than_min")
            continue
        t.accept({"question": "Measuring from the closest point of each object, what is the direct distance "
                              f"between {ctx.the(a)} and {ctx.the(b)} (in meters)?",
                  "answer": round(d, 4), "ground_truth": f"{d:.2f}",
                  "objects": ctx.objs([(a, "first"), (b, "second")]),
                  "figures": {"closest_distance_m": round(d, 4), **ctx.ref_figures([a, b])}})
    return t


def gen_object_size_estimation(ctx: _Context, rng) -> _Tally:
    t = _Tally()
    for a in ctx.named:
        cm = float(np.max(a.size)) * 100.0
        if cm <= 0:
            t.reject("degenerate_box")
            continue
        t.accept({"question": "What is the length of the longest dimension (length, width, or height) of "
                              f"{ctx.the(a)}, measured in centimeters?", "answer": round(cm, 2),
                  "ground_truth": f"{cm:.0f}", "objects": ctx.objs([(a, "measured")]),
                  "figures": {"box_size_m": [round(float(v), 4) for v in a.size], **ctx.ref_figures([a])}})
    return t


def gen_room_size_estimation(ctx: _Context, rng) -> _Tally:
    t = _Tally()
    area = float(ctx.layout["room"]["floor_area_m2"])
    if area <= 0:
        t.reject("no_floor_area")
        return t
    t.accept({"question": "What is the size of this room (in square meters)? If multiple rooms are shown, "
                          "estimate the size of the combined space.", "answer": round(area, 3),
              "ground_truth": f"{area:.1f}", "objects": [], "figures": {"floor_area_m2": round(area, 3)}})
    return t


def gen_object_rel_distance(ctx: _Context, rng) -> _Tally:
    t = _Tally()
    labels = list(ctx.labels)
    limit = ctx.cfg.max_candidates
    def others(ref: Instance) -> list[str]:  # not its own label, nor its anchor's (that would give it away)
        r = ctx.referents.get(ref.id)
        return [lab for lab in labels if lab != ref.label and (r is None or lab != r["anchor"].label)]

    if len(ctx.named) * math.comb(max(len(labels) - 1, 0), 4) <= limit:
        cands = [(ref, c) for ref in ctx.named for c in itertools.combinations(others(ref), 4)]
    else:  # distinct seeded draws of (reference, four other labels)
        seen: set = set()
        cands = []
        while len(cands) < limit:
            m = 2 * (limit - len(cands)) + 8
            refs = rng.integers(len(ctx.named), size=m)
            idx = np.argsort(rng.random((m, len(labels))), axis=1)[:, :6]
            for r, row in zip(refs.tolist(), idx.tolist()):
                ref = ctx.named[r]
                ok = set(others(ref))
                choice = tuple(sorted([labels[i] for i in row if labels[i] in ok][:4]))
                if len(choice) == 4 and (r, choice) not in seen:
                    seen.add((r, choice))
                    cands.append((ref, choice))
                    if len(cands) == limit:
                        break
    for ref, choice in cands:
        dist = {lab: ctx.label_distance(lab, ref) for lab in choice}
        order = sorted(choice, key=lambda lab: dist[lab][0])
        margin = dist[order[1]][0] - dist[order[0]][0]
        if margin < ctx.cfg.rel_distance_margin_m:
            t.reject("margin_below_min")
            continue
        opts, gt = _mc(list(choice), order[0])
        objs = ctx.objs([(ref, "reference")]) + [_obj(ctx.points.by_id[dist[lab][1]], "candidate")
                                                 for lab in choice]
        t.accept({"question": "Measuring from the closest point of each object, which of these objects "
                              f"({', '.join(choice)}) is the closest to {ctx.the(ref)}?",
                  "options": opts, "ground_truth": gt, "answer": order[0], "objects": objs,
                  "figures": {"distance_m": {lab: round(dist[lab][0], 4) for lab in choice},
                              "margin_m": round(margin, 4), **ctx.ref_figures([ref])}})
    return t


def _gen_direction(level: str) -> Callable:
    def gen(ctx: _Context, rng) -> _Tally:
        t = _Tally()
        for a, b, c in _combos(ctx.named, 3, ctx.cfg.max_candidates, rng, ordered=True):
            ab = np.linalg.norm(b.center[:2] - a.center[:2])
            ac = np.linalg.norm(c.center[:2] - a.center[:2])
            if min(ab, ac) < ctx.cfg.direction_min_m:
                t.reject("too_close_to_observer")
                continue
            theta = signed_angle_deg(a.center, b.center, c.center)
            ans = direction_class(theta, level, ctx.cfg.direction_margin_deg)
            if ans is None:
                t.reject("near_boundary")
                continue
            ta, tb, tc = ctx.the(a), ctx.the(b), ctx.the(c)
            if level == "easy":
                q = (f"If I am standing by {ta} and facing {tb}, is {tc} to the left or the right of {tb}?")
            elif level == "medium":
                q = (f"If I am standing by {ta} and facing {tb}, is {tc} to my left, "
                     "right, or back? An object is to my back if I would have to turn at least 135 degrees in "
                     "order to face it.")
            else:
                q = (f"If I am standing by {ta} and facing {tb}, is {tc} to my "
                     "front-left, front-right, back-left, or back-right? The directions refer to the quadrants of "
                     "a Cartesian plane (if I am standing at the origin and facing along the positive y-axis).")
            opts, gt = _mc(DIRECTION_OPTIONS[level], ans)
            t.accept({"question": q, "options": opts, "ground_truth": gt, "answer": ans,
                      "objects": ctx.objs([(a, "position"), (b, "orientation"), (c, "query")]),
                      "figures": {"angle_deg": round(theta, 2), **ctx.ref_figures([a, b, c])}})
        return t
    return gen


def gen_obj_appearance_order(ctx: _Context, rng) -> _Tally:
    t = _Tally()
    video = common.video_info(ctx.scene) or {}
    fps = float(video.get("fps") or 0)

    def when(i: Instance) -> float | None:  # first_timestamp_s, else first_frame / fps (video.json)
        if i.first_timestamp_s is not None:
            return i.first_timestamp_s
        return i.first_frame / fps if i.first_frame is not None and fps > 0 else None

    first = {}
    for lab, insts in ctx.labels.items():
        ts = [(when(i), i.id) for i in insts if when(i) is not None and i.id in ctx.inside]
        if ts:
            first[lab] = min(ts)
    for choice in _combos(sorted(first), 4, ctx.cfg.max_candidates, rng):
        times = sorted(first[lab][0] for lab in choice)
        if min(np.diff(times)) < ctx.cfg.appearance_min_gap_s:
            t.reject("appearances_too_close")
            continue
        shown = [choice[k] for k in rng.permutation(4)]
        correct = sorted(choice, key=lambda lab: first[lab][0])
        perms = [p for p in itertools.permutations(correct) if list(p) != correct]
        wrong = [list(perms[k]) for k in rng.choice(len(perms), size=3, replace=False)]
        options = [correct] + wrong
        options = [options[k] for k in rng.permutation(4)]
        texts = [", ".join(o) for o in options]
        opts, gt = _mc(texts, ", ".join(correct))
        t.accept({"question": "What will be the first-time appearance order of the following categories in the "
                              f"video: {', '.join(shown)}?", "options": opts, "ground_truth": gt,
                  "answer": ", ".join(correct),
                  "objects": [_obj(ctx.points.by_id[first[lab][1]], "category") for lab in correct],
                  "figures": {"first_timestamp_s": {lab: round(first[lab][0], 3) for lab in correct}}})
    return t


def route_legs(path_xy: np.ndarray, start_yaw: float, simplify_m: float, margin_deg: float):
    """Turns and legs of a route: ``path_xy`` (``N×2`` metres) simplified by Douglas–Peucker, the turn before each
    leg classified with :func:`turn_class` (the first relative to ``start_yaw``), legs after a "" (no) turn merged.

    Returns (list of (turn name, leg end point (2,)), simplified polyline, turn angles deg) or None when a turn
    is ambiguous (near 30° / 150°).
    """
    simp = nav.simplify_polyline(path_xy, simplify_m)
    if len(simp) < 2:
        return [], simp, []
    angles = nav.turn_angles(simp, start_yaw)
    legs: list[tuple[str, np.ndarray]] = []
    for k, a in enumerate(angles):
        name = turn_class(a, margin_deg)
        if name is None:
            return None
        end = simp[k + 1]
        if name == "" and legs:
            legs[-1] = (legs[-1][0], end)  # straight on: the previous leg continues
        else:
            legs.append((name, end))
    return legs, simp, [round(math.degrees(a), 2) for a in angles]


def route_landmarks(legs: list, named: list[Instance], used: set[int], radius_m: float) -> list[Instance] | None:
    """The landmark ending each leg but the last: the named instance (distinct, not in ``used`` — the start and
    the goal) whose footprint is nearest the leg's end within ``radius_m``; None when a leg has none."""
    used = set(used)
    marks: list[Instance] = []
    for _, end in legs[:-1]:
        best = None
        for o in named:
            if o.id in used:
                continue
            d = float(common.footprint_distance(o, end)[0])
            if d <= radius_m and (best is None or d < best[0]):
                best = (d, o)
        if best is None:
            return None
        marks.append(best[1])
        used.add(best[1].id)
    return marks


def route_question(s: Instance, f: Instance, e: Instance, legs: list, marks: list[Instance],
                   the: Callable[[Instance], str] | None = None) -> str:
    """VSI-Bench's route-planning question from start ``s`` facing ``f`` to goal ``e``: one "[please fill in]"
    per turn, one "Go forward until the <landmark>." per leg (``marks``: the legs' end objects, goal last);
    ``the(instance)`` names an object (default "the <label>")."""
    the = the or (lambda i: f"the {i.label}")
    steps, k = [], 1
    for (name, _), m in zip(legs, marks):
        if name:
            steps.append(f"{k}. [please fill in]")
            k += 1
        steps.append(f"{k}. Go forward until {the(m)}.")
        k += 1
    return (f"You are a robot beginning at {the(s)} facing {the(f)}. You want to navigate to "
            f"{the(e)}. You will perform the following actions (Note: for each [please fill in], choose either "
            "'turn back,' 'turn left,' or 'turn right.'): " + " ".join(steps) +
            " You have reached the final destination.")


def _turn_options(correct: str, n_turns: int, rng: np.random.Generator) -> list[str]:
    """The correct turn sequence and up to three other sequences of as many turns, in a seeded order."""
    alts = [", ".join(p) for p in itertools.product(TURN_OPTIONS, repeat=n_turns)]
    alts = [x for x in alts if x != correct]
    pick = [alts[i] for i in rng.choice(len(alts), size=min(3, len(alts)), replace=False)]
    options = [correct] + pick
    return [options[i] for i in rng.permutation(len(options))]


def gen_route_planning(ctx: _Context, rng) -> _Tally:
    t = _Tally()
    if len(ctx.named) < 3:
        return t
    g = ctx.navgraph()
    named = ctx.named  # landmarks must be unambiguously named
    cands = _combos(ctx.named, 3, ctx.cfg.max_route_candidates, rng, ordered=True)
    for s, f, e in cands:
        a, _ = g.approach_node(s)
        b, _ = g.approach_node(e)
        if a is None or b is None:
            t.reject("unreachable")
            continue
        if a == b:
            t.reject("same_place")
            continue
        path = g.shortest_path(a, b)
        if path is None:
            t.reject("unreachable")
            continue
        xy = np.array([g.graph.nodes[n]["xy"] for n in path])
        if np.linalg.norm(f.center[:2] - xy[0]) < ctx.cfg.direction_min_m:
            t.reject("too_close_to_observer")
            continue
        start_yaw = nav.heading(xy[0], f.center)
        res = route_legs(xy, start_yaw, ctx.cfg.route_simplify_m, ctx.cfg.direction_margin_deg)
        if res is None:
            t.reject("near_turn_boundary")
            continue
        legs, simp, angles = res
        turns = [name for name, _ in legs if name]
        if not turns:
            t.reject("no_turn")
            continue
        if len(legs) > ctx.cfg.route_max_legs:
            t.reject("too_many_legs")
            continue
        marks = route_landmarks(legs, named, {s.id, e.id}, ctx.cfg.landmark_radius_m)
        if marks is None:
            t.reject("no_landmark")
            continue
        marks.append(e)
        q = route_question(s, f, e, legs, marks, ctx.the)
        correct = ", ".join(turns)
        opts, gt = _mc(_turn_options(correct, len(turns), rng), correct)
        t.accept({"question": q, "options": opts, "ground_truth": gt, "answer": correct,
                  "objects": ctx.objs([(s, "start"), (f, "facing"), (e, "goal")] +
                                      [(m, "landmark") for m in marks[:-1]]),
                  "figures": {"route_xy": [[round(float(v), 3) for v in p] for p in simp],
                              "turn_angles_deg": angles, "start_yaw_rad": round(start_yaw, 4),
                              "path_length_m": round(float(np.sum(np.linalg.norm(np.diff(xy, axis=0), axis=1))), 3),
                              "graph_nodes": [int(n) for n in path], **ctx.ref_figures([s, f, e] + marks[:-1])}})
    return t


GENERATORS: dict[str, Callable] = {
    "object_counting": gen_object_counting,
    "object_abs_distance": gen_object_abs_distance,
    "object_size_estimation": gen_object_size_estimation,
    "room_size_estimation": gen_room_size_estimation,
    "object_rel_distance": gen_object_rel_distance,
    "object_rel_direction_easy": _gen_direction("easy"),
    "object_rel_direction_medium": _gen_direction("medium"),
    "object_rel_direction_hard": _gen_direction("hard"),
    "obj_appearance_order": gen_obj_appearance_order,
    "route_planning": gen_route_planning,
}


def scene_meta(ctx: _Context) -> dict:
    """VSI-Bench's per-scene meta: room_size (m²), room_center (x, y, z metres), object_counts {label: n},
    object_bbox {label: [bbox records]} (see :meth:`Instance.bbox_meta`)."""
    room = ctx.layout["room"]
    poly = common.room_polygon(ctx.layout)
    center = None
    if ctx.graph and ctx.graph.get("room", {}).get("center"):
        center = [round(float(v), 4) for v in ctx.graph["room"]["center"]]
    else:  # polygon area centroid, at half the room height
        x, y = poly[:, 0], poly[:, 1]
        cross = x * np.roll(y, -1) - np.roll(x, -1) * y
        a = cross.sum() / 2
        cx, cy = ((x + np.roll(x, -1)) * cross).sum() / (6 * a), ((y + np.roll(y, -1)) * cross).sum() / (6 * a)
        center = [round(float(cx), 4), round(float(cy), 4), round(float(room.get("height_m", 0.0)) / 2, 4)]
    return {"room_size": round(float(room["floor_area_m2"]), 4), "room_center": center,
            "object_counts": {lab: len(g) for lab, g in ctx.labels.items()},
            "object_bbox": {lab: [i.bbox_meta() for i in g] for lab, g in ctx.labels.items()}}


def generate(scene, config: Config | None = None) -> tuple[list[dict], dict]:
    """Questions and meta for a scene (nothing written). Returns (rows, meta); see the module doc.

    Raises:
        InputError: the scene lacks instances.json or layout.json (or they are unreadable / not metric).
    """
    import time

    cfg = config or Config()
    scene = common.scene_of(scene)
    common.require_inputs(scene, [INSTANCES_JSON, LAYOUT_JSON])
    t0 = time.perf_counter()
    ctx = _Context(scene, cfg)
    rows: list[dict] = []
    stats = {}
    for ti, qtype in enumerate(QUESTION_TYPES):
        if qtype not in cfg.types:
            continue
        rng = np.random.default_rng([cfg.seed, ti])
        ts = time.perf_counter()
        tally = GENERATORS[qtype](ctx, rng)
        kept = (_balanced_cap(tally.accepted, cfg.max_per_type, rng) if qtype in MC_TYPES
                else _cap(tally.accepted, cfg.max_per_type, rng))
        for r in kept:
            row = {"id": len(rows), "dataset": cfg.dataset, "scene_name": ctx.name, "question_type": qtype,
                   "question": r["question"], "options": r.get("options"), "ground_truth": r["ground_truth"],
                   "answer": r["answer"], "objects": r["objects"], "figures": r["figures"]}
            rows.append(row)
        n_rej = sum(tally.rejected.values())
        stats[qtype] = {"n_candidates": tally.n_candidates, "n_accepted": len(tally.accepted),
                        "n_written": len(kept), "n_rejected": n_rej,
                        "rejected_share": round(n_rej / tally.n_candidates, 4) if tally.n_candidates else None,
                        "rejected_by_reason": dict(sorted(tally.rejected.items())),
                        "seconds": round(time.perf_counter() - ts, 3)}
    meta = {"dataset": cfg.dataset, "scene_name": ctx.name, **scene_meta(ctx),
            "generation": {"seed": cfg.seed, "n_questions": len(rows), "per_type": stats,
                           "referring": {**ctx.referring_stats,
                                         "n_questions_with_referents": sum(1 for r in rows
                                                                           if "referents" in r["figures"])},
                           "seconds": round(time.perf_counter() - t0, 3),
                           "config": cfg.model_dump(mode="json")}}
    return rows, meta


def write_jsonl(path, rows: list[dict]) -> None:
    """Atomically write rows as JSON lines."""
    import json

    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def run(scene, config: Config | None = None) -> StageResult:
    """Generate and write ``tasks/vqa.jsonl`` and ``tasks/vqa_meta.json``.

    Returns:
        ``qc``: n_questions, per-type counts written, seconds; a one-line summary.

    Raises:
        InputError: the scene lacks instances.json or layout.json, or an input is unreadable or not in the
            world frame.
    """
    scene = common.scene_of(scene)
    rows, meta = generate(scene, config)
    write_jsonl(scene.task_path("vqa.jsonl"), rows)
    write_json(scene.task_path("vqa_meta.json"), meta)
    per_type = {k: v["n_written"] for k, v in meta["generation"]["per_type"].items()}
    qc = {"n_questions": len(rows), "per_type": per_type, "seconds": meta["generation"]["seconds"]}
    return StageResult(qc=qc, summary=f"{len(rows)} questions of {sum(1 for n in per_type.values() if n)} types")

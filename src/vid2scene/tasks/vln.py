"""Vision-and-language navigation episodes, R2R / VLN-CE style (Anderson et al. CVPR 2018; Krantz et al. ECCV
2020), from the scene's own camera trajectory.

Writes ``tasks/vln.json`` and the navigation graph ``tasks/nav_graph.json`` (:mod:`.nav`).

Steps: the floor-projected camera trajectory is refined (:func:`.nav.refine_trajectory`: smoothed, back-tracking
and loops cut, resampled every 0.25 m); windows of ``episode_min_m``..``episode_max_m`` of path, starting every
``stride_m``, become episodes. The reference path is the window sampled every ``reference_spacing_m``; the
ground-truth actions are VLN-CE's (0 STOP, 1 MOVE_FORWARD 0.25 m, 2 TURN_LEFT 15°, 3 TURN_RIGHT 15°) from the
start pose through the reference path (:func:`.nav.encode_actions`); the start heading is the camera's viewing
direction there. Instructions are filled from varied templates with landmarks named from the scene graph: an
object is named "the <label>" when its label is unique, else "the <label> <on / next to / above / below> the
<unique label>" when that relation singles it out (``scene_graph.json`` relations), else it cannot be a
landmark. The goal landmark is the nameable object nearest the goal (within ``landmark_radius_m`` of its
footprint); an episode without one is dropped. Turn words come from the simplified reference path.

Coordinates, as habitat-lab / VLN-CE read them: ``frame: "habitat_y_up"`` — positions are
``habitat_from_world · p`` = (x, z, −y) of our z-up metric world (floor at y = 0), rotations are quaternions in
**quat_xyzw** order (habitat's episode convention) rotating the agent's forward axis −z; a world heading ψ
(from +x, counter-clockwise about +z) is a rotation by ψ − 90° about habitat +y. The file also records
``habitat_from_world`` and, per episode, ``info.start_yaw_rad`` and ``info.reference_path_world``.

``vln.json``::

    {"frame": "habitat_y_up", "habitat_from_world": 4×4, "quaternion_order": "xyzw",
     "action_space": {"0": "STOP", "1": "MOVE_FORWARD", "2": "TURN_LEFT", "3": "TURN_RIGHT"},
     "forward_step_m": 0.25, "turn_deg": 15.0, "trajectory": {refinement stats, "segments_world"},
     "episodes": [{"episode_id": 0, "trajectory_id": 0, "scene_id": "<scene>/mesh.ply",
                   "start_position": [x, y, z], "start_rotation": [x, y, z, w],
                   "goals": [{"position": [x, y, z], "radius": 1.0}],
                   "instruction": {"instruction_text": "...", "template": "via_goal"},
                   "reference_path": [[x, y, z], ...], "actions": [1, 1, 2, ..., 0],
                   "info": {"geodesic_distance": m, "start_yaw_rad": rad, "landmarks": [{"id", "label",
                            "role", "name"}], "reference_path_world": [[x, y], ...], "start_timestamp_s": s}}]}
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..io import write_json
from ..scene import CAMERAS_JSON, INSTANCES_JSON, LAYOUT_JSON
from ..stage import StageResult
from . import common, nav
from .common import Instance, footprint_distance
from .nav import NavConfig

NAME = "vln"
OUTPUTS = ["tasks/vln.json", "tasks/nav_graph.json"]

HABITAT_FROM_WORLD = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1.0]])


class Config(BaseModel):
    """VLN episode settings (metres)."""

    model_config = ConfigDict(extra="forbid")
    episode_min_m: float = Field(2.0, gt=0)
    episode_max_m: float = Field(8.0, gt=0)
    stride_m: float = Field(1.0, gt=0, description="a new episode starts every this much path")
    reference_spacing_m: float = Field(1.0, gt=0)
    goal_radius_m: float = Field(1.0, gt=0, description="success radius (VLN-CE uses 3 m in whole houses)")
    landmark_radius_m: float = Field(1.5, gt=0)
    max_episodes: int = Field(100, ge=1)
    turn_word_deg: float = Field(45.0, gt=0, lt=180, description="a path turn sharper than this is named")
    nav: NavConfig = Field(default_factory=NavConfig)
    seed: int = 0


# ---------------------------------------------------------------------------------------------------------
# habitat conventions
# ---------------------------------------------------------------------------------------------------------
def world_to_habitat(p) -> list[float]:
    """A world point (x, y[, z]) in metres (z up; z = 0 when only x, y are given) → habitat y-up (x, z, −y)."""
    p = np.asarray(p, dtype=np.float64).ravel()
    x, y, z = p[0], p[1], (p[2] if len(p) > 2 else 0.0)
    return [float(x), float(z), float(-y)]


def habitat_to_world(p) -> np.ndarray:
    """A habitat y-up point (x, y, z) → world z-up (x, −z, y), metres."""
    p = np.asarray(p, dtype=np.float64).ravel()
    return np.array([p[0], -p[2], p[1]])


def quat_xyzw_from_yaw(yaw_rad: float) -> list[float]:
    """Habitat agent rotation (quat_xyzw) for a world heading ``yaw_rad`` (from +x, counter-clockwise about +z):
    a rotation by ``yaw − π/2`` about habitat +y, which turns the agent's forward −z onto the heading."""
    phi = yaw_rad - math.pi / 2
    return [0.0, math.sin(phi / 2), 0.0, math.cos(phi / 2)]


def yaw_from_quat_xyzw(q) -> float:
    """World heading (rad) of a habitat agent rotation (quat_xyzw): where it sends the forward axis −z."""
    from scipy.spatial.transform import Rotation

    f = Rotation.from_quat(np.asarray(q, dtype=np.float64)).apply([0.0, 0.0, -1.0])  # scipy: scalar-last
    w = habitat_to_world(f)
    return math.atan2(w[1], w[0])


# ---------------------------------------------------------------------------------------------------------
# landmarks and instructions
# ---------------------------------------------------------------------------------------------------------
PHRASES = {"on": "on", "near": "next to", "above": "above", "below": "below"}


def landmark_names(instances: list[Instance], graph: dict | None) -> dict[int, str]:
    """Referring expressions for the instances that can be named unambiguously: "the <label>" for a unique
    label; otherwise "the <label> <phrase> the <unique label>" when exactly one instance of the label has that
    relation (``on`` / ``near`` / ``above`` / ``below``) to that object in the scene graph."""
    groups = common.by_label(instances)
    label = {i.id: i.label for i in instances}
    names = {g[0].id: f"the {lab}" for lab, g in groups.items() if len(g) == 1}
    if not graph:
        return names
    rels: dict[tuple[str, str, int], list[int]] = {}
    for r in graph.get("relations", []):
        s, p, o = r.get("subject"), r.get("predicate"), r.get("object")
        if p in PHRASES and s in label and o in label and o in names:
            rels.setdefault((label[s], p, o), []).append(s)
    for (lab, p, o), subs in sorted(rels.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        subs = sorted(set(subs))
        if len(subs) == 1 and subs[0] not in names:
            names[subs[0]] = f"the {lab} {PHRASES[p]} {names[o]}"
    return names


def _turn_words(angles_rad: list[float], min_deg: float) -> list[str]:
    out = []
    for a in angles_rad:
        d = math.degrees(a)
        if abs(d) >= 150:
            out.append("turn around")
        elif abs(d) >= min_deg:
            out.append("turn left" if d > 0 else "turn right")
    return out


def _join_turns(words: list[str]) -> str:
    if not words:
        return "go straight ahead"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and then " + words[-1].replace("turn ", "")


TEMPLATES = {
    "goal": "Walk towards {goal} and stop next to it.",
    "turns_goal": "{Turns}, then keep going until you reach {goal}. Stop there.",
    "start_goal": "Starting next to {start}, make your way to {goal} and wait there.",
    "via_goal": "Walk past {via} and stop when you get to {goal}.",
    "start_via_goal": "Starting by {start}, go past {via}, and stop near {goal}.",
    "turns_via_goal": "{Turns} and head past {via}. Your goal is {goal}; stop once you are beside it.",
    "start_turns_goal": "From {start}, {turns}. Continue to {goal} and stop.",
}


def make_instruction(rng: np.random.Generator, goal: str, start: str | None, via: str | None,
                     turns: list[str]) -> tuple[str, str]:
    """(instruction text, template name): a template chosen at random among those whose slots are filled."""
    slots = {"goal": goal, "start": start, "via": via, "turns": _join_turns(turns) if turns else None}
    usable = [k for k, tpl in TEMPLATES.items()
              if all(slots[s] is not None for s in ("start", "via", "turns") if "{" + s + "}" in tpl.lower())]
    name = usable[int(rng.integers(len(usable)))]
    t = slots["turns"] or ""
    text = TEMPLATES[name].format(goal=goal, start=start, via=via, turns=t, Turns=t[:1].upper() + t[1:])
    return text, name


# ---------------------------------------------------------------------------------------------------------
# episodes
# ---------------------------------------------------------------------------------------------------------
def _yaw_at(t: float, cam_t: np.ndarray, cam_yaw: np.ndarray) -> float | None:
    ok = np.isfinite(cam_yaw)
    if not ok.any():
        return None
    k = int(np.argmin(np.where(ok, np.abs(cam_t - t), np.inf)))
    return float(cam_yaw[k])


def _nearest(objs: list[Instance], xy: np.ndarray, radius: float, exclude: tuple = ()) -> Instance | None:
    """The instance of ``objs`` (not in ``exclude`` ids) whose footprint comes closest to any of the points
    ``xy`` (``N×2``), when within ``radius`` metres; ties to the lower id."""
    d = [(float(footprint_distance(o, xy).min()), o.id, o) for o in objs if o.id not in exclude]
    d = [x for x in d if x[0] <= radius]
    return min(d, key=lambda x: (x[0], x[1]))[2] if d else None


def _windows(seg: np.ndarray, cfg: Config, rng: np.random.Generator):
    """``(i0, i1, window)`` of one refined trajectory segment (``N×3`` x, y, t): a window of random length
    ``episode_min_m..episode_max_m`` starting every ``stride_m`` of path (shorter ones skipped)."""
    step = cfg.nav.resample_m
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(seg[:, :2], axis=0), axis=1))])
    s0 = 0.0
    while s0 + cfg.episode_min_m <= arc[-1] + 1e-9:
        length = float(rng.uniform(cfg.episode_min_m, cfg.episode_max_m))
        i0 = int(np.searchsorted(arc, s0 - 1e-9))
        i1 = int(min(np.searchsorted(arc, s0 + length - 1e-9), len(seg) - 1))
        s0 += cfg.stride_m
        if arc[i1] - arc[i0] >= cfg.episode_min_m - step / 2:
            yield float(arc[i1] - arc[i0]), seg[i0:i1 + 1]


def _reference_path(win: np.ndarray, cfg: Config) -> np.ndarray:
    """The window's floor points every ``reference_spacing_m`` (``K×2``), its last point included."""
    k = max(1, int(round(cfg.reference_spacing_m / cfg.nav.resample_m)))
    idx = list(range(0, len(win), k))
    if idx[-1] != len(win) - 1:
        idx.append(len(win) - 1)
    return win[idx, :2]


def _episode(win: np.ndarray, geodesic_m: float, nameable: list[Instance], names: dict[int, str],
             cam_t: np.ndarray, cam_yaw: np.ndarray, sname: str, cfg: Config,
             rng: np.random.Generator) -> dict | None:
    """One episode over a trajectory window (module docstring), or None when no nameable object is by its goal.
    ``episode_id`` / ``trajectory_id`` are left for the caller."""
    ref = _reference_path(win, cfg)
    goal = ref[-1]
    goal_obj = _nearest(nameable, goal[None], cfg.landmark_radius_m)
    if goal_obj is None:
        return None
    start_obj = _nearest(nameable, ref[0][None], cfg.landmark_radius_m, (goal_obj.id,))
    mid = win[len(win) // 5: max(len(win) // 5 + 1, 4 * len(win) // 5), :2]
    via_obj = _nearest(nameable, mid, cfg.landmark_radius_m, (goal_obj.id, getattr(start_obj, "id", None)))
    yaw = _yaw_at(float(win[0, 2]), cam_t, cam_yaw)
    if yaw is None:
        yaw = nav.heading(ref[0], ref[1])
    simp = nav.simplify_polyline(win[:, :2], 0.3)
    turns = _turn_words(nav.turn_angles(simp, yaw), cfg.turn_word_deg)
    text, tpl = make_instruction(rng, names[goal_obj.id], names.get(getattr(start_obj, "id", -1)),
                                 names.get(getattr(via_obj, "id", -1)), turns)
    actions = nav.encode_actions(ref[0], yaw, ref[1:], cfg.nav.forward_step_m, cfg.nav.turn_deg)
    marks = [{"id": o.id, "label": o.label, "role": role, "name": names[o.id]}
             for o, role in ((start_obj, "start"), (via_obj, "via"), (goal_obj, "goal")) if o is not None]
    return {"scene_id": f"{sname}/mesh.ply",
            "start_position": world_to_habitat(ref[0]), "start_rotation": quat_xyzw_from_yaw(yaw),
            "goals": [{"position": world_to_habitat(goal), "radius": cfg.goal_radius_m}],
            "instruction": {"instruction_text": text, "template": tpl},
            "reference_path": [world_to_habitat(p) for p in ref], "actions": actions,
            "info": {"geodesic_distance": round(geodesic_m, 4), "start_yaw_rad": round(yaw, 6),
                     "landmarks": marks, "reference_path_world": [[round(float(v), 4) for v in p] for p in ref],
                     "start_timestamp_s": round(float(win[0, 2]), 3)}}


def generate(scene, config: Config | None = None) -> tuple[dict, nav.NavGraph]:
    """Episodes (the ``vln.json`` dict) and the navigation graph of a scene (nothing written).

    Raises:
        InputError: the scene lacks instances.json / layout.json / cameras.json, or they are unreadable or not
            in the world frame.
    """
    cfg = config or Config()
    scene = common.scene_of(scene)
    common.require_inputs(scene, [INSTANCES_JSON, LAYOUT_JSON, CAMERAS_JSON])
    layout = common.room_layout(scene)
    instances = common.instances(scene)
    cam_xy, cam_t, cam_yaw = nav.floor_trajectory(common.cameras(scene))
    traj = nav.refine_trajectory(cam_xy, cam_t, cfg.nav) if len(cam_xy) >= 2 else nav.RefinedTrajectory([], {})
    space = nav.build_free_space(common.room_polygon(layout), instances, traj.segments, cfg.nav)
    navg = nav.build_nav_graph(space, traj.segments, cfg.nav)
    names = landmark_names(instances, common.scene_graph(scene, required=False))
    nameable = [i for i in instances if i.id in names]
    rng = np.random.default_rng([cfg.seed, 7])
    sname = common.scene_name(scene)
    episodes, rejected = [], {"no_goal_landmark": 0}
    for seg in traj.segments:
        for geodesic_m, win in _windows(seg, cfg, rng):
            ep = _episode(win, geodesic_m, nameable, names, cam_t, cam_yaw, sname, cfg, rng)
            if ep is None:
                rejected["no_goal_landmark"] += 1
                continue
            episodes.append({"episode_id": len(episodes), "trajectory_id": len(episodes), **ep})
    if len(episodes) > cfg.max_episodes:
        keep = np.sort(rng.choice(len(episodes), size=cfg.max_episodes, replace=False))
        episodes = [episodes[k] for k in keep]
        for k, e in enumerate(episodes):
            e["episode_id"] = e["trajectory_id"] = k
    out = {"frame": "habitat_y_up", "habitat_from_world": HABITAT_FROM_WORLD.tolist(), "quaternion_order": "xyzw",
           "action_space": {str(k): v for k, v in nav.ACTION_NAMES.items()},
           "forward_step_m": cfg.nav.forward_step_m, "turn_deg": cfg.nav.turn_deg,
           "trajectory": {**traj.stats, "segments_world": [[[round(float(v), 4) for v in p[:2]] for p in s]
                                                           for s in traj.segments]},
           "rejected": rejected, "episodes": episodes}
    return out, navg


def run(scene, config: Config | None = None) -> StageResult:
    """Generate and write ``tasks/vln.json`` and ``tasks/nav_graph.json``.

    Returns:
        ``qc``: n_episodes, trajectory_m (refined walk length), rejected counts, seconds; a one-line summary.

    Raises:
        InputError: as :func:`generate`.
    """
    import time

    t0 = time.perf_counter()
    scene = common.scene_of(scene)
    data, navg = generate(scene, config)
    write_json(scene.task_path("nav_graph.json"), navg.to_json(), indent=None)
    write_json(scene.task_path("vln.json"), data)
    qc = {"n_episodes": len(data["episodes"]), "trajectory_m": data["trajectory"].get("refined_length_m"),
          "rejected": data["rejected"], "seconds": round(time.perf_counter() - t0, 3)}
    walk = f"{qc['trajectory_m']:.1f} m" if qc["trajectory_m"] is not None else "no"
    return StageResult(qc=qc, summary=f"{qc['n_episodes']} episodes along {walk} of refined walk")

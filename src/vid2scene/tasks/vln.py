"""Vision-and-language navigation episodes, R2R / VLN-CE style (Anderson et al. CVPR 2018; Krantz et al. ECCV
2020), from the scene's own camera trajectory, written as VLN-CE's dataset loader reads them.

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

Coordinates, as habitat-lab / VLN-CE read them: positions are ``habitat_from_world · p`` = (x, z, −y) of our
z-up metric world (floor at y = 0), rotations are quaternions in **quat_xyzw** order (habitat's episode
convention) rotating the agent's forward axis −z; a world heading ψ (from +x, counter-clockwise about +z) is a
rotation by ψ − 90° about habitat +y.

Files (``SCENE/tasks/vln/``; VLN-CE's ``DATA_PATH`` / ``GT_PATH`` / ``SCENES_DIR`` point at them):

``{split}/{split}.json.gz``
    What ``VLNCEDatasetV1.from_json`` reads: ``{"instruction_vocab": {"word_list", "word2idx_dict", "stoi",
    "itos", "num_vocab", "UNK_INDEX", "PAD_INDEX"}, "episodes": [...]}``. Only ``word_list`` is read by VLN-CE
    (habitat's ``VocabDict`` rebuilds the rest from it); it starts ``<pad>, <unk>, <s>, </s>`` (PAD 0, UNK 1, as
    habitat's ``VocabFromText``), then the instruction words. Each episode has exactly the fields of VLN-CE's
    ``VLNExtendedEpisode`` (extra keys make its ``attrs`` constructor fail): ``episode_id``, ``trajectory_id``,
    ``scene_id`` (``<scene>/<scene>.glb``, relative to ``SCENES_DIR``), ``start_position``,
    ``start_rotation``, ``info: {"geodesic_distance"}``, ``goals: [{"position", "radius"}]`` (radius 3.0 m,
    VLN-CE's success distance), ``instruction: {"instruction_text", "instruction_tokens"}`` and
    ``reference_path``. ``instruction_tokens`` are vocabulary indices of habitat's ``tokenize`` (lower case,
    ``'s`` split off, ``,`` and ``?`` removed, split on runs of characters that are neither word characters
    nor ``-``), padded with PAD to ``max_instruction_tokens`` (200, as R2R-VLNCE's preprocessed data) for
    VLN-CE's instruction encoders.
    ``geodesic_distance`` is the length of ``reference_path`` (the polyline through its points, in metres).
``{split}/{split}_gt.json.gz``
    What VLN-CE's NDTW / SDTW measures read: ``{"<episode_id>": {"actions", "forward_steps", "locations"}}``,
    ``locations`` the habitat positions the ground-truth actions visit (start included, consecutive repeats
    dropped, as the measures drop them from the agent's path).
``{split}/{split}_vid2scene.json.gz``
    Everything else (ours): frame and action conventions, trajectory statistics, rejected windows and, per
    episode id, ``template``, ``start_yaw_rad``, ``landmarks``, ``reference_path_world``, ``start_timestamp_s``.
``scene_datasets/<scene>/<scene>.glb``
    The mesh for habitat-sim: the world-frame mesh after the floor clean-up
    (:func:`vid2scene.export.common.clean_below_floor`), mapped by ``habitat_from_world`` to habitat's y-up frame
    and written as binary glTF with vertex colours (trimesh; ``export_glb: false`` skips it). habitat-sim needs
    a navmesh next to it, computed by habitat-sim itself (docs/habitat.md).

Plus ``tasks/nav_graph.json`` (:mod:`.nav`).
"""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from ..io import atomic_path, write_json
from ..scene import CAMERAS_JSON, INSTANCES_JSON, LAYOUT_JSON
from ..stage import StageResult
from . import common, nav
from .common import Instance, footprint_distance
from .nav import NavConfig

NAME = "vln"
OUTPUTS = ["tasks/vln/", "tasks/nav_graph.json"]

HABITAT_FROM_WORLD = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1.0]])
PAD, UNK, START, END = "<pad>", "<unk>", "<s>", "</s>"
SPLIT_REGEX = re.compile(r"([^\w-]+)")
EPISODE_KEYS = ("episode_id", "trajectory_id", "scene_id", "start_position", "start_rotation", "info", "goals",
                "instruction", "reference_path")


class Config(BaseModel):
    """VLN episode settings (metres)."""

    model_config = ConfigDict(extra="forbid")
    episode_min_m: float = Field(2.0, gt=0)
    episode_max_m: float = Field(8.0, gt=0)
    stride_m: float = Field(1.0, gt=0, description="a new episode starts every this much path")
    reference_spacing_m: float = Field(1.0, gt=0)
    goal_radius_m: float = Field(3.0, gt=0, description="success radius (VLN-CE's SUCCESS_DISTANCE: 3 m)")
    landmark_radius_m: float = Field(1.5, gt=0)
    max_episodes: int = Field(100, ge=1)
    turn_word_deg: float = Field(45.0, gt=0, lt=180, description="a path turn sharper than this is named")
    split: str = Field("train", pattern=r"^[A-Za-z0-9_]+$", description="VLN-CE split name of the files")
    max_instruction_tokens: int = Field(200, ge=1, description="instruction_tokens are padded / cut to this")
    vocab: Path | None = Field(None, description="a word list to index with (a JSON list, or a VLN-CE dataset "
                                                 "file, .json or .json.gz, whose instruction_vocab is used); "
                                                 "default: built from this scene's instructions")
    export_glb: bool = Field(True, description="write scene_datasets/<scene>/<scene>.glb for habitat-sim")
    below_floor: Literal["snap", "drop", "keep"] = Field("snap", description="mesh clean-up below the floor "
                                                                            "before the .glb is written")
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


def _episode(win: np.ndarray, nameable: list[Instance], names: dict[int, str],
             cam_t: np.ndarray, cam_yaw: np.ndarray, sname: str, cfg: Config,
             rng: np.random.Generator) -> tuple[dict, list[int], dict] | None:
    """(VLN-CE episode without ``episode_id`` / ``trajectory_id`` and ``instruction_tokens``, ground-truth
    actions, our extra fields) over a trajectory window (module docstring), or None when no nameable object is
    by its goal."""
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
    ref_length = float(np.sum(np.linalg.norm(np.diff(ref, axis=0), axis=1)))
    ep = {"scene_id": f"{sname}/{sname}.glb",
          "start_position": world_to_habitat(ref[0]), "start_rotation": quat_xyzw_from_yaw(yaw),
          "info": {"geodesic_distance": round(ref_length, 4)},
          "goals": [{"position": world_to_habitat(goal), "radius": cfg.goal_radius_m}],
          "instruction": {"instruction_text": text},
          "reference_path": [world_to_habitat(p) for p in ref]}
    extra = {"template": tpl, "start_yaw_rad": round(yaw, 6), "landmarks": marks,
             "reference_path_world": [[round(float(v), 4) for v in p] for p in ref],
             "walk_length_m": round(float(np.sum(np.linalg.norm(np.diff(win[:, :2], axis=0), axis=1))), 4),
             "start_timestamp_s": round(float(win[0, 2]), 3)}
    return ep, actions, extra


# ---------------------------------------------------------------------------------------------------------
# VLN-CE files: vocabulary, tokens, ground truth, scene mesh
# ---------------------------------------------------------------------------------------------------------
def tokenize(sentence: str) -> list[str]:
    """habitat-lab's instruction tokenizer (``habitat.datasets.utils.tokenize`` with its defaults): lower case,
    ``'s`` split off as its own token, ``,`` and ``?`` removed, split on runs of characters that are neither word
    characters nor ``-``, empty pieces dropped."""
    s = str(sentence).lower().replace("'s", " 's")
    for ch in (",", "?"):
        s = s.replace(ch, "")
    return [t.strip() for t in SPLIT_REGEX.split(s) if t.strip()]


def build_vocab(word_list: list[str]) -> dict:
    """``instruction_vocab`` as habitat's ``VocabDict(word_list=...)`` holds it: ``<unk>`` prepended when missing;
    ``word2idx_dict`` = ``stoi`` = word → index, ``itos`` = the list, ``num_vocab``, ``UNK_INDEX``, ``PAD_INDEX``
    (None when ``<pad>`` is absent)."""
    words = list(word_list)
    if UNK not in words:
        words = [UNK] + words
    w2i = {w: k for k, w in enumerate(words)}
    return {"word_list": words, "word2idx_dict": w2i, "stoi": w2i, "itos": words, "num_vocab": len(words),
            "UNK_INDEX": w2i[UNK], "PAD_INDEX": w2i.get(PAD)}


def vocab_from_texts(texts: list[str]) -> dict:
    """A vocabulary over ``texts`` as habitat's ``VocabFromText`` lays it out: ``<pad>, <unk>, <s>, </s>``, then
    the words in order of first appearance."""
    words: dict[str, None] = {}
    for t in texts:
        for w in tokenize(t):
            words.setdefault(w, None)
    return build_vocab([PAD, UNK, START, END] + [w for w in words if w not in (PAD, UNK, START, END)])


def load_word_list(path: str | Path) -> list[str]:
    """A word list from a JSON list, or from a VLN-CE dataset file (``.json`` / ``.json.gz``) whose
    ``instruction_vocab.word_list`` is used.

    Raises:
        InputError: missing / unreadable file, or no word list in it.
    """
    path = Path(path)
    try:
        raw = gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text()
        doc = json.loads(raw)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"vln.vocab: cannot read {path} ({e})") from e
    words = doc.get("instruction_vocab", {}).get("word_list") if isinstance(doc, dict) else doc
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise InputError(f"vln.vocab: {path} holds no word list")
    return words


def instruction_tokens(text: str, vocab: dict, length: int) -> list[int]:
    """Vocabulary indices of :func:`tokenize` (unknown words → ``UNK_INDEX``), cut or padded with ``PAD_INDEX``
    (``UNK_INDEX`` when the vocabulary has no ``<pad>``) to ``length``."""
    w2i, unk = vocab["word2idx_dict"], vocab["UNK_INDEX"]
    ids = [w2i.get(w, unk) for w in tokenize(text)][:length]
    pad = vocab["PAD_INDEX"] if vocab["PAD_INDEX"] is not None else unk
    return ids + [pad] * (length - len(ids))


def ground_truth(start_world_xy, start_yaw: float, actions: list[int], cfg: Config) -> dict:
    """``{split}_gt.json.gz`` record of one episode: ``actions``, ``forward_steps`` (number of MOVE_FORWARD) and
    ``locations`` (habitat positions visited by replaying the actions, start included, repeats dropped)."""
    path, _ = nav.replay_actions(np.asarray(start_world_xy)[:2], start_yaw, actions, cfg.nav.forward_step_m,
                                 cfg.nav.turn_deg)
    locs = []
    for p in path:
        h = [round(v, 4) for v in world_to_habitat(p)]
        if not locs or h != locs[-1]:
            locs.append(h)
    return {"actions": list(actions), "forward_steps": int(sum(1 for a in actions if a == nav.FORWARD)),
            "locations": locs}


def write_glb(path: str | Path, vertices_world: np.ndarray, triangles: np.ndarray,
              colors: np.ndarray | None = None) -> None:
    """Write a world-frame mesh (``V×3`` metres, z up) as binary glTF in habitat's y-up frame
    (``habitat_from_world``: (x, y, z) → (x, z, −y), a rotation, so the winding is kept), with ``V×3`` uint8
    vertex colours when given (trimesh writes them as ``COLOR_0``)."""
    import trimesh

    v = np.asarray(vertices_world, dtype=np.float64) @ HABITAT_FROM_WORLD[:3, :3].T
    cols = None if colors is None else np.concatenate(
        [np.asarray(colors, dtype=np.uint8), np.full((len(v), 1), 255, np.uint8)], axis=1)
    m = trimesh.Trimesh(vertices=v, faces=np.asarray(triangles, dtype=np.int64), vertex_colors=cols, process=False)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(m.export(file_type="glb"))


def _write_gz(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            json.dump(doc, f)


def read_gz(path: str | Path):
    """A ``.json.gz`` file back (as VLN-CE opens it: ``gzip.open(path, "rt")``)."""
    with gzip.open(path, "rt") as f:
        return json.load(f)


def generate(scene, config: Config | None = None) -> tuple[dict, nav.NavGraph]:
    """The three VLN-CE documents and the navigation graph of a scene (nothing written).

    Returns:
        (``{"dataset": {split}.json.gz content, "gt": {split}_gt.json.gz content, "extra":
        {split}_vid2scene.json.gz content}``, navigation graph).

    Raises:
        InputError: the scene lacks instances.json / layout.json / cameras.json, or they are unreadable or not
            in the world frame; an unreadable ``vocab`` file.
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
    found, rejected = [], {"no_goal_landmark": 0}
    for seg in traj.segments:
        for _, win in _windows(seg, cfg, rng):
            ep = _episode(win, nameable, names, cam_t, cam_yaw, sname, cfg, rng)
            if ep is None:
                rejected["no_goal_landmark"] += 1
                continue
            found.append(ep)
    if len(found) > cfg.max_episodes:
        keep = np.sort(rng.choice(len(found), size=cfg.max_episodes, replace=False))
        found = [found[k] for k in keep]
    vocab = (build_vocab(load_word_list(cfg.vocab)) if cfg.vocab is not None
             else vocab_from_texts([e["instruction"]["instruction_text"] for e, _, _ in found]))
    episodes, gt, extra_eps = [], {}, {}
    for k, (e, actions, extra) in enumerate(found):
        e["instruction"]["instruction_tokens"] = instruction_tokens(e["instruction"]["instruction_text"], vocab,
                                                                    cfg.max_instruction_tokens)
        ep = {"episode_id": k, "trajectory_id": k, **e}
        episodes.append({key: ep[key] for key in EPISODE_KEYS})
        gt[str(k)] = ground_truth(extra["reference_path_world"][0], extra["start_yaw_rad"], actions, cfg)
        extra_eps[str(k)] = extra
    out_extra = {"frame": "habitat_y_up", "habitat_from_world": HABITAT_FROM_WORLD.tolist(),
                 "quaternion_order": "xyzw", "action_space": {str(k): v for k, v in nav.ACTION_NAMES.items()},
                 "forward_step_m": cfg.nav.forward_step_m, "turn_deg": cfg.nav.turn_deg, "split": cfg.split,
                 "geodesic_distance": "length of reference_path (metres)",
                 "trajectory": {**traj.stats, "segments_world": [[[round(float(v), 4) for v in p[:2]] for p in s]
                                                                 for s in traj.segments]},
                 "rejected": rejected, "episodes": extra_eps}
    return {"dataset": {"instruction_vocab": vocab, "episodes": episodes}, "gt": gt, "extra": out_extra}, navg


def vln_dir(scene) -> Path:
    """``SCENE/tasks/vln/`` (VLN-CE's data root for this scene)."""
    return common.scene_of(scene).task_path("vln")


def split_paths(scene, split: str = "train") -> dict[str, Path]:
    """The three files of a split: ``{"dataset", "gt", "extra"}`` under ``SCENE/tasks/vln/{split}/``."""
    d = vln_dir(scene) / split
    return {"dataset": d / f"{split}.json.gz", "gt": d / f"{split}_gt.json.gz",
            "extra": d / f"{split}_vid2scene.json.gz"}


def run(scene, config: Config | None = None) -> StageResult:
    """Generate and write the VLN-CE files (module docstring) and ``tasks/nav_graph.json``.

    Returns:
        ``qc``: n_episodes, trajectory_m (refined walk length), rejected counts, files, the .glb's vertex count,
        seconds; a one-line summary.

    Raises:
        InputError: as :func:`generate`, or no mesh when ``export_glb`` is on.
    """
    import time

    cfg = config or Config()
    t0 = time.perf_counter()
    scene = common.scene_of(scene)
    docs, navg = generate(scene, cfg)
    scene.task_path("vln.json").unlink(missing_ok=True)  # the earlier single-file format VLN-CE could not load
    write_json(scene.task_path("nav_graph.json"), navg.to_json(), indent=None)
    paths = split_paths(scene, cfg.split)
    for key in ("dataset", "gt", "extra"):
        _write_gz(paths[key], docs[key])
    files = [str(p) for p in paths.values()]
    qc = {"n_episodes": len(docs["dataset"]["episodes"]), "split": cfg.split,
          "trajectory_m": docs["extra"]["trajectory"].get("refined_length_m"),
          "rejected": docs["extra"]["rejected"], "vocab_size": docs["dataset"]["instruction_vocab"]["num_vocab"]}
    if cfg.export_glb:
        from ..export.common import clean_below_floor

        mesh, _, floor_qc = clean_below_floor(common.mesh(scene), [], cfg.below_floor)
        sname = common.scene_name(scene)
        glb = vln_dir(scene) / "scene_datasets" / sname / f"{sname}.glb"
        glb.parent.mkdir(parents=True, exist_ok=True)
        write_glb(glb, mesh.vertices, mesh.triangles, mesh.colors)
        files.append(str(glb))
        qc.update(glb_vertices=len(mesh.vertices), **floor_qc)
    qc.update(files=files, seconds=round(time.perf_counter() - t0, 3))
    walk = f"{qc['trajectory_m']:.1f} m" if qc["trajectory_m"] is not None else "no"
    return StageResult(qc=qc, summary=f"{qc['n_episodes']} episodes along {walk} of refined walk")

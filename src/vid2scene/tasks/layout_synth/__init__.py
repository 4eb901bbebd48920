"""``layout_synth`` task generator: an editable, physically plausible layout of the reconstructed room
(VIPScene, offline), scored by symbolic checks and first-person views.

Reads (through :class:`~vid2scene.scene.Scene`, world frame): ``instances.json``, ``layout.json``, the
cameras (``frame="world"``), the keyframes' detections. Writes under ``SCENE/tasks/layout_synth/``:

* ``plan_raw.json`` / ``plan.json`` — the object plan before / after solving (:mod:`.plan`, :mod:`.solver`);
* ``layout.txt`` — the solved plan as SpatialLM layout text (``export.spatiallm.layout_lines``);
* ``scores.json`` — ``{"before": {...}, "after": {...}, "solver": {...}, "render": {...}, "variations": [...]}``
  with the scores of :mod:`.scores` (``f1_iou25`` against the lifted instances) and, when configured,
  ``after.fpvscore`` (:mod:`.fpvscore`);
* ``fpv/`` — first-person frames of the solved plan along the scene's own camera path (``trajectory/NNNNNN.png``,
  named by source frame) and a walk through free space (``walk/NNNN.png``), each also as an MP4
  (``trajectory.mp4``, ``walk.mp4``), and ``views.json`` (every frame's K, ``cam_from_world``, size);
* ``variations/plan_NN.json`` — alternative arrangements keeping the plan's relations (``n_variations``, seeded).

Recipe (:func:`run`): read inputs → build the plan → solve → score before / after → render → FPVScore → write.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ...errors import InputError, StageFailed
from ...io import write_image_rgb, write_json
from ...scene import Scene
from ...stage import StageResult
from .fpvscore import FPVScoreClient, FPVScoreConfig
from .plan import Plan, PlanConfig, build_plan
from .render import View, render_view, trajectory_views, walk_views, write_video, RoomMask
from .scores import ScoreConfig, score_plan
from .solver import SolverConfig, solve, vary

NAME = "layout_synth"
OUTPUTS = ["tasks/layout_synth/"]
DIR = "layout_synth"
WORLD = "gravity_z_up_metric"


class RenderConfig(BaseModel):
    """First-person views (:mod:`.render`)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    width: int = Field(320, ge=16, description="frame width in pixels (height from the camera's aspect)")
    max_trajectory_frames: int = Field(48, ge=0)
    max_walk_frames: int = Field(64, ge=0)
    walk_step_m: float = Field(0.2, gt=0)
    eye_height_m: float | None = Field(None, gt=0, description="walk camera height; default the median camera "
                                                               "height of layout.json, else 1.5 m")
    pitch_deg: float = Field(10.0, ge=-60, le=60, description="walk camera tilt, down positive")
    fps: float = Field(8.0, gt=0)
    labels: bool = True


class Config(BaseModel):
    """``layout_synth`` configuration: one section per step."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    plan: PlanConfig = Field(default_factory=PlanConfig)
    solver: SolverConfig = Field(default_factory=SolverConfig)
    scores: ScoreConfig = Field(default_factory=ScoreConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)
    fpvscore: FPVScoreConfig = Field(default_factory=FPVScoreConfig)
    n_variations: int = Field(0, ge=0, description="alternative arrangements to sample")
    variation_shift_m: float = Field(0.5, ge=0)
    agreement_width: int = Field(160, ge=16, description="render width of the per-frame agreement check")
    max_agreement_frames: int = Field(32, ge=0)


# ---------------------------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------------------------
def read_inputs(scene: Scene) -> tuple[list[dict], dict, list, list[str]]:
    """(instances, layout, registered world-frame cameras, warnings).

    Raises:
        StageFailed: instances.json or layout.json missing or unreadable (``Scene``'s loaders).
        InputError: instances.json not in the metric z-up world frame.
    """
    doc = scene.instances()
    if doc.get("frame", WORLD) != WORLD:
        raise InputError(f"{scene.instances_json} is in frame '{doc.get('frame')}'; layout_synth needs '{WORLD}'")
    layout = scene.layout()
    warnings = []
    try:
        cams = [c for c in scene.cameras(frame="world") if c.registered]
    except StageFailed as e:
        cams, warnings = [], [f"no cameras ({e}): no trajectory views, no per-frame agreement"]
    return list(doc.get("instances", [])), layout, cams, warnings


def agreement_inputs(scene: Scene, cameras: list, config: Config) -> tuple[list[View], list[list[dict]]]:
    """Keyframe views (resized to ``agreement_width``) and their detections scaled to those views."""
    views, dets = [], []
    have = set(scene.detection_frames())
    cams = [c for c in cameras if c.source_frame in have]
    if len(cams) > config.max_agreement_frames:
        cams = [cams[i] for i in np.linspace(0, len(cams) - 1, config.max_agreement_frames).round().astype(int)]
    for c in cams:
        rec = scene.detections(c.source_frame)
        v = View(f"{c.source_frame:06d}", c.K, c.cam_from_world, c.width, c.height, c.source_frame)
        v = v.resized(config.agreement_width)
        sx, sy = v.width / float(rec.get("width", c.width)), v.height / float(rec.get("height", c.height))
        views.append(v)
        dets.append([{"label": d["label"], "bbox_xyxy": [d["bbox_xyxy"][0] * sx, d["bbox_xyxy"][1] * sy,
                                                          d["bbox_xyxy"][2] * sx, d["bbox_xyxy"][3] * sy]}
                     for d in rec.get("detections", [])])
    return views, dets


def reference_boxes(instances: list[dict]) -> list[dict]:
    """``{"label", "center", "size", "yaw_rad"}`` of every instance with a box (the F1 reference)."""
    return [{"label": str(r["label"]).strip().lower(), "center": r["box"]["center"], "size": r["box"]["size"],
             "yaw_rad": float(r["box"].get("yaw_rad", 0.0))} for r in instances if r.get("box")]


def render_fpv(scene: Scene, plan: Plan, cameras: list, layout: dict, config: RenderConfig) -> tuple[dict, list]:
    """Render the plan along the camera trajectory and the free-space walk into ``fpv/``; returns (a summary
    for scores.json, the walk frames then the trajectory frames for FPVScore)."""
    out = scene.task_path(f"{DIR}/fpv")
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    mask = RoomMask(plan.room.polygon_xy)
    traj = trajectory_views(cameras, config.max_trajectory_frames, config.width)
    eye = config.eye_height_m or float(((layout or {}).get("cameras") or {}).get("median_height_m") or 1.5)
    K, size = _walk_camera(cameras, config.width)
    walk = walk_views(plan, K, size, eye, config.pitch_deg, config.walk_step_m, config.max_walk_frames,
                      config.width) if config.max_walk_frames else []
    record: dict = {"frame": WORLD, "convention": "opencv", "paths": {}}
    frames_all = {}
    for name, views in (("trajectory", traj), ("walk", walk)):
        frames = []
        recs = []
        for v in views:
            img = render_view(plan, v, labels=config.labels, room_mask=mask).rgb
            fn = f"{name}/{v.name.replace('walk_', '')}.png"
            write_image_rgb(out / fn, img)
            frames.append(img)
            recs.append({"image": fn, "source_frame": v.source_frame, "width": v.width, "height": v.height,
                         "K": np.round(v.K, 4).tolist(), "cam_from_world": np.round(v.cam_from_world, 6).tolist()})
        codec = write_video(out / f"{name}.mp4", frames, config.fps) if frames else None
        record["paths"][name] = {"frames": recs, "video": f"{name}.mp4" if frames else None, "codec": codec}
        frames_all[name] = frames
    write_json(out / "views.json", record)
    secs = time.perf_counter() - t0
    n = len(traj) + len(walk)
    summary = {"n_trajectory_frames": len(traj), "n_walk_frames": len(walk), "seconds": round(secs, 3),
               "seconds_per_frame": round(secs / n, 4) if n else None, "width": config.width}
    return summary, frames_all["walk"] + frames_all["trajectory"]


def _walk_camera(cameras: list, width: int) -> tuple[np.ndarray, tuple[int, int]]:
    if cameras:
        c = cameras[0]
        return np.asarray(c.K, np.float64), (c.width, c.height)
    w, h = width, int(round(width * 0.75))
    f = 0.5 * w / np.tan(np.radians(35.0))
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], np.float64), (w, h)


def fpv_score(plan: Plan, frames: list, config: FPVScoreConfig) -> dict:
    """FPVScore of the solved plan, or ``{"status": "skipped" | "failed", "reason"}``."""
    if not config.enabled:
        return {"status": "skipped", "reason": "fpvscore.enabled is false"}
    if not frames:
        return {"status": "skipped", "reason": "no first-person frames"}
    try:
        return {"status": "ok", **FPVScoreClient(config).score(frames, [o.label for o in plan.objects])}
    except StageFailed as e:
        return {"status": "failed", "reason": str(e)}


def spatiallm_text(plan: Plan, layout: dict, wall_simplify_m: float) -> str:
    """The plan as SpatialLM layout text (walls from ``layout.json``'s room, boxes from the plan)."""
    from ...export.spatiallm import layout_lines

    return "\n".join(layout_lines(plan.instance_dicts(), layout, wall_simplify_m=wall_simplify_m)) + "\n"


# ---------------------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------------------
def run(scene: Scene | str | Path, config: Config | None = None) -> StageResult:
    """Synthesise the layout of one scene (module docstring); outputs under ``SCENE/tasks/layout_synth/``.

    Raises:
        StageFailed: instances.json or layout.json is missing (run ``instances`` / ``layout``).
        InputError: the inputs are not in the world frame, or layout.json has no room polygon.
    """
    from ...io import atomic_path

    scene = scene if isinstance(scene, Scene) else Scene(scene)
    cfg = config or Config()
    instances, layout, cams, warnings = read_inputs(scene)
    try:
        raw = build_plan(instances, layout, cams, cfg.plan)
    except ValueError as e:
        raise InputError(f"{scene.layout_json}: {e}") from e
    solved, rep = solve(raw, cfg.solver)
    views, dets = agreement_inputs(scene, cams, cfg) if cams else ([], [])
    ref = reference_boxes(instances)
    scores = {"before": score_plan(raw, ref, views, dets, cfg.scores),
              "after": score_plan(solved, ref, views, dets, cfg.scores), "solver": rep.to_json()}
    frames: list = []
    if cfg.render.enabled:
        scores["render"], frames = render_fpv(scene, solved, cams, layout, cfg.render)
    scores["after"]["fpvscore"] = fpv_score(solved, frames, cfg.fpvscore)
    if scores["after"]["fpvscore"]["status"] == "failed":
        warnings.append(scores["after"]["fpvscore"]["reason"])
    scores["variations"] = write_variations(scene, solved, ref, cfg)
    base = scene.task_path(DIR)
    write_json(base / "plan_raw.json", raw.to_json())
    write_json(base / "plan.json", solved.to_json())
    with atomic_path(base / "layout.txt") as tmp:
        tmp.write_text(spatiallm_text(solved, layout, cfg.plan.wall_simplify_m))
    write_json(base / "scores.json", scores)
    b, a = scores["before"], scores["after"]
    qc = {"n_objects": len(solved.objects), "n_removed": len(solved.removed), **{
        f"{k}_{w}": s[k] for k in ("collision_rate", "out_of_room_rate", "support_violation_rate",
                                   "reachable_floor_share", "f1_iou25") for w, s in (("before", b), ("after", a))},
        "mean_displacement_xy_m": scores["solver"]["mean_displacement_xy_m"], "solver_s": scores["solver"]["seconds"],
        "render_s": (scores.get("render") or {}).get("seconds")}
    summary = (f"{len(solved.objects)} objects ({len(solved.removed)} left out); collisions {b['collision_rate']:.2f} → "
               f"{a['collision_rate']:.2f}, out of room {b['out_of_room_rate']:.2f} → {a['out_of_room_rate']:.2f}, "
               f"mean shift {qc['mean_displacement_xy_m']:.2f} m")
    return StageResult(qc=qc, summary=summary, warnings=warnings)


def write_variations(scene: Scene, solved: Plan, ref: list[dict], config: Config) -> list[dict]:
    """Sample ``n_variations`` arrangements (seeds ``seed + k``) into ``variations/plan_NN.json``; their scores."""
    d = scene.task_path(f"{DIR}/variations")
    if d.exists():
        shutil.rmtree(d)
    out = []
    for k in range(config.n_variations):
        p, r = vary(solved, config.seed + k, config.variation_shift_m, config.solver)
        write_json(d / f"plan_{k:02d}.json", p.to_json())
        out.append({"plan": f"variations/plan_{k:02d}.json", "seed": config.seed + k,
                    **score_plan(p, ref, config=config.scores)})
    return out


def load_config(config_file: str | Path | None) -> Config:
    """A :class:`Config` from a YAML / JSON file (its ``layout_synth`` section when it has one, as in a
    ``vid2scene tasks --config`` file); defaults for None.

    Raises:
        InputError: unreadable file or invalid settings (one line).
    """
    from ...config import read_config_file, validate_config

    if config_file is None:
        return Config()
    data = read_config_file(config_file)
    if isinstance(data.get(NAME), dict):
        data = data[NAME]
    return validate_config(Config, data, "layout_synth config")


def synth_layout(scene_dir: str | Path, config_file: str | Path | None = None) -> StageResult:
    """What ``vid2scene synth-layout SCENE [--config FILE]`` runs (no typer here).

    Raises:
        InputError: no such folder, or a bad config file; plus what :func:`run` raises.
    """
    root = Path(scene_dir)
    if not root.is_dir():
        raise InputError(f"no such scene folder: {root}")
    return run(Scene(root), load_config(config_file))

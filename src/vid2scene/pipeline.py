"""Run stages in order over a scene folder, with resume, status bookkeeping and failure records.

Resume rules (DESIGN.md): a stage whose manifest status is ``complete`` and whose config is unchanged is
skipped; a stage that crashed (status ``running``), failed, or is stale is re-run after its declared
``OUTPUTS`` are removed, so a half-written result is never trusted. Re-running a stage marks every later
complete stage ``stale``. ``--overwrite`` re-runs everything.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, parallel, progress
from .config import PipelineConfig
from .errors import InputError, StageFailed, Vid2SceneError
from .scene import Scene, SceneLock, config_hash, now_iso
from .stage import STAGES, StageResult, stage_module

def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _versions() -> dict[str, str]:
    out = {"vid2scene": __version__, "python": sys.version.split()[0]}
    for mod, key in (("numpy", "numpy"), ("cv2", "opencv"), ("av", "av"), ("pycolmap", "pycolmap"),
                     ("torch", "torch"), ("scenedetect", "scenedetect")):
        m = sys.modules.get(mod)
        if m is not None:
            out[key] = str(getattr(m, "__version__", "?"))
    return out


@dataclass
class RunReport:
    """What :func:`run_pipeline` did: per-stage action (``ran``/``skipped``/``failed``) and results."""

    scene: Scene
    actions: dict[str, str] = field(default_factory=dict)
    results: dict[str, StageResult] = field(default_factory=dict)
    error: Vid2SceneError | None = None
    subscenes: list["RunReport"] = field(default_factory=list)


def _remove_outputs(scene: Scene, outputs: list[str]) -> None:
    for rel in outputs:
        p = scene.root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def run_stage(scene: Scene, name: str, config: PipelineConfig) -> StageResult:
    """Run one stage now (no skip logic): status bookkeeping, timing, peak RSS, failure record.

    Raises:
        Vid2SceneError: the stage's own typed error, after recording it in the manifest.
        StageFailed: an unexpected exception inside the stage (traceback saved under ``logs/``).
    """
    mod = stage_module(name)
    cfg = getattr(config, name)
    cfg_dict = cfg.model_dump(mode="json")

    def mark_running(m: dict) -> None:
        m["status"] = "incomplete"
        m["failure"] = None
        m["stages"][name] = {"status": "running", "started": now_iso(), "config": cfg_dict,
                             "config_hash": config_hash(cfg_dict)}
        later = STAGES[STAGES.index(name) + 1:]
        for s in later:
            if m["stages"].get(s, {}).get("status") == "complete":
                m["stages"][s]["status"] = "stale"

    scene.update_manifest(mark_running)
    _remove_outputs(scene, mod.OUTPUTS)
    t0 = time.perf_counter()
    try:
        with parallel.blas_threads():
            result = mod.run(scene, cfg)
    except Vid2SceneError as e:
        _record_failure(scene, name, e, time.perf_counter() - t0)
        raise
    except OSError as e:  # a full disk, a permission change: the OS reason, not an internal error
        err = StageFailed(name, f"file system error: {os_reason(e)}")
        _record_failure(scene, name, err, time.perf_counter() - t0)
        raise err from e
    except Exception as e:  # a bug or a library error: keep the traceback, report one line
        log = scene.logs_dir / f"{name}.traceback.txt"
        log.parent.mkdir(exist_ok=True)
        log.write_text(traceback.format_exc())
        err = StageFailed(name, f"internal error {type(e).__name__}: {e} (traceback in {log})")
        _record_failure(scene, name, err, time.perf_counter() - t0)
        raise err from e
    seconds = time.perf_counter() - t0

    def mark_done(m: dict) -> None:
        st = m["stages"][name]
        st.update({"status": "complete", "finished": now_iso(), "seconds": round(seconds, 3),
                   "peak_rss_mb": round(peak_rss_mb(), 1), "versions": _versions(), "qc": result.qc,
                   "summary": result.summary, "warnings": result.warnings})
        m["qc"][name] = result.qc
        m["status"] = scene_status(m)

    scene.update_manifest(mark_done)
    return result


def scene_status(manifest: dict) -> str:
    """The scene-level status a manifest implies: ``"failed"`` when it records a failure, ``"complete"`` when
    every stage of :data:`STAGES` is complete, else ``"incomplete"``. The same rule at the end of a pipeline
    run and after each :func:`run_stage`, so a scene whose last missing stage is run on its own is complete."""
    if manifest.get("failure"):
        return "failed"
    if all(manifest["stages"].get(s, {}).get("status") == "complete" for s in STAGES):
        return "complete"
    return "incomplete"


def _set_scene_failure(m: dict, name: str, err: Vid2SceneError) -> None:
    m["status"] = "failed"
    m["failure"] = {"stage": name, "reason": str(err), "error_type": type(err).__name__, "exit_code": err.exit_code}


def _record_failure(scene: Scene, name: str, err: Vid2SceneError, seconds: float) -> None:
    def mark(m: dict) -> None:
        st = m["stages"].setdefault(name, {})
        st.update({"status": "failed", "finished": now_iso(), "seconds": round(seconds, 3),
                   "reason": str(err), "error_type": type(err).__name__})
        _set_scene_failure(m, name, err)

    scene.update_manifest(mark)


def _mark_failed(scene: Scene, name: str, err: Vid2SceneError) -> None:
    """The scene-level failure record for ``err`` of stage ``name`` (its stage record is already written):
    a stage started beside it may have cleared the scene's ``failure`` when it began."""
    scene.update_manifest(lambda m: _set_scene_failure(m, name, err))


def needs_run(scene: Scene, name: str, config: PipelineConfig) -> tuple[bool, str]:
    """Whether ``name`` must run, and why (``"complete"`` when it can be skipped)."""
    info = scene.stage_info(name)
    status = info.get("status")
    if status is None:
        return True, "not run yet"
    if status != "complete":
        return True, f"previous status '{status}'"
    cfg_dict = getattr(config, name).model_dump(mode="json")
    if info.get("config_hash") != config_hash(cfg_dict):
        return True, "config changed"
    return False, "complete"


def run_pipeline(input_path: str | Path, scene_dir: str | Path, config: PipelineConfig | None = None,
                 until: str | None = None, overwrite: bool = False, on_stage=None) -> RunReport:
    """Run ``ingest`` .. ``until`` (default: all stages) for one input into ``scene_dir``.

    The scene folder is locked (:class:`~vid2scene.scene.SceneLock`) for the whole run, so a second run on
    the same folder refuses instead of treating this one's running stage as crashed.
    ``on_stage(name, action, reason)`` is called before each stage (for CLI messages).

    Raises:
        InputError: a missing/unreadable input, an unusable output folder (a file, no permission: the OS
            reason in one line), or a folder locked by another run.
        InputError / RejectedInput / StageFailed / BackendNotInstalled: as recorded in ``manifest.json``;
        the scene is never marked complete after an error.
    """
    from .ingest import describe_source

    config = config or PipelineConfig()
    stages = STAGES if until is None else STAGES[: STAGES.index(stage_module(until).NAME) + 1]
    source = describe_source(input_path)
    lock = SceneLock(scene_dir)
    try:
        lock.acquire()
        scene = Scene.create(scene_dir, source, overwrite=overwrite)
    except OSError as e:
        lock.release()
        raise InputError(f"cannot use output folder {scene_dir}: {os_reason(e)}") from e
    except BaseException:
        lock.release()
        raise
    try:
        report = RunReport(scene)
        _run_stages(scene, stages, config, overwrite, "--overwrite" if overwrite else "", on_stage, report)
    finally:
        lock.release()
    return report


def os_reason(e: OSError) -> str:
    """One line for an OS error: ``"<strerror>: <path>"`` (e.g. ``"Permission denied: /data/x"``)."""
    what = e.strerror or str(e) or type(e).__name__
    return f"{what}: {e.filename}" if e.filename else what


#: Environment variable: ``0`` runs every stage one after the other (no :func:`overlap_detect` thread).
OVERLAP_ENV = "VID2SCENE_OVERLAP_STAGES"


def overlap_detect(stages: list[str], config: PipelineConfig) -> bool:
    """Whether ``detect`` runs in a background thread beside ``sfm``.

    ``sfm`` reads ``detect``'s output only with ``sfm.mask_people``; otherwise the two depend on
    ``keyframes`` alone. Incremental mapping leaves one of two cores idle for much of its time (on the HoloLens
    walk ``sfm`` used 149 CPU s in 85 s), and ``detect`` (0.1 CPU s per keyframe) fills it: its threads run
    at the lowest CPU priority (``nice`` 19, Linux), so they take what ``sfm`` leaves and ``sfm`` is not
    slowed. Results are the same as one after the other (each stage reads only its own inputs). Off with
    ``$VID2SCENE_OVERLAP_STAGES=0`` or with ``mask_people``.
    """
    if os.environ.get(OVERLAP_ENV, "1").strip() == "0" or config.sfm.mask_people:
        return False
    return "detect" in stages and "sfm" in stages and stages.index("sfm") == stages.index("detect") + 1


def _lowest_priority() -> None:
    """Lower the calling thread to ``nice`` 19 (Linux: per thread; threads it starts inherit it). No-op
    where the OS has no per-thread priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


def _run_in_background(scene: Scene, name: str, config: PipelineConfig):
    """Start :func:`run_stage` for ``name`` in a daemon thread at the lowest priority, without progress bars.
    Returns a function that waits for it and returns ``(result or None, error or None)``."""
    out: dict = {}

    def work() -> None:
        _lowest_priority()
        with progress.quiet_in_this_thread():
            try:
                out["result"] = run_stage(scene, name, config)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                out["error"] = e

    t = threading.Thread(target=work, name=f"vid2scene-{name}", daemon=True)
    t.start()

    def wait():
        t.join()
        return out.get("result"), out.get("error")

    return wait


def _run_stages(scene: Scene, stages: list[str], config: PipelineConfig, force: bool, force_why: str,
                on_stage, report: RunReport) -> None:
    background = None  # wait() of detect running beside sfm
    pair_limits = contextlib.ExitStack()
    for name in stages:
        if name == "sfm" and background is not None:
            if on_stage:
                on_stage(name, "run", "an earlier stage re-ran (beside detect)")
            sfm_error = None
            try:
                report.results[name] = run_stage(scene, name, config)
            except Vid2SceneError as e:
                sfm_error = e
            except BaseException:  # Ctrl-C: do not wait; detect stays "running" and re-runs on resume
                pair_limits.close()
                raise
            det_result, det_error = background()
            background = None
            pair_limits.close()
            report.actions["detect"] = "ran" if det_error is None else "failed"
            if det_error is None:
                report.results["detect"] = det_result
            if sfm_error is not None:
                report.actions[name] = "failed"
            error = det_error or sfm_error  # the earlier stage's error wins, and its record is written last
            if error is not None:
                if isinstance(det_error, Vid2SceneError):
                    _mark_failed(scene, "detect", det_error)
                if isinstance(error, Vid2SceneError):
                    report.error = error
                    _finish(scene)
                raise error
            report.actions[name] = "ran"
            force, force_why = True, ""
            continue
        run_it, why = needs_run(scene, name, config)
        if force and not run_it:
            run_it, why = True, force_why or "an earlier stage re-ran"
        elif force and force_why:
            why = force_why
        if on_stage:
            on_stage(name, "run" if run_it else "skip", why)
        if not run_it:
            report.actions[name] = "skipped"
        elif name == "detect" and overlap_detect(stages, config):
            # one BLAS cap around both stages: their own caps then nest and restore nothing out of order
            pair_limits.enter_context(parallel.blas_threads())
            background = _run_in_background(scene, name, config)
            force, force_why = True, ""
            continue
        else:
            try:
                report.results[name] = run_stage(scene, name, config)
            except Vid2SceneError as e:
                report.actions[name] = "failed"
                report.error = e
                _finish(scene)
                raise
            report.actions[name] = "ran"
            force, force_why = True, ""  # every later stage depends on this one's fresh output
        if name == "shots" and len(scene.shots().get("chosen", [])) > 1:
            rest = stages[stages.index(name) + 1:]
            _run_subscenes(scene, rest, config, force, on_stage, report)
            return
    _finish(scene)


def subscene_dir(scene: Scene, shot: int) -> Path:
    """Folder of the scene forked for ``shot`` when ``shots.emit == "all"``: ``<scene>/subscenes/shot_NNN``."""
    return scene.root / "subscenes" / f"shot_{shot:03d}"


def fork_shot(parent: Scene, shot: dict, force: bool = False) -> Scene:
    """Create (or reuse) a complete scene folder for one shot of ``parent``.

    The child's ``ingest`` and ``shots`` are complete from the start: ``frames_all/`` holds hard links to the
    parent's frames inside the shot, ``shots.json`` the one shot. Its later stages run like any scene's.
    """
    pm = parent.read_manifest()
    src = dict(pm["source"], shot=shot["shot"], parent=str(parent.root.resolve()))
    child = Scene.create(subscene_dir(parent, shot["shot"]), src, overwrite=True) if force else \
        Scene.create(subscene_dir(parent, shot["shot"]), src)
    if child.is_complete("shots") and not force:
        return child
    frames = [f for f in parent.frame_index() if shot["start_frame"] <= f.source_frame <= shot["end_frame"]]
    if child.frames_all_dir.exists():
        shutil.rmtree(child.frames_all_dir)
    child.frames_all_dir.mkdir(parents=True)
    for f in frames:
        dst = child.frame_path(f.source_frame)
        try:
            dst.hardlink_to(parent.frame_path(f.source_frame))
        except OSError:
            shutil.copy2(parent.frame_path(f.source_frame), dst)
    child.write_frame_index([{"source_frame": f.source_frame, "timestamp_s": f.timestamp_s} for f in frames])
    child.write_video_info(parent.video_info())
    child.write_shots(dict(parent.shots(), shots=[shot], chosen=[shot["shot"]], emit="longest"))

    def mark(m: dict) -> None:
        for name in ("ingest", "shots"):
            m["stages"][name] = dict(pm["stages"][name], status="complete",
                                     summary=f"forked from {parent.root.name}, shot {shot['shot']}")
        m["status"] = "incomplete"

    child.update_manifest(mark)
    return child


def _run_subscenes(parent: Scene, stages: list[str], config: PipelineConfig, force: bool, on_stage,
                   report: RunReport) -> None:
    """Run ``stages`` in one forked scene per chosen shot; one shot's failure does not stop the others."""
    shots = parent.shots()
    by_id = {s["shot"]: s for s in shots["shots"]}
    entries, errors = [], []
    for k in shots["chosen"]:
        child = fork_shot(parent, by_id[k], force=force)
        if on_stage:
            on_stage(f"shot {k}", "run", f"sub-scene {child.root}")
        sub = RunReport(child)
        try:
            _run_stages(child, stages, config, force, "", on_stage, sub)
        except Vid2SceneError as e:
            errors.append((k, e))
        report.subscenes.append(sub)
        entries.append({"shot": k, "path": str(child.root.relative_to(parent.root)),
                        "status": child.read_manifest()["status"]})

    def mark(m: dict) -> None:
        m["subscenes"] = entries
        for name in stages:  # the parent delegates the later stages to its sub-scenes
            m["stages"][name] = {"status": "complete" if not errors else "failed", "delegated": True,
                                 "summary": f"done per shot in {len(entries)} sub-scenes"}
        if errors:
            reason = "; ".join(f"shot {k}: {e}" for k, e in errors)
            m["failure"] = {"stage": "subscenes", "reason": reason, "error_type": type(errors[0][1]).__name__,
                            "exit_code": errors[0][1].exit_code}

    parent.update_manifest(mark)
    _finish(parent)
    if errors:
        report.error = errors[0][1]
        raise errors[0][1]  # the first failure; every shot's outcome is in the parent's manifest


def _finish(scene: Scene) -> None:
    """Set the scene-level status and write the report."""

    def mark(m: dict) -> None:
        m["status"] = scene_status(m)

    scene.update_manifest(mark)
    try:
        from .report import write_report

        write_report(scene)
    except Exception as e:  # the report must never turn a good run into a failure
        progress.console.print(f"warning: report.html not written: {e}", style="yellow", markup=False,
                               highlight=False)

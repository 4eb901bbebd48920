"""``vid2scene build``: turn a list of videos into a dataset folder, resumably, on a local pool or Ray.

Dataset folder::

    DATASET_DIR/
      dataset.json          sources file, engine, requested stages, config of the latest build
      index.parquet         one row per scene (vid2scene.dataset.index)
      report.html           counts, failure reasons, QC histograms, a thumbnail per scene
      scenes/<scene_id>/    one scene folder per video (sub-scenes under subscenes/shot_NNN)
      tasks/<scene_id>.json the latest outcome of each video's task
      logs/<scene_id>.log   stdout/stderr of the task process
      downloads/            fetched URL sources and yt-dlp's archive.txt

Resume: a video whose scene has every requested stage complete with the current config is skipped
without starting a task process; one that failed before is skipped unless ``retry_failed``; every other
video runs :func:`vid2scene.pipeline.run_pipeline`, which itself resumes stage by stage.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import progress
from ..config import PipelineConfig
from ..errors import InputError, Vid2SceneError
from ..io import write_json
from ..scene import MANIFEST_JSON, Scene, now_iso
from . import index as dsindex
from .index import read_manifest
from .sources import Source, read_sources


# ---- the task function (runs in a task process) ------------------------------------------------------------

def run_task(task: dict) -> dict:
    """Fetch (URL sources) and run the pipeline for one video; the function every engine runs.

    ``task``: ``{"task_id", "source", "source_kind": "file"|"url", "scene_dir", "downloads", "until",
    "config": PipelineConfig as JSON}``. Returns ``{"status": "complete"|"failed", "failure_stage",
    "reason", "error_type", "fetch_s", "actions"}``; a typed vid2scene error is a ``failed`` result, any
    other exception propagates (the supervisor reports it).
    """
    progress.set_enabled(False)
    cfg = PipelineConfig.model_validate(task["config"])
    out = {"status": "complete", "failure_stage": None, "reason": None, "error_type": None, "fetch_s": None,
           "actions": {}}
    path = task["source"]
    if task["source_kind"] == "url":
        from .fetch import fetch

        t0 = time.perf_counter()
        try:
            local, _ = fetch(task["source"], task["downloads"], task["task_id"])
        except Vid2SceneError as e:
            out.update(status="failed", failure_stage="fetch", reason=str(e), error_type=type(e).__name__,
                       fetch_s=round(time.perf_counter() - t0, 3))
            return out
        out["fetch_s"] = round(time.perf_counter() - t0, 3)
        path = str(local)
    from ..pipeline import run_pipeline

    try:
        rep = run_pipeline(path, task["scene_dir"], cfg, until=task.get("until"))
        out["actions"] = rep.actions
    except Vid2SceneError as e:
        stage = getattr(e, "stage", None)
        if stage is None:
            m = read_manifest(Path(task["scene_dir"]))
            stage = ((m or {}).get("failure") or {}).get("stage") or "ingest"
        out.update(status="failed", failure_stage=stage, reason=str(e), error_type=type(e).__name__)
    return out


# ---- resume decisions ----------------------------------------------------------------------------------------

def scene_done(root: str | Path, stages: list[str], config: PipelineConfig) -> bool:
    """Whether the scene at ``root`` has every stage in ``stages`` complete with ``config`` (no re-run needed).

    A scene forked into shot sub-scenes is done when its ``ingest``/``shots`` are and every sub-scene is.
    """
    from ..pipeline import needs_run

    scene = Scene(root)
    m = read_manifest(scene.root)
    if m is None or m.get("failure"):
        return False
    subs = m.get("subscenes") or []
    own = [s for s in stages if s in ("ingest", "shots")] if subs else stages
    if any(needs_run(scene, s, config)[0] for s in own):
        return False
    return all(scene_done(scene.root / e["path"], stages, config) for e in subs)


def _scene_and_subscenes(root: Path) -> list[Scene]:
    """The scene at ``root`` and its shot sub-scenes (``subscenes/*/``, those with a manifest)."""
    return [Scene(root), *(Scene(mp.parent) for mp in sorted(root.glob(f"subscenes/*/{MANIFEST_JSON}")))]


def _running_stage(root: Path) -> str | None:
    """The stage left ``running`` in a scene or its sub-scenes (where a killed task was), if any."""
    for scene in _scene_and_subscenes(root):
        m = read_manifest(scene.root) or {}
        for name, st in m.get("stages", {}).items():
            if st.get("status") == "running":
                return name
    return None


def _mark_killed(root: Path, stage: str, reason: str, error_type: str) -> None:
    """Record a time-out / crash / memory kill in the scene manifest (the stage stays re-runnable)."""
    for scene in _scene_and_subscenes(root):
        m = read_manifest(scene.root)
        if not m or m.get("stages", {}).get(stage, {}).get("status") != "running":
            continue
        m["stages"][stage].update(status="failed", finished=now_iso(), reason=reason, error_type=error_type)
        m["status"] = "failed"
        m["failure"] = {"stage": stage, "reason": reason, "error_type": error_type, "exit_code": 4}
        scene.write_manifest(m)


# ---- the build ---------------------------------------------------------------------------------------------------

@dataclass
class BuildOptions:
    """How to build: engine (``local``/``ray``), Ray ``address``, ``workers``, last stage ``until``,
    ``retry_failed``, per-video ``timeout_s`` (None = no limit) and resident-memory limit ``memory_mb``
    (None = none), CPUs reserved per Ray task, and whether to write ``report.html`` at the end."""

    engine: str = "local"
    address: str | None = None
    workers: int = 1
    until: str | None = None
    retry_failed: bool = False
    timeout_s: float | None = None
    memory_mb: float | None = None
    cpus_per_task: float = 1.0
    report: bool = True


@dataclass
class BuildSummary:
    """What a build did: task ids that ran / were skipped as complete / skipped as failed, and the outcomes."""

    dataset_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped_complete: list[str] = field(default_factory=list)
    skipped_failed: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0


def _task_for(src: Source, dataset_dir: Path, config: PipelineConfig, until: str | None) -> dict:
    return {"task_id": src.scene_id, "source": src.uri, "source_kind": src.kind,
            "scene_dir": str(dataset_dir / dsindex.SCENES / src.scene_id),
            "downloads": str(dataset_dir / "downloads"), "until": until,
            "config": config.model_dump(mode="json"),
            "log_path": str(dataset_dir / "logs" / f"{src.scene_id}.log")}


def open_dataset(dataset_dir: str | Path, sources: str | Path, config: PipelineConfig, engine: str,
                 until: str | None, stages: list[str]) -> Path:
    """Create (or reopen) the dataset folder and write its ``dataset.json``; returns the resolved path.

    Raises:
        InputError: the path is a file, or a non-empty folder that is not a dataset.
    """
    ds = Path(dataset_dir)
    if ds.exists() and not ds.is_dir():
        raise InputError(f"dataset folder is a file: {ds}")
    if ds.is_dir() and any(ds.iterdir()) and not (ds / "dataset.json").is_file():
        raise InputError(f"{ds} exists, is not empty and is not a dataset folder; choose another folder")
    for sub in (dsindex.SCENES, dsindex.TASKS, "logs"):
        (ds / sub).mkdir(parents=True, exist_ok=True)
    ds = ds.resolve()
    write_json(ds / "dataset.json", {"created": now_iso(), "sources": str(Path(sources).resolve()),
                                     "engine": engine, "until": until, "stages": stages,
                                     "config": config.model_dump(mode="json")})
    return ds


def plan_tasks(ds: Path, srcs: list[Source], records: dict, idx: "dsindex.DatasetIndex", stages: list[str],
               config: PipelineConfig, until: str | None, retry_failed: bool, summary: "BuildSummary") -> list[dict]:
    """The tasks to run: every source whose scene is not done with ``config`` (failed ones only with
    ``retry_failed``). Scenes found complete get a ``complete`` task record (written, indexed); skipped ones are
    listed in ``summary``."""
    todo = []
    for src in srcs:
        rec = records.get(src.scene_id)
        root = ds / dsindex.SCENES / src.scene_id
        if scene_done(root, stages, config):
            summary.skipped_complete.append(src.scene_id)
            if rec is None or rec.get("status") != "complete" or rec.get("until") != until:
                rec = dict(rec or {}, task_id=src.scene_id, source=src.uri, source_kind=src.kind, status="complete",
                           failure_stage=None, reason=None, error_type=None, until=until,
                           attempts=(rec or {}).get("attempts", 0))
                dsindex.write_task_record(ds, rec)
                idx.update(rec)
        elif rec and rec.get("status") == "failed" and not retry_failed:
            summary.skipped_failed.append(src.scene_id)
        else:
            todo.append(_task_for(src, ds, config, until))
    return todo


def run_planned(engine, todo: list[dict], ds: Path, records: dict, idx: "dsindex.DatasetIndex", n_total: int,
                summary: "BuildSummary") -> None:
    """Run ``todo`` on ``engine``: each finished task's record is written and the index rewritten at once;
    ``summary`` collects the outcomes. The engine is closed on return, on an error and on Ctrl-C."""
    t0 = time.monotonic()
    done0 = len(summary.skipped_complete) + len(summary.skipped_failed)
    runner = None
    try:
        with _BuildBar(n_total, done0) as bar:
            bar.show(len(summary.completed), len(summary.failed), engine.running, summary)
            runner = engine.run(todo)
            for task, res in runner:
                if task is not None:
                    rec = _record(task, res, records.get(task["task_id"]))
                    dsindex.write_task_record(ds, rec)
                    idx.update(rec)
                    idx.write()
                    summary.ran.append(task["task_id"])
                    if rec["status"] == "complete":
                        summary.completed.append(task["task_id"])
                    else:
                        summary.failed[task["task_id"]] = f"{rec.get('failure_stage') or '?'}: {rec.get('reason')}"
                bar.show(len(summary.completed), len(summary.failed), engine.running, summary)
    finally:
        summary.wall_s = round(time.monotonic() - t0, 3)
        if runner is not None:
            runner.close()  # on Ctrl-C: kill the running task processes now
        engine.close()


def build_dataset(sources: str | Path, dataset_dir: str | Path, config: PipelineConfig | None = None,
                  options: BuildOptions | None = None, engine=None) -> BuildSummary:
    """Build (or resume) the dataset in ``dataset_dir`` from the videos listed by ``sources``.

    ``engine``: an engine object to use instead of the one ``options`` names (tests). Each finished task
    writes ``tasks/<id>.json`` and rewrites ``index.parquet`` at once; ``report.html`` is written at the
    end (also after an interruption).

    Raises:
        InputError: unreadable sources, an unknown ``until`` stage, or a bad engine choice.
        BackendNotInstalled: ``--engine ray`` without Ray.
    """
    from ..stage import STAGES, stage_module

    config = config or PipelineConfig()
    opts = options or BuildOptions()
    until = stage_module(opts.until).NAME if opts.until else None
    stages = STAGES if until is None else STAGES[: STAGES.index(until) + 1]
    srcs = read_sources(sources)
    ds = open_dataset(dataset_dir, sources, config, opts.engine, until, stages)
    records = dsindex.read_task_records(ds)
    idx = dsindex.DatasetIndex(ds)
    for tid, rec in records.items():
        idx.rows[tid] = dsindex.rows_for_task(ds, rec)
    summary = BuildSummary(ds)
    todo = plan_tasks(ds, srcs, records, idx, stages, config, until, opts.retry_failed, summary)
    if todo and engine is None:
        from .engines import make_engine

        engine = make_engine(opts.engine, opts.workers, opts.address, opts.timeout_s, opts.memory_mb,
                             opts.cpus_per_task)
    try:
        if todo:
            run_planned(engine, todo, ds, records, idx, len(srcs), summary)
    finally:
        idx.write()
        if opts.report:
            _write_report(ds, idx)
    return summary


def _record(task: dict, res: dict, old: dict | None) -> dict:
    """The task record (``tasks/<id>.json``) of one finished task from the supervisor's result."""
    inner = res.get("result") or {}
    root = Path(task["scene_dir"])
    stage = inner.get("failure_stage")
    if res["status"] == "failed" and res.get("error_type") in ("Timeout", "OutOfMemory", "Crash") or (
            res["status"] == "failed" and not inner):
        stage = _running_stage(root) or stage
        if stage:
            _mark_killed(root, stage, res.get("reason") or "killed", res.get("error_type") or "Crash")
    return {"task_id": task["task_id"], "source": task["source"], "source_kind": task["source_kind"],
            "status": res["status"], "failure_stage": stage if res["status"] == "failed" else None,
            "reason": res.get("reason"), "error_type": res.get("error_type"), "until": task.get("until"),
            "wall_s": res.get("wall_s"), "peak_rss_mb": res.get("peak_rss_mb"), "fetch_s": inner.get("fetch_s"),
            "finished": now_iso(), "worker": res.get("worker"), "attempts": int((old or {}).get("attempts") or 0) + 1}


def _write_report(ds: Path, idx) -> None:
    try:
        from .report import write_dataset_report

        write_dataset_report(ds, idx.all_rows())
    except Exception as e:  # noqa: BLE001 - the report must never turn a build into a failure
        progress.console.print(f"[yellow]warning: dataset report.html not written: {e}")


class _BuildBar:
    """One overall rich progress bar: scenes done / failed / running (silent when progress is disabled)."""

    def __init__(self, total: int, skipped: int):
        self.total, self.skipped, self._p, self._t = total, skipped, None, None

    def __enter__(self):
        if progress.enabled() and os.environ.get("VID2SCENE_NO_PROGRESS") != "1":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("[bold]build[/]"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.description}"), TimeElapsedColumn(), console=progress.console)
            self._p.__enter__()
            self._t = self._p.add_task("", total=self.total, completed=self.skipped)
        return self

    def show(self, done: int, failed: int, running: int, summary: BuildSummary) -> None:
        if self._p is None:
            return
        desc = (f"[green]done {done + len(summary.skipped_complete)}[/] [red]failed {failed + len(summary.skipped_failed)}"
                f"[/] [yellow]running {running}[/]")
        self._p.update(self._t, completed=self.skipped + done + failed, description=desc)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)
        return False

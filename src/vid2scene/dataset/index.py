"""``DATASET_DIR/index.parquet``: one row per scene, rebuilt from the task records and scene folders.

Durable state of a build, all written atomically (temporary file + rename):

- ``tasks/<task_id>.json`` — the outcome of a video's latest run (:data:`TASK_RECORD_KEYS`); written by
  the build as each task ends, so a killed build loses no finished task;
- ``scenes/<scene_id>/manifest.json`` — the scene's own stage status, QC and timings (the pipeline's);
- ``index.parquet`` — derived from both, rewritten after every finished task.

One task (video) gives one row, or one row per shot sub-scene when ``shots.emit="all"`` forked the video
into ``scenes/<task_id>/subscenes/shot_NNN`` (long tours): each sub-scene is a scene of its own, with
``scene_id = "<task_id>--shot_NNN"`` and ``parent_scene_id = task_id``.

Columns (:func:`schema`): ids and source, ``status`` (``complete`` = every requested stage complete,
``failed``, ``incomplete``), failure stage / reason / error type, the QC figures (video duration in s,
kept frames, keyframes, registered keyframes and share, mean reprojection error in px, sparse points,
instances, QA pairs; null when the stage did not run), per-stage seconds ``seconds_<stage>``, the task's
wall time, peak RSS in MiB, the fetch time, the finish time (ISO 8601 UTC) and the worker
(``host:pid``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import Vid2SceneError
from ..io import atomic_path, finished_files, read_json, write_json
from ..scene import Scene

INDEX = "index.parquet"
TASKS = "tasks"
SCENES = "scenes"

TASK_RECORD_KEYS = ("task_id", "source", "source_kind", "status", "failure_stage", "reason", "error_type",
                    "until", "wall_s", "peak_rss_mb", "fetch_s", "finished", "worker", "attempts")

_QC_COLUMNS = [  # (column, arrow type name)
    ("duration_s", "float64"), ("n_frames_kept", "int64"), ("n_keyframes", "int64"), ("n_registered", "int64"),
    ("registered_share", "float64"), ("reprojection_error_px", "float64"), ("n_points", "int64"),
    ("n_instances", "int64"), ("n_qa", "int64"),
]


def stage_names() -> list[str]:
    from ..pipeline import STAGES

    return list(STAGES)


def schema():
    """The arrow schema of ``index.parquet`` (``seconds_<stage>`` for every stage of the pipeline)."""
    import pyarrow as pa

    s, f64, i64 = pa.string(), pa.float64(), pa.int64()
    types = {"float64": f64, "int64": i64}
    fields = [("task_id", s), ("scene_id", s), ("parent_scene_id", s), ("shot", i64), ("source", s),
              ("source_kind", s), ("scene_dir", s), ("status", s), ("failure_stage", s), ("failure_reason", s),
              ("error_type", s), ("until", s)]
    fields += [(c, types[t]) for c, t in _QC_COLUMNS]
    fields += [("fetch_s", f64)] + [(f"seconds_{n}", f64) for n in stage_names()]
    fields += [("wall_s", f64), ("peak_rss_mb", f64), ("finished", s), ("worker", s), ("attempts", i64),
               ("thumbnail", s)]
    return pa.schema(fields)


def task_record_path(dataset_dir: Path, task_id: str) -> Path:
    return Path(dataset_dir) / TASKS / f"{task_id}.json"


def read_task_records(dataset_dir: Path) -> dict[str, dict]:
    """Every ``tasks/*.json`` record of ``dataset_dir`` by task id (unreadable ones are skipped)."""
    out = {}
    for p in finished_files(Path(dataset_dir) / TASKS, "*.json"):
        try:
            rec = read_json(p)
        except (OSError, ValueError):
            continue
        out[rec.get("task_id", p.stem)] = rec
    return out


def write_task_record(dataset_dir: Path, record: dict) -> None:
    write_json(task_record_path(dataset_dir, record["task_id"]), {k: record.get(k) for k in TASK_RECORD_KEYS})


def read_manifest(root: str | Path) -> dict | None:
    """The ``manifest.json`` of the scene folder ``root``, or None when it is absent or unreadable (a task
    killed before ingest, a half-written folder)."""
    try:
        return Scene(root).read_manifest()
    except Vid2SceneError:
        return None


def _count_jsonl(path: Path) -> int | None:
    if not path.is_file():
        return None
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def _n_instances(root: Path) -> int | None:
    """Number of instances in the scene's ``instances.json`` (None when absent or unreadable)."""
    scene = Scene(root)
    if not scene.instances_json.is_file():
        return None
    try:
        return len(scene.instances().get("instances", []))
    except Vid2SceneError:
        return None


def thumbnail_path(root: Path) -> Path | None:
    """First keyframe of the scene (``frames/``), else its first decoded frame (``frames_all/``), or None."""
    scene = Scene(root)
    for folder in (scene.frames_dir, scene.frames_all_dir):
        if folder.is_dir():
            first = min((p for p in folder.iterdir() if p.suffix == ".jpg"), default=None, key=lambda p: p.name)
            if first is not None:
                return first
    return None


def requested_stages(until: str | None) -> list[str]:
    names = stage_names()
    return names if not until else names[: names.index(until) + 1]


def scene_row(dataset_dir: Path, root: Path, record: dict, scene_id: str, parent: str | None,
              shot: int | None) -> dict:
    """One index row for the scene folder ``root`` of the task ``record``."""
    dataset_dir = Path(dataset_dir)
    m = read_manifest(root) or {}
    stages, qc = m.get("stages", {}), m.get("qc", {})
    wanted = requested_stages(record.get("until"))
    if all(stages.get(s, {}).get("status") == "complete" for s in wanted) and not m.get("failure"):
        status = "complete"
    elif m.get("failure") or record.get("status") == "failed":
        status = "failed"
    else:
        status = "incomplete"
    fail = m.get("failure") or {}
    if status == "failed" and not fail:
        fail = {"stage": record.get("failure_stage"), "reason": record.get("reason"),
                "error_type": record.get("error_type")}
    ing, kf, sfm = qc.get("ingest", {}), qc.get("keyframes", {}), qc.get("sfm", {})
    thumb = thumbnail_path(root)
    row = {"task_id": record["task_id"], "scene_id": scene_id, "parent_scene_id": parent, "shot": shot,
           "source": record.get("source"), "source_kind": record.get("source_kind"),
           "scene_dir": str(root.relative_to(dataset_dir)) if root.is_relative_to(dataset_dir) else str(root),
           "status": status, "failure_stage": fail.get("stage") if status == "failed" else None,
           "failure_reason": fail.get("reason") if status == "failed" else None,
           "error_type": fail.get("error_type") if status == "failed" else None, "until": record.get("until"),
           "duration_s": ing.get("duration_s"), "n_frames_kept": ing.get("n_frames_kept"),
           "n_keyframes": kf.get("n_keyframes"), "n_registered": sfm.get("n_registered"),
           "registered_share": sfm.get("registered_share"),
           "reprojection_error_px": sfm.get("mean_reprojection_error_px"), "n_points": sfm.get("n_points"),
           "n_instances": _n_instances(root), "n_qa": _count_jsonl(Scene(root).task_path("vqa.jsonl")),
           "fetch_s": record.get("fetch_s"), "wall_s": record.get("wall_s"),
           "peak_rss_mb": record.get("peak_rss_mb"), "finished": record.get("finished"),
           "worker": record.get("worker"), "attempts": record.get("attempts"),
           "thumbnail": str(thumb.relative_to(dataset_dir)) if thumb and thumb.is_relative_to(dataset_dir) else None}
    for n in stage_names():
        st = stages.get(n, {})
        row[f"seconds_{n}"] = st.get("seconds") if not st.get("delegated") else None
    return row


def rows_for_task(dataset_dir: Path, record: dict) -> list[dict]:
    """Index rows of one task: its scene, or one row per shot sub-scene (``shots.emit="all"``)."""
    dataset_dir = Path(dataset_dir)
    tid = record["task_id"]
    root = dataset_dir / SCENES / tid
    m = read_manifest(root)
    subs = (m or {}).get("subscenes") or []
    if not subs:
        return [scene_row(dataset_dir, root, record, tid, None, None)]
    rows = []
    for e in subs:
        r = scene_row(dataset_dir, root / e["path"], record, f"{tid}--shot_{int(e['shot']):03d}", tid, int(e["shot"]))
        for n in ("ingest", "shots"):  # the parent ran these once for all its shots
            r[f"seconds_{n}"] = (m["stages"].get(n) or {}).get("seconds")
        sub = Scene(root / e["path"])
        try:  # the sub-scene's share of the video: its shot
            shot = sub.shots()["shots"][0]
            r["duration_s"], r["n_frames_kept"] = shot.get("duration_s"), r["n_frames_kept"] or len(sub.frame_index())
        except (Vid2SceneError, KeyError, IndexError):
            pass
        rows.append(r)
    return rows


class DatasetIndex:
    """The rows of ``index.parquet`` by task; :meth:`update` replaces a task's rows, :meth:`write` saves."""

    def __init__(self, dataset_dir: str | Path):
        self.dataset_dir = Path(dataset_dir)
        self.rows: dict[str, list[dict]] = {}

    @classmethod
    def from_records(cls, dataset_dir: str | Path) -> "DatasetIndex":
        idx = cls(dataset_dir)
        for tid, rec in read_task_records(idx.dataset_dir).items():
            idx.rows[tid] = rows_for_task(idx.dataset_dir, rec)
        return idx

    def update(self, record: dict) -> list[dict]:
        self.rows[record["task_id"]] = rows = rows_for_task(self.dataset_dir, record)
        return rows

    def all_rows(self) -> list[dict]:
        return sorted((r for rows in self.rows.values() for r in rows), key=lambda r: r["scene_id"])

    def write(self) -> Path:
        """Write ``index.parquet`` atomically (a reader never sees a half-written file)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        sch = schema()
        rows = [{f.name: r.get(f.name) for f in sch} for r in self.all_rows()]
        table = pa.Table.from_pylist(rows, schema=sch)
        path = self.dataset_dir / INDEX
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path


def read_index(dataset_dir: str | Path) -> list[dict]:
    """Rows of ``DATASET_DIR/index.parquet`` as dicts.

    Raises:
        InputError: no readable index in ``dataset_dir``.
    """
    import pyarrow.parquet as pq

    from ..errors import InputError

    path = Path(dataset_dir) / INDEX
    if not path.is_file():
        raise InputError(f"not a dataset folder (no {INDEX}): {dataset_dir}")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - arrow raises several types
        raise InputError(f"unreadable {path}: {e}") from e


def summarize(rows: list[dict]) -> dict:
    """Counts by status, failure reasons (grouped by stage and reason) and QC medians of complete scenes."""
    import numpy as np

    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        if r["status"] == "failed":
            key = f"{r.get('failure_stage') or '?'}: {(r.get('failure_reason') or '').strip()[:160]}"
            reasons[key] = reasons.get(key, 0) + 1
    med = {}
    done = [r for r in rows if r["status"] == "complete"]
    for c, _ in _QC_COLUMNS + [("wall_s", ""), ("peak_rss_mb", "")]:
        vals = [r[c] for r in done if r.get(c) is not None]
        if vals:
            med[c] = round(float(np.median(vals)), 4)
    total_video_s = sum(r["duration_s"] for r in done if r.get("duration_s") is not None)
    return {"n_scenes": len(rows), "n_tasks": len({r["task_id"] for r in rows}), "by_status": counts,
            "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
            "median_of_complete": med, "video_seconds_complete": round(total_video_s, 2)}


def dumps(obj) -> str:
    return json.dumps(obj, indent=1, default=str)

"""Benchmark: task generators (spatial QA, VLN episodes) on one scene, and the VSI-Bench evaluator on trivial
baselines. Prints one JSON object per line.

Figures:

* ``trajectory``: the floor-projected camera track before / after refinement (raw length, back-tracking cut,
  loops erased, segments, refined length) — needs only ``cameras.json`` + ``layout.json``.
* ``vqa``: questions generated per type, candidates examined, share rejected as ambiguous (by reason), seconds.
* ``vln``: episodes, episodes without a nameable goal landmark, replay end error (max over episodes, metres),
  seconds.
* ``eval``: ``eval-vqa`` scores (per type and overall, %) of three predictors on the generated questions:
  ``frequency`` (VSI-Bench's chance level (frequency): most frequent letter / mean answer per type), ``first``
  (always "A" / 0) and ``oracle`` (the ground truth: must give 100).

    python benchmarks/tasks_hololens.py --scene /work/scenes/hololens [--seed 0]
    python benchmarks/tasks_hololens.py --synthetic      # the synthetic test scene (tests/fixtures/task_scene.py)

The scene folder is never modified: its task inputs are copied into a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
INPUTS = ["instances.json", "scene_graph.json", "layout.json", "cameras.json", "video.json", "mesh.ply"]


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def consistency(rows: list[dict], inst_doc: dict) -> dict:
    """Checks of every question against ``instances.json``: each referenced object id exists with the stated
    label; ``object_counting`` answers equal the label's instance count; ``object_size_estimation`` answers
    equal the longest box side (cm). Returns counts of checked / failed questions and the failures' ids."""
    by_id = {i["id"]: i for i in inst_doc["instances"]}
    counts: dict[str, int] = {}
    for i in inst_doc["instances"]:
        counts[i["label"]] = counts.get(i["label"], 0) + 1
    bad = []
    for r in rows:
        ok = all(o["id"] in by_id and by_id[o["id"]]["label"] == o["label"] for o in r.get("objects", [])
                 if o.get("id") is not None)
        if r["question_type"] == "object_counting":
            lab = r["objects"][0]["label"] if r.get("objects") else None
            ok &= lab is not None and float(r["answer"]) == counts.get(lab)
        if r["question_type"] == "object_size_estimation" and r.get("objects"):
            b = by_id[r["objects"][0]["id"]]["box"]["size"]
            ok &= abs(float(r["answer"]) - 100 * max(b)) <= 1.0
        if not ok:
            bad.append(r["id"])
    return {"n_checked": len(rows), "n_inconsistent": len(bad), "inconsistent_ids": bad[:20]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", type=Path, help="scene folder (instances.json, layout.json, cameras.json, ...)")
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic test scene instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-per-type", type=int, default=50)
    args = ap.parse_args()
    if not args.scene and not args.synthetic:
        ap.error("give --scene DIR or --synthetic")

    from vid2scene.tasks import common, eval_vqa, nav, vln, vqa

    work = Path(tempfile.mkdtemp(prefix="tasks_bench_")) / "scene"
    work.mkdir(parents=True)
    if args.synthetic:
        sys.path.insert(0, str(HERE.parent))
        from tests.fixtures.task_scene import write_scene

        write_scene(work)
        name = "synthetic"
    else:
        for f in INPUTS:
            if (args.scene / f).is_file():
                shutil.copy2(args.scene / f, work / f)
        name = args.scene.resolve().name
    present = {f: (work / f).is_file() for f in INPUTS}
    emit({"scene": name, "inputs": present})

    if present["cameras.json"] and present["layout.json"]:
        cams = common.cameras(work)
        xy, t, _ = nav.floor_trajectory(cams)
        t0 = time.perf_counter()
        tr = nav.refine_trajectory(xy, t)
        emit({"figure": "trajectory", "n_cameras": len(cams), **tr.stats,
              "seconds": round(time.perf_counter() - t0, 3)})

    if not (present["instances.json"] and present["layout.json"]):
        emit({"figure": "skipped", "reason": "scene lacks instances.json / layout.json: run detect/instances first"})
        return 0

    t0 = time.perf_counter()
    rows, meta = vqa.generate(work, vqa.Config(seed=args.seed, max_per_type=args.max_per_type))
    secs = time.perf_counter() - t0
    per = meta["generation"]["per_type"]
    n_cand = sum(v["n_candidates"] for v in per.values())
    n_rej = sum(v["n_rejected"] for v in per.values())
    emit({"figure": "vqa", "n_questions": len(rows), "seconds": round(secs, 3),
          "n_instances": sum(meta["object_counts"].values()), "n_labels": len(meta["object_counts"]),
          "rejected_share_all": round(n_rej / n_cand, 4) if n_cand else None})
    for qtype, v in per.items():
        emit({"figure": "vqa_type", "question_type": qtype, "n_written": v["n_written"],
              "n_accepted": v["n_accepted"], "n_candidates": v["n_candidates"],
              "rejected_share": v["rejected_share"], "rejected_by_reason": v["rejected_by_reason"],
              "seconds": v["seconds"]})

    emit({"figure": "vqa_consistency", **consistency(rows, json.loads((work / "instances.json").read_text()))})

    if present["cameras.json"]:
        t0 = time.perf_counter()
        docs, _ = vln.generate(work, vln.Config(seed=args.seed))
        secs = time.perf_counter() - t0
        episodes = docs["dataset"]["episodes"]
        actions = {e["episode_id"]: docs["gt"][str(e["episode_id"])]["actions"] for e in episodes}
        errs = []
        for e in episodes:
            path, _ = nav.replay_actions(vln.habitat_to_world(e["start_position"])[:2],
                                         vln.yaw_from_quat_xyzw(e["start_rotation"]), actions[e["episode_id"]])
            errs.append(float(np.linalg.norm(path[-1] - vln.habitat_to_world(e["goals"][0]["position"])[:2])))
        extra = docs["extra"]["episodes"]
        emit({"figure": "vln", "n_episodes": len(episodes), "rejected": docs["extra"]["rejected"],
              "replay_end_error_m_max": round(max(errs), 3) if errs else None,
              "n_templates_used": len({extra[str(e["episode_id"])]["template"] for e in episodes}),
              "mean_actions": round(float(np.mean([len(a) for a in actions.values()])), 1)
              if episodes else None, "seconds": round(secs, 3)})

    if rows:
        oracle = [{"id": r["id"], "prediction": r["ground_truth"]} for r in rows]
        for pred_name, preds in (("frequency", eval_vqa.baseline_predictions(rows, "frequency")),
                                 ("first", eval_vqa.baseline_predictions(rows, "first")), ("oracle", oracle)):
            res = eval_vqa.evaluate(preds, rows)
            emit({"figure": "eval", "predictor": pred_name,
                  "overall_pct": round(100 * res["overall"], 1), "overall_micro_pct": round(100 * res["overall_micro"], 1),
                  "per_type_pct": {k: round(100 * v["score"], 1) for k, v in res["per_type"].items()}})
    shutil.rmtree(work.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

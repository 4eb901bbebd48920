"""Score spatial-QA predictions the way VSI-Bench does (Yang et al., "Thinking in Space", CVPR 2025, §3.3).

- Multiple-choice types (``options`` present): exact match of the predicted option letter with the ground-truth
  letter. The letter is read as VSI-Bench's lmms-eval task reads it: the first whitespace-separated token,
  trailing ``.`` stripped (``"B. couch"`` → ``B``), case-insensitive; parentheses around it are also stripped.
- Numeric types: mean relative accuracy, paper eq. (1):
  ``MRA = 1/10 · Σ_{θ ∈ {0.50, 0.55, …, 0.95}} 1[ |ŷ − y| / y < 1 − θ ]``. (lmms-eval's implementation spaces
  eleven thresholds with ``np.linspace(.5, .95, 11)`` and uses ``≤``; this follows the paper's definition.)
  The prediction is the first token parsed as a float; an unparsable or missing prediction scores 0.
- Per type: the mean score over its questions (a missing prediction counts as 0). Overall, as VSI-Bench's
  aggregate: the three ``object_rel_direction_*`` types are first averaged into one ``object_rel_direction``
  score, then ``overall`` is the mean over types (macro); ``overall_micro`` is the mean over questions.

Predictions: JSON lines with ``id`` and ``prediction`` (aliases ``pred``, ``response``, ``answer``), and
``scene_name`` when the ids repeat across scenes. A prediction row that carries ``question_type`` and
``ground_truth`` itself (a copy of the question row plus its prediction) needs no question file.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from ..errors import InputError

THRESHOLDS = np.round(np.arange(0.50, 0.951, 0.05), 2)  # 10 thresholds
PRED_KEYS = ("prediction", "pred", "response", "answer")
DIRECTION_TYPES = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard")


def mean_relative_accuracy(pred: float, target: float) -> float:
    """VSI-Bench MRA of one numeric prediction (both in the question's unit; ``target`` > 0): the share of the
    ten thresholds θ ∈ {0.50, …, 0.95} with relative error ``|pred − target| / target < 1 − θ``."""
    if target == 0:
        raise ValueError("MRA needs a non-zero ground truth")
    if pred is None or not math.isfinite(pred):
        return 0.0
    rel = abs(pred - target) / abs(target)
    return float(np.mean(rel < 1.0 - THRESHOLDS - 1e-12))


def parse_letter(pred) -> str | None:
    """The option letter of a multiple-choice prediction (``"B"``, ``"B."``, ``"b. couch"``, ``"(B)"``)."""
    if pred is None:
        return None
    tok = str(pred).strip().split(" ")[0] if str(pred).strip() else ""
    tok = tok.strip().rstrip(".").strip("()[]:,").strip()
    return tok.upper() or None


def parse_number(pred) -> float | None:
    """The number of a numeric prediction: the first token as a float (``"2.5"``, ``"2.5 m"``), else the first
    number anywhere in the text; None when there is none."""
    if pred is None:
        return None
    if isinstance(pred, (int, float)) and not isinstance(pred, bool):
        return float(pred)
    s = str(pred).strip()
    try:
        return float(s.split(" ")[0].rstrip(".").replace(",", ""))
    except ValueError:
        m = re.search(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", s)
        return float(m.group(0)) if m else None


def score_row(question: dict, pred) -> float:
    """Score (0..1) of one prediction for one question row (VSI-Bench rules above)."""
    if question.get("options"):
        p = parse_letter(pred)
        return float(p is not None and p == str(question["ground_truth"]).strip().upper())
    return mean_relative_accuracy(parse_number(pred), float(question["ground_truth"]))


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file. Raises InputError when missing or malformed (naming the line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    rows = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{k}: not JSON ({e.msg})") from e
    return rows


def _key(row: dict, with_scene: bool):
    return (row.get("scene_name"), row["id"]) if with_scene else row["id"]


def _pred_of(row: dict):
    for k in PRED_KEYS:
        if k in row:
            return row[k]
    return None


def evaluate(predictions: list[dict], questions: list[dict] | None = None) -> dict:
    """Scores per question type and overall.

    ``questions``: the question rows (``vqa.jsonl``); when None, each prediction row must carry
    ``question_type``, ``ground_truth`` (and ``options`` for multiple choice). Questions without a prediction
    score 0 and are counted in ``n_missing``.

    Returns ``{"per_type": {type: {"n", "n_missing", "metric", "score"}}, "object_rel_direction": score | None,
    "overall": macro mean, "overall_micro": mean over questions, "n": total}``; scores in 0..1.

    Raises:
        InputError: a prediction lacks ``id`` / its question cannot be found, or ids are not unique.
    """
    if questions is None:
        for p in predictions:
            if "question_type" not in p or "ground_truth" not in p:
                raise InputError("predictions carry no question_type / ground_truth: pass the questions "
                                 "(--questions SCENE or vqa.jsonl)")
        questions = predictions
    with_scene = len({q.get("scene_name") for q in questions}) > 1
    qmap = {}
    for q in questions:
        if "id" not in q:
            raise InputError("a question row has no id")
        k = _key(q, with_scene)
        if k in qmap:
            raise InputError(f"question id {k} is not unique")
        qmap[k] = q
    preds = {}
    for p in predictions:
        if "id" not in p:
            raise InputError("a prediction row has no id")
        k = _key(p, with_scene)
        if k not in qmap:
            raise InputError(f"prediction for unknown question {k}")
        preds[k] = _pred_of(p)
    per: dict[str, dict] = {}
    scores_all = []
    for k, q in qmap.items():
        t = q["question_type"]
        d = per.setdefault(t, {"n": 0, "n_missing": 0, "metric": "accuracy" if q.get("options") else "MRA",
                               "_s": []})
        d["n"] += 1
        if k not in preds or preds[k] is None:
            d["n_missing"] += 1
            s = 0.0
        else:
            s = score_row(q, preds[k])
        d["_s"].append(s)
        scores_all.append(s)
    for d in per.values():
        d["score"] = round(float(np.mean(d.pop("_s"))), 6)
    per = dict(sorted(per.items()))
    merged = {t: d["score"] for t, d in per.items() if t not in DIRECTION_TYPES}
    dirs = [per[t]["score"] for t in DIRECTION_TYPES if t in per]
    rel_dir = round(float(np.mean(dirs)), 6) if dirs else None
    if rel_dir is not None:
        merged["object_rel_direction"] = rel_dir
    return {"per_type": per, "object_rel_direction": rel_dir,
            "overall": round(float(np.mean(list(merged.values()))), 6) if merged else None,
            "overall_micro": round(float(np.mean(scores_all)), 6) if scores_all else None,
            "n": len(scores_all)}


def load_questions(path_or_scene: str | Path) -> list[dict]:
    """Question rows from a ``vqa.jsonl`` file or a scene folder (``SCENE/tasks/vqa.jsonl``)."""
    from ..scene import Scene

    p = Path(path_or_scene)
    if p.is_dir():
        p = Scene(p).task_path("vqa.jsonl")
    return read_jsonl(p)


def baseline_predictions(questions: list[dict], kind: str = "frequency") -> list[dict]:
    """Trivial baselines: ``"frequency"`` — per type, the most frequent ground-truth letter (multiple choice;
    ties to the earliest letter) or the mean ground truth (numeric), VSI-Bench's "chance level (frequency)";
    ``"first"`` — always "A" / 0. Returns prediction rows (``id``, ``scene_name``, ``prediction``)."""
    from collections import Counter

    by_type: dict[str, list[dict]] = {}
    for q in questions:
        by_type.setdefault(q["question_type"], []).append(q)
    guess = {}
    for t, qs in by_type.items():
        if qs[0].get("options"):
            c = Counter(str(q["ground_truth"]) for q in qs)
            guess[t] = "A" if kind == "first" else sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        else:
            guess[t] = "0" if kind == "first" else f"{np.mean([float(q['ground_truth']) for q in qs]):.4f}"
    return [{"id": q["id"], "scene_name": q.get("scene_name"), "prediction": guess[q["question_type"]]}
            for q in questions]

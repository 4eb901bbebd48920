"""Score spatial-QA predictions exactly as VSI-Bench's official scorer does (Yang et al., "Thinking in Space",
CVPR 2025, §3.3; the lmms-eval task ``vsibench`` in vision-x-nyu/thinking-in-space, ``utils.py``).

Official rules (the default, ``lenient=False``):

- Answer normalisation (VSI-Bench's ``fuzzy_matching``): the prediction text is split on single spaces, the
  first piece kept, trailing ``.`` removed, then surrounding whitespace stripped. So ``"B. couch"`` → ``"B"``,
  but ``"  266"`` → ``""`` (a leading space makes the first piece empty), ``"(C)"`` stays ``"(C)"`` and
  ``"36.6m"`` stays ``"36.6m"``.
- Multiple-choice types (``object_rel_direction_*``, ``object_rel_distance``, ``route_planning``,
  ``obj_appearance_order``, or any row with ``options``): 1 when the normalised answer equals the ground-truth
  letter ignoring case, else 0.
- Numeric types: the normalised answer is converted with Python's ``float`` (so ``"36.6m"`` → no number →
  score 0; ``"nan"`` / ``"inf"`` parse and score 0), then mean relative accuracy, paper eq. (1), as the
  official code computes it: ten thresholds ``θ = numpy.linspace(0.5, 0.95, 10)`` (0.50, 0.55, …, 0.95) and
  ``MRA = mean_θ 1[ |ŷ − y| / y ≤ 1 − θ ]`` — with ``≤``: a count of 1 for a truth of 2 (relative error
  exactly 0.5) scores 0.1.
- Aggregation (``vsibench_aggregate_results``): the mean score per question type; the three
  ``object_rel_direction_*`` types are replaced by one ``object_rel_direction`` = (sum of their accuracies) / 3
  — a missing one counts 0, and the entry exists even when none of the three is present (as in the official
  code); ``overall`` is the mean over the resulting entries. ``overall_micro`` (mean over questions) is ours.
- A question without a prediction scores 0 (counted in ``n_missing``).

``lenient=True`` (``vid2scene eval-vqa --lenient``) is *not* VSI-Bench: a letter may be wrapped in
parentheses / brackets (``"(C)"`` → ``C``) and a number is the first one anywhere in the text (``"36.6m"`` →
36.6, ``"  266"`` → 266).

Inputs are checked before scoring: a ground truth of a numeric question that is not a finite non-zero number,
an ``id`` that is not a string or an integer, a row that is not a JSON object, a file that is not UTF-8 JSON
lines, or a file without rows raise :class:`~vid2scene.errors.InputError` (exit code 3 in the CLI) with one line.

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

THRESHOLDS = np.linspace(0.5, 0.95, 10)  # VSI-Bench: linspace(.5, .95, int((.95 - .5) / .05 + 2)) = 10 points
PRED_KEYS = ("prediction", "pred", "response", "answer")
DIRECTION_TYPES = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard")
MCA_TYPES = (*DIRECTION_TYPES, "object_rel_distance", "route_planning", "obj_appearance_order")
NA_TYPES = ("object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")


def mean_relative_accuracy(pred: float | None, target: float) -> float:
    """VSI-Bench MRA of one numeric prediction (both in the question's unit; ``target`` finite and non-zero):
    the share of the ten thresholds θ ∈ {0.50, 0.55, …, 0.95} with ``|pred − target| / target ≤ 1 − θ``
    (computed in float64 as the official code does). ``pred`` None or not finite scores 0.

    Raises:
        ValueError: ``target`` is zero or not finite.
    """
    target = float(target)
    if target == 0 or not math.isfinite(target):
        raise ValueError(f"MRA needs a finite non-zero ground truth, got {target!r}")
    if pred is None or not math.isfinite(float(pred)):
        return 0.0
    rel = abs(float(pred) - target) / target
    return float(np.mean(rel <= 1 - THRESHOLDS))


def normalise_answer(pred) -> str:
    """VSI-Bench's ``fuzzy_matching``: first piece of ``str(pred).split(" ")``, trailing ``.`` removed, then
    stripped (``"B. couch"`` → ``"B"``, ``"  266"`` → ``""``, ``"(C)"`` → ``"(C)"``)."""
    return str(pred).split(" ")[0].rstrip(".").strip()


def official_float(text: str) -> float | None:
    """Python ``float(text)``, None when it raises (VSI-Bench's ``to_float``)."""
    try:
        return float(text)
    except (TypeError, ValueError, OverflowError):
        return None


def parse_letter(pred) -> str | None:
    """Lenient option letter (not VSI-Bench): ``"B"``, ``"B."``, ``"b. couch"``, ``"(B)"`` → ``"B"``."""
    if pred is None:
        return None
    tok = str(pred).strip().split(" ")[0] if str(pred).strip() else ""
    tok = tok.strip().rstrip(".").strip("()[]:,").strip()
    return tok.upper() or None


def parse_number(pred) -> float | None:
    """Lenient number (not VSI-Bench): the first token as a float (``"2.5"``, ``"2.5 m"``), else the first
    number anywhere in the text (``"36.6m"`` → 36.6); None when there is none."""
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


def is_multiple_choice(question: dict) -> bool:
    """VSI-Bench's type lists decide; a type outside both lists is multiple choice when it has ``options``."""
    t = question.get("question_type")
    if t in MCA_TYPES:
        return True
    if t in NA_TYPES:
        return False
    return bool(question.get("options"))


def ground_truth_number(question: dict) -> float:
    """The numeric ground truth of a question row (finite, non-zero).

    Raises:
        InputError: it is not a number, not finite, or zero (MRA divides by it), naming the question id.
    """
    gt = question.get("ground_truth")
    v = None if isinstance(gt, bool) else official_float(gt) if isinstance(gt, (str, int, float)) else None
    if v is None or not math.isfinite(v):
        raise InputError(f"question {question.get('id')!r}: ground truth {gt!r} is not a number")
    if v == 0:
        raise InputError(f"question {question.get('id')!r}: ground truth is 0 (relative accuracy divides by it)")
    return v


def score_row(question: dict, pred, lenient: bool = False) -> float:
    """Score (0..1) of one prediction (a string; a number is formatted with ``str``) for one question row,
    by VSI-Bench's rules (module docstring) or, with ``lenient``, the lenient parsers.

    Raises:
        InputError: a numeric question whose ground truth is not a finite non-zero number.
    """
    if is_multiple_choice(question):
        gt = str(question.get("ground_truth", ""))
        if lenient:
            p = parse_letter(pred)
            return float(p is not None and p == gt.strip().upper())
        return float(normalise_answer(pred).lower() == gt.lower())
    target = ground_truth_number(question)
    value = parse_number(pred) if lenient else official_float(normalise_answer(pred))
    return mean_relative_accuracy(value, target)


def read_jsonl(path: str | Path, what: str = "rows") -> list[dict]:
    """Rows (JSON objects) of a UTF-8 JSON-lines file; blank lines are skipped.

    Raises:
        InputError: the path is missing or not a regular file, the file is not UTF-8 text, a line is not JSON
            or not an object (naming the line), or there is no row at all.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 JSON-lines file (byte {e.start})") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from e
    rows = []
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{k}: not JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise InputError(f"{path}:{k}: a row must be a JSON object, got {type(row).__name__}")
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no {what} (empty file)")
    return rows


def _key(row: dict, with_scene: bool, what: str):
    rid = row["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise InputError(f"a {what} id must be a string or an integer, got {json.dumps(rid)[:60]}")
    if not with_scene:
        return rid
    sc = row.get("scene_name")
    if sc is not None and not isinstance(sc, str):
        raise InputError(f"{what} {rid!r}: scene_name must be a string, got {json.dumps(sc)[:60]}")
    return sc, rid


def _pred_of(row: dict):
    for k in PRED_KEYS:
        if k in row:
            v = row[k]
            if v is None or isinstance(v, str):
                return v
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return str(v)
            raise InputError(f"prediction {row.get('id')!r}: {k} must be a string or a number, "
                             f"got {type(v).__name__}")
    return None


def evaluate(predictions: list[dict], questions: list[dict] | None = None, lenient: bool = False) -> dict:
    """Scores per question type and overall, by VSI-Bench's official rules (module docstring); ``lenient``
    switches to the lenient parsers.

    ``questions``: the question rows (``vqa.jsonl``); when None, each prediction row must carry
    ``question_type``, ``ground_truth`` (and ``options`` for multiple choice). Questions without a prediction
    score 0 and are counted in ``n_missing``.

    Returns ``{"per_type": {type: {"n", "n_missing", "metric", "score"}}, "object_rel_direction": score | None
    (None when no direction question exists), "overall": VSI-Bench's mean over entries, "overall_micro": mean
    over questions, "n": total, "rules": "vsibench" | "lenient"}``; scores in 0..1.

    Raises:
        InputError: no prediction / question rows; a row lacks ``id``, has a non-string non-integer ``id``, or
            its question cannot be found; ids are not unique; a numeric ground truth is not a finite non-zero
            number; a prediction is neither a string nor a number.
    """
    if not predictions:
        raise InputError("no predictions to score")
    if questions is None:
        for p in predictions:
            if "question_type" not in p or "ground_truth" not in p:
                raise InputError("predictions carry no question_type / ground_truth: pass the questions "
                                 "(--questions SCENE or vqa.jsonl)")
        questions = predictions
    if not questions:
        raise InputError("no questions to score against")
    with_scene = len({q.get("scene_name") if isinstance(q.get("scene_name"), str) else None
                      for q in questions}) > 1
    qmap = {}
    for q in questions:
        if "id" not in q:
            raise InputError("a question row has no id")
        k = _key(q, with_scene, "question")
        if k in qmap:
            raise InputError(f"question id {k} is not unique")
        if not isinstance(q.get("question_type"), str):
            raise InputError(f"question {k}: no question_type")
        if not is_multiple_choice(q):
            ground_truth_number(q)
        qmap[k] = q
    preds = {}
    for p in predictions:
        if "id" not in p:
            raise InputError("a prediction row has no id")
        k = _key(p, with_scene, "prediction")
        if k not in qmap:
            raise InputError(f"prediction for unknown question {k}")
        preds[k] = _pred_of(p)
    per: dict[str, dict] = {}
    scores_all = []
    for k, q in qmap.items():
        t = q["question_type"]
        d = per.setdefault(t, {"n": 0, "n_missing": 0, "metric": "accuracy" if is_multiple_choice(q) else "MRA",
                               "_s": []})
        d["n"] += 1
        if preds.get(k) is None:
            d["n_missing"] += 1
            s = 0.0
        else:
            s = score_row(q, preds[k], lenient)
        d["_s"].append(s)
        scores_all.append(s)
    for d in per.values():
        d["score"] = round(float(np.mean(d.pop("_s"))), 6)
    per = dict(sorted(per.items()))
    merged = {t: d["score"] for t, d in per.items() if t not in DIRECTION_TYPES}
    rel_dir = sum(per[t]["score"] if t in per else 0.0 for t in DIRECTION_TYPES) / 3.0
    merged["object_rel_direction"] = rel_dir
    has_dir = any(t in per for t in DIRECTION_TYPES)
    return {"per_type": per, "object_rel_direction": round(rel_dir, 6) if has_dir else None,
            "overall": round(float(np.mean(list(merged.values()))), 6),
            "overall_micro": round(float(np.mean(scores_all)), 6),
            "n": len(scores_all), "rules": "lenient" if lenient else "vsibench"}


def load_questions(path_or_scene: str | Path) -> list[dict]:
    """Question rows from a ``vqa.jsonl`` file or a scene folder (``SCENE/tasks/vqa.jsonl``).

    Raises:
        InputError: as :func:`read_jsonl`.
    """
    from ..scene import Scene

    p = Path(path_or_scene)
    if p.is_dir():
        p = Scene(p).task_path("vqa.jsonl")
    return read_jsonl(p, "questions")


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
        if is_multiple_choice(qs[0]):
            c = Counter(str(q["ground_truth"]) for q in qs)
            guess[t] = "A" if kind == "first" else sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        else:
            guess[t] = "0" if kind == "first" else f"{np.mean([float(q['ground_truth']) for q in qs]):.4f}"
    return [{"id": q["id"], "scene_name": q.get("scene_name"), "prediction": guess[q["question_type"]]}
            for q in questions]

"""VSI-Bench scoring: MRA and exact match on known predictions, with exact expected numbers."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vid2scene.cli import app
from vid2scene.errors import InputError
from vid2scene.tasks import eval_vqa as ev


@pytest.mark.parametrize("pred,target,mra", [
    (1.0, 1.0, 1.0),
    (1.2, 1.0, 0.6),    # relative error 0.2 < 1-θ for θ = .50 … .75 (six of ten); θ = .80 is not strict
    (0.96, 1.0, 1.0),   # 0.04 < 0.05
    (0.94, 1.0, 0.9),   # 0.06: all but θ = .95
    (1.5, 1.0, 0.0),    # 0.5 is not < 0.5
    (1.49, 1.0, 0.1),
    (30.0, 20.0, 0.0),
    (22.0, 20.0, 0.8),  # 0.1 < 1-θ for θ ≤ .85
    (-3.0, 2.0, 0.0),
])
def test_mean_relative_accuracy(pred, target, mra):
    assert ev.mean_relative_accuracy(pred, target) == pytest.approx(mra, abs=1e-12)


def test_parsers():
    assert [ev.parse_letter(p) for p in ("B", "b.", "B. couch", " (C) ", "", None)] == ["B", "B", "B", "C", None, None]
    assert [ev.parse_number(p) for p in ("2.5", "2.5 m", "about 3 metres", 4, "none")] == [2.5, 2.5, 3.0, 4.0, None]


QUESTIONS = [
    {"id": 0, "question_type": "object_rel_distance", "options": ["A. chair", "B. tv"], "ground_truth": "A"},
    {"id": 1, "question_type": "object_rel_distance", "options": ["A. chair", "B. tv"], "ground_truth": "B"},
    {"id": 2, "question_type": "object_rel_direction_easy", "options": ["A. left", "B. right"], "ground_truth": "A"},
    {"id": 3, "question_type": "object_rel_direction_medium", "options": ["A. left", "B. right", "C. back"],
     "ground_truth": "B"},
    {"id": 4, "question_type": "object_rel_direction_hard", "options": ["A. front-left", "B. front-right",
                                                                      "C. back-left", "D. back-right"],
     "ground_truth": "C"},
    {"id": 5, "question_type": "object_abs_distance", "options": None, "ground_truth": "2.0"},
    {"id": 6, "question_type": "object_abs_distance", "options": None, "ground_truth": "1.0"},
]
PREDICTIONS = [
    {"id": 0, "prediction": "A. chair"},   # right
    {"id": 1, "prediction": "A"},          # wrong
    {"id": 2, "prediction": "a"},          # right
    {"id": 3, "prediction": "B."},         # right
    # id 4 missing -> 0
    {"id": 5, "prediction": "2.2"},        # MRA 0.8
    {"id": 6, "prediction": "abc"},        # unparsable -> 0
]


def test_evaluate_known_predictions():
    res = ev.evaluate(PREDICTIONS, QUESTIONS)
    per = res["per_type"]
    assert per["object_rel_distance"]["score"] == pytest.approx(0.5)
    assert per["object_abs_distance"]["score"] == pytest.approx(0.4) and per["object_abs_distance"]["metric"] == "MRA"
    assert per["object_rel_direction_hard"] == {"n": 1, "n_missing": 1, "metric": "accuracy", "score": 0.0}
    assert res["object_rel_direction"] == pytest.approx(2 / 3, abs=1e-6)
    assert res["overall"] == pytest.approx((0.5 + 0.4 + 2 / 3) / 3, abs=1e-6)
    assert res["overall_micro"] == pytest.approx(3.8 / 7, abs=1e-6)
    assert res["n"] == 7


def test_evaluate_inline_questions_and_errors():
    rows = [dict(q, prediction=p) for q, p in zip(QUESTIONS, ["A", "B", "A", "B", "C", "2.0", "1.0"])]
    res = ev.evaluate(rows)
    assert res["overall"] == 1.0 and res["overall_micro"] == 1.0
    with pytest.raises(InputError, match="unknown question"):
        ev.evaluate([{"id": 99, "prediction": "A"}], QUESTIONS)
    with pytest.raises(InputError, match="pass the questions"):
        ev.evaluate([{"id": 0, "prediction": "A"}])


def test_baselines_move_the_numbers():
    qs = QUESTIONS + [{"id": 7, "question_type": "object_rel_distance", "options": ["A. chair", "B. tv"],
                       "ground_truth": "A"}]
    freq = ev.evaluate(ev.baseline_predictions(qs, "frequency"), qs)
    first = ev.evaluate(ev.baseline_predictions(qs, "first"), qs)
    assert freq["per_type"]["object_rel_distance"]["score"] == pytest.approx(2 / 3)
    # mean of 2.0 and 1.0 = 1.5: MRA 0.0 vs GT 1.0 (0.5 is not < 0.5), 0.5 vs GT 2.0 (0.25 < 1-θ for θ ≤ .70)
    assert freq["per_type"]["object_abs_distance"]["score"] == pytest.approx((0.0 + 0.5) / 2)
    assert first["per_type"]["object_abs_distance"]["score"] == 0.0


def test_cli_eval_vqa(tmp_path):
    qp, pp = tmp_path / "vqa.jsonl", tmp_path / "pred.jsonl"
    qp.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    pp.write_text("".join(json.dumps(p) + "\n" for p in PREDICTIONS))
    r = CliRunner().invoke(app, ["eval-vqa", str(pp), "--questions", str(qp), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["overall_micro"] == pytest.approx(3.8 / 7, abs=1e-6)
    r = CliRunner().invoke(app, ["eval-vqa", str(pp), "--questions", str(qp)])
    assert r.exit_code == 0 and "object_rel_distance" in r.stdout and "overall" in r.stdout
    r = CliRunner().invoke(app, ["eval-vqa", str(tmp_path / "missing.jsonl")])
    assert r.exit_code == 3

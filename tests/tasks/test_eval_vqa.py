"""VSI-Bench scoring: what its official scorer (lmms-eval task ``vsibench``) gives on known predictions, its edge
cases (answer normalisation, ``<=`` at the thresholds, the direction-type aggregation) and the input checks."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vid2scene.cli import app
from vid2scene.errors import InputError
from vid2scene.tasks import eval_vqa as ev


@pytest.mark.parametrize("pred,target,mra", [
    (1.0, 1.0, 1.0),
    (1.0, 2.0, 0.1),    # relative error exactly 0.5: the official scorer counts θ = .50 (<=)
    (1.5, 1.0, 0.1),    # likewise
    (1.49, 1.0, 0.1),
    (1.51, 1.0, 0.0),
    (0.96, 1.0, 1.0),   # 0.04 <= 0.05
    (0.94, 1.0, 0.9),   # 0.06: all but θ = .95
    (22.0, 20.0, 0.9),  # 0.1 <= 1 − θ for θ = .50 … .90
    (-3.0, 2.0, 0.0),
    (None, 2.0, 0.0),
    (float("nan"), 2.0, 0.0),
])
def test_mean_relative_accuracy(pred, target, mra):
    assert ev.mean_relative_accuracy(pred, target) == pytest.approx(mra, abs=1e-12)


def test_ten_thresholds_from_half_to_095():
    assert len(ev.THRESHOLDS) == 10
    assert ev.THRESHOLDS[0] == 0.5 and ev.THRESHOLDS[-1] == pytest.approx(0.95)
    assert ev.THRESHOLDS[1] - ev.THRESHOLDS[0] == pytest.approx(0.05)


NUM_Q = {"id": 0, "question_type": "object_counting", "options": None, "ground_truth": "266"}
DIST_Q = {"id": 1, "question_type": "object_abs_distance", "options": None, "ground_truth": "36.6"}
MC_Q = {"id": 2, "question_type": "object_rel_distance", "options": ["A. x", "B. y", "C. z"], "ground_truth": "C"}


@pytest.mark.parametrize("question,pred,official,lenient", [
    (NUM_Q, "266", 1.0, 1.0),
    (NUM_Q, "266.", 1.0, 1.0),          # trailing dot removed
    (NUM_Q, "266 objects", 1.0, 1.0),   # first space-separated piece
    (NUM_Q, "  266", 0.0, 1.0),         # leading spaces: the first piece is empty
    (NUM_Q, "about 266", 0.0, 1.0),
    (DIST_Q, "36.6m", 0.0, 1.0),        # float("36.6m") fails
    (DIST_Q, "36.6 m", 1.0, 1.0),
    (MC_Q, "C", 1.0, 1.0),
    (MC_Q, "c.", 1.0, 1.0),             # case-insensitive, trailing dot removed
    (MC_Q, "C. z", 1.0, 1.0),
    (MC_Q, "(C)", 0.0, 1.0),            # parentheses are not stripped
    (MC_Q, " C", 0.0, 1.0),
])
def test_official_answer_normalisation_and_lenient_option(question, pred, official, lenient):
    assert ev.score_row(question, pred) == official
    assert ev.score_row(question, pred, lenient=True) == lenient


def test_normalise_answer():
    assert [ev.normalise_answer(p) for p in ("B. couch", "  266", "(C)", "36.6m", "2.5 m", "x.")] == \
        ["B", "", "(C)", "36.6m", "2.5", "x"]
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
    {"id": 5, "prediction": "2.2"},        # relative error 0.1: MRA 0.9
    {"id": 6, "prediction": "abc"},        # not a number -> 0
]


def test_evaluate_known_predictions():
    res = ev.evaluate(PREDICTIONS, QUESTIONS)
    per = res["per_type"]
    assert per["object_rel_distance"]["score"] == pytest.approx(0.5)
    assert per["object_abs_distance"]["score"] == pytest.approx(0.45) and per["object_abs_distance"]["metric"] == "MRA"
    assert per["object_rel_direction_hard"] == {"n": 1, "n_missing": 1, "metric": "accuracy", "score": 0.0}
    assert res["object_rel_direction"] == pytest.approx(2 / 3, abs=1e-6)
    assert res["overall"] == pytest.approx((0.5 + 0.45 + 2 / 3) / 3, abs=1e-6)
    assert res["overall_micro"] == pytest.approx(3.9 / 7, abs=1e-6)
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
    # mean of 2.0 and 1.0 = 1.5: vs GT 1.0 relative error 0.5 (θ = .50 only: 0.1), vs GT 2.0 0.25 (θ ≤ .75: 0.6)
    assert freq["per_type"]["object_abs_distance"]["score"] == pytest.approx((0.1 + 0.6) / 2)
    assert first["per_type"]["object_abs_distance"]["score"] == 0.0


def test_cli_eval_vqa(tmp_path):
    qp, pp = tmp_path / "vqa.jsonl", tmp_path / "pred.jsonl"
    qp.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    pp.write_text("".join(json.dumps(p) + "\n" for p in PREDICTIONS))
    r = CliRunner().invoke(app, ["eval-vqa", str(pp), "--questions", str(qp), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["overall_micro"] == pytest.approx(3.9 / 7, abs=1e-6)
    r = CliRunner().invoke(app, ["eval-vqa", str(pp), "--questions", str(qp)])
    assert r.exit_code == 0 and "object_rel_distance" in r.stdout and "overall" in r.stdout
    r = CliRunner().invoke(app, ["eval-vqa", str(tmp_path / "missing.jsonl")])
    assert r.exit_code == 3


def test_direction_aggregate_divides_by_three_as_the_official_scorer():
    qs = [dict(QUESTIONS[2]), dict(QUESTIONS[0])]  # one direction type present (easy), one other type
    res = ev.evaluate([{"id": 2, "prediction": "A"}, {"id": 0, "prediction": "A"}], qs)
    assert res["object_rel_direction"] == pytest.approx(1 / 3, abs=1e-6)  # (1 + 0 + 0) / 3
    assert res["overall"] == pytest.approx((1 + 1 / 3) / 2, abs=1e-6)
    none = ev.evaluate([{"id": 0, "prediction": "A"}], [dict(QUESTIONS[0])])
    assert none["object_rel_direction"] is None and none["overall"] == pytest.approx(0.5)  # the official 0 entry


@pytest.mark.parametrize("content,match", [
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", "not a UTF-8"),
    (b"", "empty file"),
    (b"\n\n", "empty file"),
    (b"[1, 2]\n", "JSON object"),
    (b'{"id": [1, 2], "prediction": "A"}\n', "string or an integer"),
    (b'{"id": 0, "prediction": ["A"]}\n', "string or a number"),
])
def test_bad_prediction_files_are_input_errors(tmp_path, content, match):
    qp, pp = tmp_path / "vqa.jsonl", tmp_path / "pred.jsonl"
    qp.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    pp.write_bytes(content)
    with pytest.raises(InputError, match=match):
        ev.evaluate(ev.read_jsonl(pp), ev.load_questions(qp))
    r = CliRunner().invoke(app, ["eval-vqa", str(pp), "--questions", str(qp)])
    assert r.exit_code == 3 and "Traceback" not in r.output
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr


@pytest.mark.parametrize("gt,match", [("abc", "not a number"), ("0", "ground truth is 0"), (None, "not a number"),
                                      ("inf", "not a number"), ([2], "not a number")])
def test_bad_ground_truth_is_an_input_error(tmp_path, gt, match):
    rows = [{"id": 0, "question_type": "object_counting", "options": None, "ground_truth": gt, "prediction": "2"}]
    with pytest.raises(InputError, match=match):
        ev.evaluate(rows)
    pp = tmp_path / "pred.jsonl"
    pp.write_text(json.dumps(rows[0]) + "\n")
    r = CliRunner().invoke(app, ["eval-vqa", str(pp)])
    assert r.exit_code == 3 and "Traceback" not in r.output


def test_cli_lenient_flag_and_markup_in_types(tmp_path):
    rows = [dict(DIST_Q, prediction="36.6m"), {"id": 9, "question_type": "odd [/] type", "options": ["A. a"],
                                                "ground_truth": "A", "prediction": "(A)"}]
    pp = tmp_path / "pred.jsonl"
    pp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    strict = CliRunner().invoke(app, ["eval-vqa", str(pp), "--json"])
    lenient = CliRunner().invoke(app, ["eval-vqa", str(pp), "--json", "--lenient"])
    assert strict.exit_code == lenient.exit_code == 0, strict.output
    assert json.loads(strict.stdout)["overall_micro"] == 0.0 and json.loads(lenient.stdout)["overall_micro"] == 1.0
    table = CliRunner().invoke(app, ["eval-vqa", str(pp)])
    assert table.exit_code == 0 and "odd [/] type" in table.stdout

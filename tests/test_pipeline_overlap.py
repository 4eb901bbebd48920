"""``detect`` beside ``sfm``: the pipeline runs detect in a low-priority background thread while sfm maps
(pipeline.overlap_detect). The two must really overlap, both be recorded, detect run at nice 19, and a
failure of either be reported like a failure of a stage run alone (the earlier stage's error first).

The stages here are stand-ins (``stage_module`` patched) run over a scene that went through
``ingest .. keyframes`` for real, so the bookkeeping is the real one and the tests take seconds.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from types import SimpleNamespace

import pytest

from tests.test_pipeline import fast_cfg, moving_clip, run
from vid2scene import pipeline, progress
from vid2scene.errors import StageFailed
from vid2scene.scene import Scene
from vid2scene.stage import STAGES, StageResult

pytest.importorskip("av")


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    """No bars, and the overlap at its default (on) unless a test sets the variable."""
    monkeypatch.delenv(pipeline.OVERLAP_ENV, raising=False)
    progress.set_enabled(False)
    yield
    progress.set_enabled(True)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return moving_clip(tmp_path_factory.mktemp("clip") / "moving.mp4")


@pytest.fixture(scope="module")
def keyframed(clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("kf") / "scene"
    progress.set_enabled(False)
    report, _ = run(clip, root, fast_cfg(), until="keyframes")
    assert report.error is None
    return root


@pytest.fixture
def scene_dir(keyframed, tmp_path):
    dst = tmp_path / "scene"
    shutil.copytree(keyframed, dst, copy_function=shutil.copy2)
    return dst


def _fake_stages(monkeypatch, log: dict, detect_error=None, sfm_error=None):
    """detect and sfm as stand-ins that sleep and log when they ran, in which thread and at what priority."""
    real = pipeline.stage_module

    def stage(name, seconds, error):
        def run_(scene, cfg):
            log[name] = {"start": time.perf_counter(), "thread": threading.current_thread().name,
                         "nice": os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
                         if hasattr(os, "getpriority") else None,
                         "progress": progress.enabled()}
            time.sleep(seconds)
            log[name]["end"] = time.perf_counter()
            if error is not None:
                raise error
            return StageResult(qc={"fake": name}, warnings=[], summary=f"{name} ok")
        return SimpleNamespace(OUTPUTS=[], run=run_, NAME=name)

    fakes = {"detect": stage("detect", 0.6, detect_error), "sfm": stage("sfm", 0.3, sfm_error)}
    monkeypatch.setattr(pipeline, "stage_module", lambda name: fakes.get(name) or real(name))


def test_overlap_only_when_sfm_follows_and_does_not_need_the_boxes(monkeypatch):
    cfg = fast_cfg()
    assert pipeline.overlap_detect(list(STAGES), cfg)
    assert not pipeline.overlap_detect(list(STAGES[: STAGES.index("detect") + 1]), cfg)  # --until detect
    assert not pipeline.overlap_detect(list(STAGES), fast_cfg(sfm={"mask_people": True}))
    monkeypatch.setenv(pipeline.OVERLAP_ENV, "0")
    assert not pipeline.overlap_detect(list(STAGES), cfg)


def test_detect_runs_beside_sfm_at_lowest_priority_and_both_are_recorded(scene_dir, clip, monkeypatch):
    progress.set_enabled(True)  # the background stage must still be quiet
    log: dict = {}
    _fake_stages(monkeypatch, log)
    report, seen = run(clip, scene_dir, fast_cfg(), until="sfm")
    assert report.error is None and seen["detect"] == seen["sfm"] == "run"
    assert report.actions["detect"] == report.actions["sfm"] == "ran"
    assert report.results["detect"].qc == {"fake": "detect"}
    d, s = log["detect"], log["sfm"]
    assert d["start"] < s["end"] and s["start"] < d["end"], log  # they overlapped
    assert d["thread"] != s["thread"] == threading.current_thread().name
    assert d["progress"] is False and s["progress"] is True
    if d["nice"] is not None:
        assert d["nice"] == 19 and s["nice"] == os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    m = Scene(scene_dir).read_manifest()
    assert m["stages"]["detect"]["status"] == m["stages"]["sfm"]["status"] == "complete"
    assert m["qc"]["detect"] == {"fake": "detect"} and m["failure"] is None


def test_without_overlap_the_stages_run_one_after_the_other(scene_dir, clip, monkeypatch):
    monkeypatch.setenv(pipeline.OVERLAP_ENV, "0")
    log: dict = {}
    _fake_stages(monkeypatch, log)
    report, _ = run(clip, scene_dir, fast_cfg(), until="sfm")
    assert report.error is None
    assert log["detect"]["end"] <= log["sfm"]["start"]
    assert log["detect"]["thread"] == log["sfm"]["thread"]


def _failing_run(scene_dir, clip, monkeypatch, match: str, **errors) -> tuple[dict, dict]:
    """Run up to sfm with the stand-ins raising ``errors``; expect the error ``match``; return (log, manifest)."""
    log: dict = {}
    _fake_stages(monkeypatch, log, **errors)
    with pytest.raises(StageFailed, match=match):
        run(clip, scene_dir, fast_cfg(), until="sfm")
    return log, Scene(scene_dir).read_manifest()


def test_a_detect_failure_beside_sfm_fails_the_scene_at_detect(scene_dir, clip, monkeypatch):
    _, m = _failing_run(scene_dir, clip, monkeypatch, "model file unreadable",
                        detect_error=StageFailed("detect", "model file unreadable"))
    assert m["status"] == "failed"
    assert m["failure"]["stage"] == "detect"  # although sfm, started later, cleared the record when it began
    assert m["stages"]["detect"]["status"] == "failed"
    assert m["stages"].get("depth", {}).get("status") != "complete"


def test_an_sfm_failure_beside_detect_keeps_detect_and_fails_at_sfm(scene_dir, clip, monkeypatch):
    log, m = _failing_run(scene_dir, clip, monkeypatch, "no model", sfm_error=StageFailed("sfm", "no model"))
    assert m["status"] == "failed" and m["failure"]["stage"] == "sfm"
    assert m["stages"]["detect"]["status"] == "complete"  # waited for, and kept
    assert log["detect"]["end"] > log["sfm"]["end"]  # detect was still running when sfm failed

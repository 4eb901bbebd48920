"""The pipeline runner: resume after a crash, skip what is complete, re-run on config change, refuse a scene
folder made from another input, record failures, atomic writes (DESIGN.md: "The scene folder").

A short synthetic clip (a window sliding across a large random texture, 9 px per frame) goes through
``ingest .. keyframes`` once per module (~2 s); each test works on a copy of that scene folder.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.fixtures.room import encode_clip, random_texture
from vid2scene import io as v2s_io
from vid2scene import progress
from vid2scene.config import PipelineConfig
from vid2scene.errors import InputError, RejectedInput, StageFailed
from vid2scene.pipeline import STAGES, run_pipeline
from vid2scene.scene import Scene

av = pytest.importorskip("av")

UNTIL = "keyframes"
EARLY = ["ingest", "shots", "quality"]
EARLY_FILES = ["frames_all", "video.json", "shots.json", "quality.json"]


@pytest.fixture(autouse=True)
def _quiet():
    progress.set_enabled(False)
    yield
    progress.set_enabled(True)


# ---- clips -----------------------------------------------------------------------------------------------------

_encode = encode_clip
_texture = random_texture


def moving_clip(path: Path, n: int = 40, w: int = 320, h: int = 240, step: int = 9, seed: int = 0) -> Path:
    """A camera panning across a textured plane: a ``w×h`` window sliding ``step`` px per frame, 10 fps."""
    big = _texture(h + 20, w + n * step + 20, seed)
    return _encode(path, [big[10:10 + h, i * step: i * step + w] for i in range(n)])


def static_clip(path: Path, n: int = 60, w: int = 320, h: int = 240, noise: float = 10.0, seed: int = 0) -> Path:
    """A static camera: one picture plus sensor-like noise, ``n`` frames at 10 fps."""
    rng = np.random.default_rng(seed)
    base = _texture(h, w, seed).astype(np.float32)
    return _encode(path, [np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
                          for _ in range(n)])


def fast_cfg(**sections) -> PipelineConfig:
    data = {"shots": {"backend": "adaptive"}}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return PipelineConfig.model_validate(data)


# ---- helpers ---------------------------------------------------------------------------------------------------

def snapshot(root: Path, rels=None) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` for every file under ``root`` (or under ``rels`` in it)."""
    out = {}
    tops = [root / r for r in rels] if rels else [root]
    for top in tops:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for p in files:
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def run(src: Path, root: Path, cfg: PipelineConfig, until: str | None = UNTIL, overwrite: bool = False):
    """Run the pipeline; returns (report, {stage: "run"|"skip"}) from the ``on_stage`` callbacks."""
    seen: dict[str, str] = {}
    report = run_pipeline(src, root, cfg, until=until, overwrite=overwrite,
                          on_stage=lambda name, action, why: seen.__setitem__(name, action))
    return report, seen


def temp_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp." in p.name]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {"moving": moving_clip(d / "moving.mp4"), "other": moving_clip(d / "other.mp4", seed=7),
            "static": static_clip(d / "static.mp4")}


@pytest.fixture(scope="module")
def base_scene(clips, tmp_path_factory) -> Path:
    """The moving clip run through ``ingest .. keyframes``."""
    progress.set_enabled(False)
    root = tmp_path_factory.mktemp("base") / "scene"
    report, seen = run(clips["moving"], root, fast_cfg())
    assert seen == {s: "run" for s in STAGES[: STAGES.index(UNTIL) + 1]}
    assert report.error is None
    return root


@pytest.fixture
def scene_copy(base_scene, tmp_path) -> Path:
    dst = tmp_path / "scene"
    shutil.copytree(base_scene, dst, copy_function=shutil.copy2)  # keeps mtimes
    return dst


# ---- a fresh run -----------------------------------------------------------------------------------------------

def test_fresh_run_writes_every_asset_and_status(base_scene):
    scene = Scene(base_scene)
    m = scene.read_manifest()
    for s in ["ingest", "shots", "quality", "keyframes"]:
        st = m["stages"][s]
        assert st["status"] == "complete"
        assert st["config_hash"] and st["seconds"] >= 0 and st["finished"]
    assert m["status"] == "incomplete"  # sfm has not run: never "complete"
    assert m["failure"] is None
    kf = scene.keyframes()["keyframes"]
    assert len(kf) >= 10
    assert sorted(p.name for p in scene.frames_dir.glob("*.jpg")) == sorted(f"{k['source_frame']:06d}.jpg" for k in kf)
    assert temp_leftovers(base_scene) == []


def test_unchanged_rerun_skips_everything_and_writes_nothing_but_the_manifest(scene_copy, clips):
    before = snapshot(scene_copy, EARLY_FILES + ["frames", "keyframes.json"])
    stages_before = Scene(scene_copy).read_manifest()["stages"]
    report, seen = run(clips["moving"], scene_copy, fast_cfg())
    assert seen == {s: "skip" for s in EARLY + ["keyframes"]}
    assert set(report.actions.values()) == {"skipped"}
    assert snapshot(scene_copy, EARLY_FILES + ["frames", "keyframes.json"]) == before
    assert Scene(scene_copy).read_manifest()["stages"] == stages_before


# ---- resume after a crash --------------------------------------------------------------------------------------

@pytest.mark.parametrize("crashed", ["keyframes", "quality"])
def test_crashed_stage_reruns_and_its_half_written_output_is_not_trusted(scene_copy, clips, crashed):
    scene = Scene(scene_copy)
    earlier = STAGES[: STAGES.index(crashed)]
    earlier_files = EARLY_FILES[: {"quality": 3, "keyframes": 4}[crashed]]
    before = snapshot(scene_copy, earlier_files)
    stage_records = {s: scene.stage_info(s) for s in earlier}

    # What a kill mid-stage leaves: status "running", junk in its output folder, a half-written JSON.
    scene.update_manifest(lambda m: m["stages"][crashed].update(status="running", finished=None))
    if crashed == "keyframes":
        (scene.frames_dir / "999999.jpg").write_bytes(b"\xff\xd8 half a jpeg")
        scene.keyframes_json.write_text('{"keyframes": [{"source_fr')
    else:
        scene.quality_json.write_text('{"frames": [')

    report, seen = run(clips["moving"], scene_copy, fast_cfg())
    assert all(seen[s] == "skip" for s in earlier)
    assert all(seen[s] == "run" for s in STAGES[STAGES.index(crashed): STAGES.index(UNTIL) + 1])
    assert snapshot(scene_copy, earlier_files) == before  # finished stages were not redone
    assert {s: scene.stage_info(s) for s in earlier} == stage_records
    assert not (scene.frames_dir / "999999.jpg").exists()
    assert scene.is_complete(crashed) and scene.is_complete(UNTIL)
    assert len(scene.keyframes()["keyframes"]) >= 10
    json.loads(scene.quality_json.read_text())


def test_killed_process_resumes(scene_copy, clips, tmp_path):
    """A real SIGKILL in the middle of ``keyframes`` (after it wrote part of ``frames/``), then a re-run."""
    cfg = fast_cfg(keyframes={"min_disparity": 0.06})  # a config change makes keyframes (only) re-run
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal
        from vid2scene import keyframes, progress
        from vid2scene.config import PipelineConfig
        from vid2scene.pipeline import run_pipeline

        def dies_mid_stage(scene, config):
            scene.frames_dir.mkdir(parents=True, exist_ok=True)
            (scene.frames_dir / "000000.jpg").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)

        keyframes.run = dies_mid_stage
        progress.set_enabled(False)
        cfg = PipelineConfig.model_validate_json({cfg.model_dump_json()!r})
        run_pipeline({str(clips["moving"])!r}, {str(scene_copy)!r}, cfg, until="keyframes")
    """))
    before = snapshot(scene_copy, EARLY_FILES)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    scene = Scene(scene_copy)
    assert scene.stage_status("keyframes") == "running"
    assert scene.read_manifest()["status"] != "complete"
    assert not scene.keyframes_json.exists()

    report, seen = run(clips["moving"], scene_copy, cfg)
    assert seen == {"ingest": "skip", "shots": "skip", "quality": "skip", "keyframes": "run"}
    assert snapshot(scene_copy, EARLY_FILES) == before
    assert scene.is_complete("keyframes")
    assert scene.keyframes()["min_disparity"] == pytest.approx(0.06)
    assert (scene.frames_dir / "000000.jpg").stat().st_size > 100  # the real keyframe, not the junk
    assert temp_leftovers(scene_copy) == []


# ---- config changes --------------------------------------------------------------------------------------------

def test_config_change_reruns_that_stage_and_later_ones(scene_copy, clips):
    before = snapshot(scene_copy, ["frames_all", "video.json", "shots.json"])
    report, seen = run(clips["moving"], scene_copy, fast_cfg(quality={"blur_min_var": 5.0}))
    assert seen == {"ingest": "skip", "shots": "skip", "quality": "run", "keyframes": "run"}
    assert snapshot(scene_copy, ["frames_all", "video.json", "shots.json"]) == before
    scene = Scene(scene_copy)
    assert scene.stage_info("quality")["config"]["blur_min_var"] == 5.0

    # Back to the first config: quality differs again, so it and keyframes re-run; nothing else.
    _, seen = run(clips["moving"], scene_copy, fast_cfg())
    assert seen == {"ingest": "skip", "shots": "skip", "quality": "run", "keyframes": "run"}


def test_keyframes_config_change_reruns_only_keyframes(scene_copy, clips):
    before = snapshot(scene_copy, EARLY_FILES)
    _, seen = run(clips["moving"], scene_copy, fast_cfg(keyframes={"min_disparity": 0.04}))
    assert seen == {"ingest": "skip", "shots": "skip", "quality": "skip", "keyframes": "run"}
    assert snapshot(scene_copy, EARLY_FILES) == before
    assert Scene(scene_copy).keyframes()["min_disparity"] == pytest.approx(0.04)


def test_rerun_of_an_earlier_stage_makes_later_ones_stale(scene_copy, clips):
    cfg = fast_cfg(quality={"blur_min_var": 5.0})
    _, seen = run(clips["moving"], scene_copy, cfg, until="quality")
    assert seen == {"ingest": "skip", "shots": "skip", "quality": "run"}
    scene = Scene(scene_copy)
    assert scene.stage_status("keyframes") == "stale"  # built on the old quality.json: not complete any more
    _, seen = run(clips["moving"], scene_copy, cfg)
    assert seen == {"ingest": "skip", "shots": "skip", "quality": "skip", "keyframes": "run"}
    assert scene.is_complete("keyframes")


# ---- another input in the scene folder -------------------------------------------------------------------------

def test_scene_from_another_input_is_refused_and_left_alone(scene_copy, clips):
    before = snapshot(scene_copy)
    manifest_bytes = (scene_copy / "manifest.json").read_bytes()
    with pytest.raises(InputError, match="another input") as e:
        run(clips["other"], scene_copy, fast_cfg())
    assert "\n" not in str(e.value) and "--overwrite" in str(e.value)
    assert snapshot(scene_copy) == before
    assert (scene_copy / "manifest.json").read_bytes() == manifest_bytes


def test_overwrite_replaces_a_scene_from_another_input(scene_copy, clips):
    (scene_copy / "notes.txt").write_text("the user's own file")  # not vid2scene's: it stays
    (scene_copy / "frames_all" / "stray.jpg").write_bytes(b"old frame")  # inside a vid2scene folder: goes
    report, seen = run(clips["other"], scene_copy, fast_cfg(), overwrite=True)
    assert set(seen.values()) == {"run"}
    m = Scene(scene_copy).read_manifest()
    assert m["source"]["path"] == str(clips["other"].resolve())
    assert (scene_copy / "notes.txt").read_text() == "the user's own file"
    assert not (scene_copy / "frames_all" / "stray.jpg").exists()
    assert all(m["stages"][s]["status"] == "complete" for s in EARLY + ["keyframes"])


def test_overwrite_with_the_same_input_reruns_every_stage(scene_copy, clips):
    before = snapshot(scene_copy, ["video.json"])
    _, seen = run(clips["moving"], scene_copy, fast_cfg(), overwrite=True)
    assert set(seen.values()) == {"run"}
    assert snapshot(scene_copy, ["video.json"]) != before


def test_non_scene_folder_that_is_not_empty_is_refused(tmp_path, clips):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="not a scene folder"):
        run(clips["moving"], out, fast_cfg())
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "precious"
    # --overwrite replaces scenes, never a folder that is not one (it could be a home folder)
    with pytest.raises(InputError, match="not a scene folder"):
        run(clips["moving"], out, fast_cfg(), overwrite=True)
    assert (out / "thesis.tex").read_text() == "precious"


def test_same_input_moved_is_the_same_scene_and_read_from_its_new_path(tmp_path, clips):
    """Identity is the content (sha256), not the path: a renamed input resumes its scene, and a stage that
    re-runs reads the file where it is now."""
    old = tmp_path / "walk.mp4"
    shutil.copy2(clips["moving"], old)
    root = tmp_path / "scene"
    run(old, root, fast_cfg(), until="ingest")
    new = tmp_path / "renamed.mp4"
    old.rename(new)
    _, seen = run(new, root, fast_cfg(ingest={"max_fps": 5}), until="ingest")
    assert seen == {"ingest": "run"}
    m = Scene(root).read_manifest()
    assert m["source"]["path"] == str(new.resolve()) and m["stages"]["ingest"]["status"] == "complete"


def test_missing_input_creates_nothing(tmp_path):
    with pytest.raises(InputError, match="not found"):
        run(tmp_path / "nope.mp4", tmp_path / "scene", fast_cfg())
    assert not (tmp_path / "scene").exists()


# ---- failures --------------------------------------------------------------------------------------------------

def test_static_camera_is_rejected_and_recorded(tmp_path, clips):
    root = tmp_path / "static"
    with pytest.raises(RejectedInput, match="insufficient camera motion") as e:
        run(clips["static"], root, fast_cfg(), until=None)
    assert "\n" not in str(e.value)
    scene = Scene(root)
    m = scene.read_manifest()
    assert m["status"] == "failed"
    f = m["failure"]
    assert f["stage"] in ("quality", "keyframes")
    assert "insufficient camera motion" in f["reason"]
    assert f["error_type"] == "RejectedInput" and f["exit_code"] == 3
    st = m["stages"][f["stage"]]
    assert st["status"] == "failed" and "insufficient camera motion" in st["reason"]
    # Nothing after the failed stage ran, and its outputs do not exist: nothing looks complete that is not.
    after = STAGES[STAGES.index(f["stage"]) + 1:]
    assert all(m["stages"].get(s, {}).get("status") != "complete" for s in after)
    assert not scene.keyframes_json.exists() and not scene.cameras_json.exists()
    assert temp_leftovers(root) == []

    # A second try fails the same way (a failed stage is re-run, never skipped) and is still not complete.
    with pytest.raises(RejectedInput):
        run(clips["static"], root, fast_cfg(), until=None)
    m2 = scene.read_manifest()
    assert m2["status"] == "failed" and m2["failure"]["stage"] == f["stage"]
    assert all(m2["stages"][s]["status"] == "complete" for s in STAGES[: STAGES.index(f["stage"])])


def test_internal_error_becomes_stage_failed_with_traceback(scene_copy, clips, monkeypatch):
    from vid2scene import keyframes

    def broken(scene, config):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(keyframes, "run", broken)
    with pytest.raises(StageFailed, match="keyframes: internal error ZeroDivisionError: boom") as e:
        run(clips["moving"], scene_copy, fast_cfg(keyframes={"min_disparity": 0.045}))
    assert e.value.exit_code == 4 and "\n" not in str(e.value)
    m = Scene(scene_copy).read_manifest()
    assert m["status"] == "failed"
    assert m["failure"]["stage"] == "keyframes" and m["failure"]["exit_code"] == 4
    assert m["stages"]["keyframes"]["status"] == "failed"
    assert "ZeroDivisionError" in (scene_copy / "logs" / "keyframes.traceback.txt").read_text()
    assert not (scene_copy / "keyframes.json").exists()  # the old result was removed before the re-run

    # Fixed: the next run clears the failure.
    monkeypatch.undo()
    _, seen = run(clips["moving"], scene_copy, fast_cfg(keyframes={"min_disparity": 0.045}))
    assert seen["keyframes"] == "run"
    m = Scene(scene_copy).read_manifest()
    assert m["failure"] is None and m["status"] == "incomplete"


def test_unknown_stage_in_until_is_input_error(tmp_path, clips):
    with pytest.raises(InputError, match="unknown stage"):
        run(clips["moving"], tmp_path / "s", fast_cfg(), until="nonsense")


# ---- atomic writes ---------------------------------------------------------------------------------------------

def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "data.json"
    v2s_io.write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        v2s_io.write_json(target, {"a": object()})  # fails while serialising
    assert json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError):
        with v2s_io.atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise RuntimeError("killed while writing")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_atomic_path_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    img = np.zeros((4, 6, 3), np.uint8)
    with v2s_io.atomic_path(tmp_path / "x.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".x.png.tmp.")
        assert cv2.imwrite(str(tmp), img)
    assert cv2.imread(str(tmp_path / "x.png")).shape == (4, 6, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    """mkstemp creates 0600 files; scene assets must be readable like any file this process writes."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    v2s_io.write_json(tmp_path / "a.json", {"a": 1})
    v2s_io.write_ply_points(tmp_path / "p.ply", np.zeros((3, 3)))
    for name in ("a.json", "p.ply"):
        assert (tmp_path / name).stat().st_mode & 0o777 == plain.stat().st_mode & 0o777, name


def test_runs_leave_no_temp_files(scene_copy, clips):
    run(clips["moving"], scene_copy, fast_cfg(keyframes={"min_disparity": 0.045}))
    assert temp_leftovers(scene_copy) == []
    assert not [p for p in scene_copy.rglob("*") if p.name.startswith(".")]


def test_a_scene_completed_by_running_its_last_stage_alone_is_complete(scene_copy, monkeypatch):
    """run_stage on its own (as the benchmarks do) sets the scene-level status by the same rule as a pipeline
    run: complete once every stage is complete, incomplete while one is not."""
    from types import SimpleNamespace

    from vid2scene import pipeline
    from vid2scene.stage import StageResult

    scene = Scene(scene_copy)
    last = STAGES[-1]
    real_module = pipeline.stage_module
    fake = SimpleNamespace(OUTPUTS=[], run=lambda sc, cfg: StageResult(qc={}, warnings=[], summary="ok"))
    monkeypatch.setattr(pipeline, "stage_module", lambda name: fake if name == last else real_module(name))

    def pretend_done(skip):
        def mark(m):
            for s in STAGES[STAGES.index("keyframes") + 1:-1]:
                if s != skip:
                    m["stages"][s] = {"status": "complete"}
        return mark

    scene.update_manifest(pretend_done(skip="sfm"))
    pipeline.run_stage(scene, last, fast_cfg())
    assert scene.read_manifest()["status"] == "incomplete"  # sfm has not run
    scene.update_manifest(pretend_done(skip=None))
    pipeline.run_stage(scene, last, fast_cfg())
    assert scene.read_manifest()["status"] == "complete"

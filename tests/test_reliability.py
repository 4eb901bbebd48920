"""Regression tests for defects a reliability probe found: each reproduces the defect on a small synthetic
input and checks the fixed behaviour (user files survive ``--overwrite``, failed writes fail the stage, secrets
stay out of manifests, one run per scene folder, plain-text output, one-line OS errors, corrupt manifests,
bad intrinsics, non-regular inputs, relative build sources, honest resume reasons).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.clips import moving_clip
from vid2scene import io as v2s_io
from vid2scene import progress
from vid2scene.config import PipelineConfig, load_config
from vid2scene.errors import InputError, StageFailed
from vid2scene.pipeline import run_pipeline
from vid2scene.scene import LOCK, Scene, SceneLock, config_hash

av = pytest.importorskip("av")


def cli(*args):
    from typer.testing import CliRunner

    from vid2scene.cli import app

    try:
        r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    finally:
        progress.set_enabled(False)
    return r


def fast_cfg(**sections) -> PipelineConfig:
    data = {"shots": {"backend": "adaptive"}}
    data.update(sections)
    return PipelineConfig.model_validate(data)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return moving_clip(tmp_path_factory.mktemp("clips") / "walk.mp4", n=30)


# ---- 1. --overwrite removes only what vid2scene wrote; refuses when the input is inside ------------------------

def test_overwrite_refuses_when_the_input_lies_inside_the_scene_folder(tmp_path, clip):
    out = tmp_path / "scene"
    run_pipeline(clip, out, fast_cfg(), until="ingest")
    inside = out / "my_only_copy.mp4"
    inside.write_bytes(clip.read_bytes())
    with pytest.raises(InputError, match="inside the scene folder"):
        run_pipeline(inside, out, fast_cfg(), until="ingest", overwrite=True)
    assert inside.read_bytes() == clip.read_bytes()
    r = cli("run", inside, "-o", out, "--until", "ingest", "--overwrite", "-q")
    assert r.exit_code == 3 and inside.is_file()


def test_overwrite_keeps_files_vid2scene_did_not_write(tmp_path, clip):
    out = tmp_path / "scene"
    run_pipeline(clip, out, fast_cfg(), until="ingest")
    (out / "notes.txt").write_text("mine")
    (out / "raw").mkdir()
    (out / "raw" / "a.bin").write_bytes(b"x")
    other = moving_clip(tmp_path / "other.mp4", n=25, seed=3)
    run_pipeline(other, out, fast_cfg(), until="ingest", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "raw" / "a.bin").read_bytes() == b"x"
    assert Scene(out).read_manifest()["source"]["path"] == str(other.resolve())


# ---- 2 / 10. failed frame writes fail the stage with the OS reason ------------------------------------------------

def test_failed_frame_write_fails_ingest_with_the_os_reason(tmp_path, clip, monkeypatch):
    real_open = open

    def full_disk(path, mode="r", *a, **k):
        if "w" in mode and str(path).endswith(".jpg"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", full_disk)
    out = tmp_path / "scene"
    with pytest.raises(StageFailed) as e:
        run_pipeline(clip, out, fast_cfg(), until="ingest")
    assert "No space left on device" in str(e.value) and "NoneType" not in str(e.value)
    monkeypatch.undo()
    m = Scene(out).read_manifest()
    assert m["stages"]["ingest"]["status"] == "failed" and m["status"] == "failed"
    report = run_pipeline(clip, out, fast_cfg(), until="ingest")  # resume repairs it
    assert report.actions["ingest"] == "ran" and Scene(out).is_complete("ingest")
    n = len(Scene(out).frame_index())
    assert n == len(list((out / "frames_all").glob("*.jpg"))) and n > 0


def test_checked_image_write_raises_oserror_with_errno(tmp_path):
    import numpy as np

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root)")
        with pytest.raises(OSError) as e:
            v2s_io.write_image_rgb_checked(ro / "a.jpg", np.zeros((8, 8, 3), np.uint8))
        assert e.value.errno == errno.EACCES
    finally:
        ro.chmod(0o700)


# ---- 3. the API key is a secret ----------------------------------------------------------------------------------

def test_api_key_is_never_serialised_nor_hashed(tmp_path, monkeypatch):
    from vid2scene.dataset.build import open_dataset
    from vid2scene.instances.labellers import OpenAICompatLabeller

    cfg = load_config(overrides={"instances": {"openai": {"api_key": "sk-SECRET-123", "base_url": "http://x"}}})
    plain = load_config(overrides={"instances": {"openai": {"base_url": "http://x"}}})
    dumped = json.dumps(cfg.model_dump(mode="json"))
    assert "sk-SECRET-123" not in dumped and "sk-SECRET" not in repr(cfg)
    assert config_hash(cfg.instances.model_dump(mode="json")) == config_hash(plain.instances.model_dump(mode="json"))
    assert OpenAICompatLabeller(cfg.instances.openai)._key == "sk-SECRET-123"  # still used for the request
    monkeypatch.delenv("VID2SCENE_VLM_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert OpenAICompatLabeller(plain.instances.openai)._key == "sk-from-env"
    (tmp_path / "src.txt").write_text("a.mp4\n")
    ds = open_dataset(tmp_path / "ds", tmp_path / "src.txt", cfg, "local", None, ["ingest"])
    assert "sk-SECRET" not in (ds / "dataset.json").read_text()


# ---- 4. one run per scene folder --------------------------------------------------------------------------------

def test_a_second_run_refuses_while_the_folder_is_locked(tmp_path, clip):
    out = tmp_path / "scene"
    run_pipeline(clip, out, fast_cfg(), until="ingest")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (out / LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                            "started": "2026-01-01T00:00:00+00:00"}))
        before = (out / "manifest.json").read_bytes()
        r = cli("run", clip, "-o", out, "--until", "shots", "-q")
        assert r.exit_code == 3 and f"PID {holder.pid}" in r.stderr and socket.gethostname() in r.stderr
        assert (out / "manifest.json").read_bytes() == before and (out / "frames_all").is_dir()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and is taken over; released after the run
    report = run_pipeline(clip, out, fast_cfg(), until="shots")
    assert report.actions["shots"] == "ran" and not (out / LOCK).exists()


def test_lock_from_another_host_is_respected(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    with pytest.raises(InputError, match="elsewhere"):
        SceneLock(tmp_path).acquire()
    with SceneLock(tmp_path / "new") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(InputError, match="in use"):
            SceneLock(tmp_path / "new").acquire()
    assert not (tmp_path / "new" / LOCK).exists()


# ---- 5. user text is printed as plain text ------------------------------------------------------------------------

def test_markup_in_paths_and_messages_is_printed_verbatim(tmp_path, clip):
    odd = tmp_path / "a[/]b [bold]x"  # a folder "a[" holding "]b [bold]x"
    odd.mkdir(parents=True)
    (odd / "walk[").mkdir()
    src = odd / "walk[/].mp4"
    src.write_bytes(clip.read_bytes())
    out = odd / "scene[/]"
    r = cli("run", src, "-o", out, "--until", "ingest", "-q")
    assert r.exit_code == 0, r.stderr
    r = cli("info", out)
    assert r.exit_code == 0 and "walk[/].mp4" in r.stdout.replace("\n", "")
    r = cli("run", odd / "missing[/].mp4", "-o", out, "-q")
    assert r.exit_code == 3 and "missing[/].mp4" in r.stderr.replace("\n", "")
    from rich.console import Console

    from vid2scene import cli as cli_mod

    console = Console(record=True, width=300)
    console.print(cli_mod._stage_table({"status": "failed", "stages": {"depth": {
        "status": "failed", "reason": "pip install 'vid2scene[onnx]' or [fetch] or [ray]"}}}))
    text = console.export_text()
    assert "vid2scene[onnx]" in text and "[fetch]" in text and "[ray]" in text


# ---- 6. OS errors are input errors (exit 3, one line) -------------------------------------------------------------

def test_output_path_that_is_a_file_exits_3_in_one_line(tmp_path, clip):
    f = tmp_path / "taken"
    f.write_text("x")
    for out in (f, f / "sub"):
        r = cli("run", clip, "-o", out, "-q")
        assert r.exit_code == 3, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unwritable_parent_exits_3(tmp_path, clip, monkeypatch):
    real_mkdir = Path.mkdir

    def denied(self, *a, **k):  # what a read-only parent gives a non-root user
        if "ro" in self.parts:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", denied)
    r = cli("run", clip, "-o", tmp_path / "ro" / "scene", "-q")
    assert r.exit_code == 3 and "Permission denied" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---- 7. corrupt manifests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"{not json", b"[1, 2, 3]", b"\xff\xfe\x00binary", b'{"stages": [1]}'])
def test_corrupt_manifest_is_an_input_error_and_overwrite_recovers(tmp_path, clip, content):
    out = tmp_path / "scene"
    run_pipeline(clip, out, fast_cfg(), until="ingest")
    (out / "manifest.json").write_bytes(content)
    r = cli("info", out)
    assert r.exit_code == 3 and "manifest" in r.stderr and "Traceback" not in r.stderr
    r = cli("run", clip, "-o", out, "--until", "ingest", "-q")
    assert r.exit_code == 3 and "--overwrite" in r.stderr
    report = run_pipeline(clip, out, fast_cfg(), until="ingest", overwrite=True)
    assert report.actions["ingest"] == "ran" and Scene(out).read_manifest()["stages"]["ingest"]["status"] == "complete"


# ---- 9. intrinsics ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["nan,nan,nan,nan", "inf,500,320,240", "", "500,500,320", "-1,500,320,240"])
def test_bad_intrinsics_flag_exits_3(tmp_path, clip, text):
    r = cli("run", clip, "-o", tmp_path / "s", "--intrinsics", text, "-q")
    assert r.exit_code == 3 and "--intrinsics" in r.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("vals", [[-500, 500, 320, 240], [float("nan"), 500, 320, 240], [0, 1, 1, 1]])
def test_bad_known_intrinsics_in_config_are_rejected(vals):
    with pytest.raises(InputError, match="known_intrinsics"):
        load_config(overrides={"sfm": {"known_intrinsics": vals}})
    assert load_config(overrides={"sfm": {"known_intrinsics": [500, 500, 320, 240]}}).sfm.known_intrinsics


# ---- 10. non-regular inputs -----------------------------------------------------------------------------------

def test_non_regular_input_is_refused_without_reading(tmp_path):
    from vid2scene.ingest import describe_source

    with pytest.raises(InputError, match="not a regular file"):
        describe_source("/dev/zero")
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        describe_source(fifo)
    r = cli("run", "/dev/zero", "-o", tmp_path / "s", "-q")
    assert r.exit_code == 3


# ---- 11. relative source folders in build ------------------------------------------------------------------------

def test_build_with_a_relative_source_folder(tmp_path, clip, monkeypatch):
    from vid2scene.dataset.sources import read_sources

    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(clip.read_bytes())
    monkeypatch.chdir(tmp_path)
    srcs = read_sources("videos")
    assert [s.uri for s in srcs] == [str((tmp_path / "videos" / "a.mp4").resolve())]
    assert Path(srcs[0].uri).is_file()


def test_build_where_every_video_fails_exits_nonzero(tmp_path, monkeypatch):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"not a video")
    (tmp_path / "videos" / "b.mp4").write_bytes(b"not a video either")
    monkeypatch.chdir(tmp_path)
    r = cli("build", "videos", "-o", "dataset", "--until", "ingest", "-q")
    assert r.exit_code != 0
    assert "2 failed" in r.stdout and "videos/videos" not in r.stdout + r.stderr


# ---- 12. honest resume reasons ----------------------------------------------------------------------------------

def test_fresh_run_says_not_run_yet_for_every_stage(tmp_path, clip):
    seen = []
    run_pipeline(clip, tmp_path / "s", fast_cfg(), until="quality", on_stage=lambda n, a, w: seen.append((n, a, w)))
    assert seen == [(n, "run", "not run yet") for n in ("ingest", "shots", "quality")]
    seen.clear()
    run_pipeline(clip, tmp_path / "s", fast_cfg(shots={"backend": "adaptive", "min_shot_s": 1.0}), until="quality",
                 on_stage=lambda n, a, w: seen.append((n, a, w)))
    assert seen == [("ingest", "skip", "complete"), ("shots", "run", "config changed"),
                    ("quality", "run", "previous status 'stale'")]


# ---- stage warnings are listed by info ----------------------------------------------------------------------

def test_info_lists_stage_warnings(tmp_path, clip):
    out = tmp_path / "s"
    run_pipeline(clip, out, fast_cfg(), until="ingest")
    Scene(out).update_manifest(lambda m: m["stages"]["ingest"].update(
        warnings=["no floor plane seen: gravity from [vanishing_points] (±2.0°)"]))
    r = cli("info", out)
    assert r.exit_code == 0
    assert "warning: ingest: no floor plane seen: gravity from [vanishing_points] (±2.0°)" in r.stdout.replace("\n", "")

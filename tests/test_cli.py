"""The ``vid2scene`` command line: exit codes (0 ok, 2 usage, 3 input error or rejected, 4 stage failed) and a
one-line reason for every bad input (DESIGN.md: "Errors and exit codes").

Most tests call the typer app in-process with ``typer.testing.CliRunner`` (it returns the real exit codes:
``typer.Exit(n)`` and click's usage errors alike); a few run the installed ``vid2scene`` script as a subprocess
to check the same codes end to end. Decisions encoded here: a usage error (missing required
option, unknown option) exits 2 as click does; an unknown preset, a bad ``--intrinsics`` value or an unknown
``--until`` stage is a configuration error, i.e. an ``InputError``, and exits 3.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.room import encode_clip, random_texture
from vid2scene import __version__
from vid2scene.pipeline import STAGES
from vid2scene.shots import BACKENDS

av = pytest.importorskip("av")

_EXE = shutil.which("vid2scene")
CMD = [_EXE] if _EXE else [sys.executable, "-m", "vid2scene.cli"]


class Result:
    """What a command did: ``returncode``, ``stdout``, ``stderr``."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(*args) -> Result:
    """Run the CLI in-process (CliRunner); progress bars stay off unless the command turns them on."""
    from typer.testing import CliRunner

    from vid2scene import progress
    from vid2scene.cli import app

    try:
        r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    finally:
        progress.set_enabled(False)
    return Result(r.exit_code, r.stdout, r.stderr)


def cli_subprocess(*args, timeout: float = 300) -> Result:
    """Run the installed script (or ``python -m vid2scene.cli``) as a user would."""
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb")
    p = subprocess.run([*CMD, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    return Result(p.returncode, p.stdout, p.stderr)


def error_line(proc: Result) -> str:
    """The one-line reason: the last non-empty stderr line, which must start with ``error:``."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines, f"no stderr (rc={proc.returncode}, stdout={proc.stdout!r})"
    assert lines[-1].startswith("error: "), proc.stderr
    return lines[-1]


# ---- clips -----------------------------------------------------------------------------------------------------

_encode = encode_clip
_texture = random_texture


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli_clips")
    rng = np.random.default_rng(0)
    base = _texture(240, 320).astype(np.float32)
    static = [np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8) for _ in range(60)]
    big = _texture(260, 320 + 40 * 9 + 20, seed=1)
    moving = [big[10:250, i * 9: i * 9 + 320] for i in range(40)]  # ≥ 10 keyframes at 8% disparity
    notvideo = d / "holiday.mp4"
    notvideo.write_text("this is a text file with a video's name\n" * 50)
    return {"static": _encode(d / "static.mp4", static), "moving": _encode(d / "moving.mp4", moving),
            "notvideo": notvideo}


@pytest.fixture(scope="module")
def failed_scene(clips, tmp_path_factory) -> tuple[Path, Result]:
    """The static clip run through the whole pipeline: rejected for insufficient camera motion."""
    out = tmp_path_factory.mktemp("cli") / "static_scene"
    return out, cli("run", clips["static"], "-o", out, "--preset", "fast", "-q")


# ---- bad input: exit 3 with one line ---------------------------------------------------------------------------

@pytest.mark.parametrize("runner", [cli, cli_subprocess], ids=["in_process", "subprocess"])
def test_missing_input_path(tmp_path, runner):
    out = tmp_path / "scene"
    p = runner("run", tmp_path / "nope.mp4", "-o", out, "-q")
    assert p.returncode == 3
    assert "input not found" in error_line(p) and "nope.mp4" in error_line(p)
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) == 1  # nothing but the reason
    assert not out.exists()


def test_not_a_video(clips, tmp_path):
    out = tmp_path / "scene"
    p = cli("run", clips["notvideo"], "-o", out, "--preset", "fast", "-q")
    assert p.returncode == 3
    line = error_line(p)
    assert "not a decodable video" in line and "holiday.mp4" in line
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "failed" and m["failure"]["stage"] == "ingest" and m["failure"]["exit_code"] == 3


def test_static_camera_is_rejected(failed_scene):
    out, p = failed_scene
    assert p.returncode == 3, p.stderr
    assert "insufficient camera motion" in error_line(p)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "failed" and "insufficient camera motion" in m["failure"]["reason"]
    assert not (out / "cameras.json").exists()


def test_scene_from_another_input_is_refused(clips, failed_scene):
    out, _ = failed_scene
    before = (out / "manifest.json").read_bytes()
    p = cli("run", clips["moving"], "-o", out, "--preset", "fast", "-q")
    assert p.returncode == 3
    assert "another input" in error_line(p)
    assert (out / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("args,expect", [
    (["--preset", "turbo"], "unknown preset 'turbo'"),
    (["--intrinsics", "500,500,320"], "--intrinsics"),
    (["--until", "teleport"], "unknown stage 'teleport'"),
    (["--config", "/nonexistent/cfg.yaml"], "config file not found"),
])
def test_bad_configuration_is_an_input_error(clips, tmp_path, args, expect):
    out = tmp_path / "scene"
    p = cli("run", clips["moving"], "-o", out, *args, "-q")
    assert p.returncode == 3, p.stderr
    assert expect in error_line(p)
    assert not out.exists()


def test_invalid_config_value_is_an_input_error(clips, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("keyframes:\n  min_disparity: 7\n")
    p = cli("run", clips["moving"], "-o", tmp_path / "scene", "--config", cfg, "-q")
    assert p.returncode == 3
    assert "keyframes.min_disparity" in error_line(p)


# ---- usage errors: exit 2 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["run", "x.mp4"],                      # required -o missing
    ["run", "x.mp4", "-o", "s", "--bogus"],  # unknown option
    ["run"],                               # missing argument
    ["frobnicate"],                        # unknown command
])
def test_usage_errors_exit_2(args):
    p = cli(*args)
    assert p.returncode == 2, (p.returncode, p.stderr)


def test_usage_error_exit_2_from_the_installed_script():
    p = cli_subprocess("run", "x.mp4", "--bogus")
    assert p.returncode == 2 and "No such option" in p.stderr


# ---- stages, info, version -------------------------------------------------------------------------------------

def test_stages_lists_every_stage_and_shot_backend():
    p = cli("stages")
    assert p.returncode == 0, p.stderr
    text = re.sub(r"[│┃|\s]+", " ", p.stdout + p.stderr)  # table cells may wrap on a narrow terminal
    for name in STAGES:
        assert name in text
    for backend in BACKENDS:
        assert backend in text
    assert re.search(r"adaptive: ?installed", text)  # scenedetect is a hard dependency


def test_version():
    p = cli("version")
    assert p.returncode == 0 and p.stdout.strip() == __version__


def test_info_on_failed_scene_prints_the_failure_and_exits_nonzero(failed_scene):
    out, _ = failed_scene
    p = cli("info", out)
    assert p.returncode == 3, p.stderr
    text = p.stdout + p.stderr
    assert "insufficient camera motion" in text and "failed in" in text


def test_info_json_prints_the_manifest(failed_scene):
    out, _ = failed_scene
    p = cli("info", out, "--json")
    m = json.loads(p.stdout)
    assert m["status"] == "failed" and "insufficient camera motion" in m["failure"]["reason"]


def test_info_on_a_folder_that_is_not_a_scene(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    p = cli("info", tmp_path)
    assert p.returncode == 3
    assert "not a scene folder" in error_line(p)
    p = cli("info", tmp_path / "missing")
    assert p.returncode == 3


def test_info_on_a_corrupt_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text('{"status": "comp')
    p = cli("info", tmp_path)
    assert p.returncode == 3
    assert "unreadable" in error_line(p)


# ---- a good run and its resume --------------------------------------------------------------------------------

def test_run_until_keyframes_then_resume_skips_everything(clips, tmp_path):
    out = tmp_path / "scene"
    p = cli("run", clips["moving"], "-o", out, "--preset", "fast", "--until", "keyframes", "-q")
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert all(m["stages"][s]["status"] == "complete" for s in ["ingest", "shots", "quality", "keyframes"])
    assert m["status"] == "incomplete"  # sfm did not run

    p = cli("run", clips["moving"], "-o", out, "--preset", "fast", "--until", "keyframes", "-q")
    assert p.returncode == 0, p.stderr
    for s in ["ingest", "shots", "quality", "keyframes"]:
        assert f"{s}: skipped" in p.stderr

    p = cli("info", out)
    assert p.returncode == 0
    assert "keyframes" in p.stdout + p.stderr

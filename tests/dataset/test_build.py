"""vid2scene build: both engines, failure isolation (bad file, exception, segfault, time-out, memory), resume
after the build process is killed, the index against the scene folders, long tours (shot sub-scenes), URL
sources fetched from a local HTTP server.

Clips are 4 s synthetic pans (40 frames, 320×240) run only through ``keyframes`` (about 2 s each).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.clips import moving_clip, two_shot_clip
from vid2scene.config import PipelineConfig
from vid2scene.dataset import engines
from vid2scene.dataset.build import BuildOptions, build_dataset
from vid2scene.dataset.index import read_index, read_task_records
from vid2scene.dataset.sources import read_sources, scene_id_for
from vid2scene.io import finished_files

pytest.importorskip("av")
pytest.importorskip("pyarrow")

UNTIL = "keyframes"
SRC = str(Path(__file__).resolve().parents[2] / "src")
# The clips are pans over tinted random textures, not rooms: the indoor filter would (rightly) call some of them
# outdoor; these tests are about the build, so it is off.
FAST = {"shots": {"backend": "adaptive"}, "quality": {"indoor": {"enabled": False}}}


def fast_cfg(**extra) -> PipelineConfig:
    return PipelineConfig.model_validate({**FAST, **extra})


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clips")
    for k in range(3):
        moving_clip(d / f"clip{k}.mp4", seed=k)
    (d / "broken.mp4").write_bytes(b"\x00not a video" * 500)
    return d


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               RAY_USAGE_STATS_ENABLED="0", VID2SCENE_NO_PROGRESS="1")
    return env


def _stage_finish_times(scene_dir: Path) -> dict:
    m = json.loads((scene_dir / "manifest.json").read_text())
    return {k: v.get("finished") for k, v in m["stages"].items()}


def _check_index_matches_folders(ds: Path) -> list[dict]:
    rows = read_index(ds)
    scenes = {p.name for p in (ds / "scenes").iterdir() if (p / "manifest.json").is_file()}
    with_folder = {r["scene_id"] for r in rows if (ds / r["scene_dir"] / "manifest.json").is_file()}
    assert with_folder == scenes  # every scene folder has exactly one row, and no row points to nothing
    assert {r["task_id"] for r in rows} == {p.stem for p in finished_files(ds / "tasks", "*.json")}
    for r in rows:
        if r["status"] == "complete":
            m = json.loads((ds / r["scene_dir"] / "manifest.json").read_text())
            assert all(m["stages"][s]["status"] == "complete" for s in ("ingest", "shots", "quality", "keyframes"))
            kf = json.loads((ds / r["scene_dir"] / "keyframes.json").read_text())
            assert r["n_keyframes"] == len(kf["keyframes"]) >= 10
            assert r["duration_s"] == pytest.approx(4.0, abs=0.15)
            assert r["seconds_keyframes"] > 0 and r["wall_s"] >= r["seconds_keyframes"]
            assert r["peak_rss_mb"] > 30
            assert (ds / r["thumbnail"]).is_file()
    return rows


# ---- sources -----------------------------------------------------------------------------------------------------

def test_sources_stable_ids(tmp_path, clips):
    (tmp_path / "list.txt").write_text(f"# comment\n{clips / 'clip0.mp4'}\n\nhttp://example.org/a/Tour%201.mp4\n"
                                       f"{clips / 'clip0.mp4'}\n")
    (tmp_path / "list.csv").write_text(f"id,source\nmine,{clips / 'clip1.mp4'}\n,rel/video.mov\n")
    txt = read_sources(tmp_path / "list.txt")
    assert [s.kind for s in txt] == ["file", "url"]  # the duplicate is kept once
    assert txt[0].scene_id == scene_id_for(str((clips / "clip0.mp4").resolve())) == read_sources(clips)[1].scene_id
    assert txt[0].scene_id.startswith("clip0-") and len(txt[0].scene_id) == len("clip0-") + 8
    assert txt[1].scene_id.startswith("tour-1-")
    csv_ = read_sources(tmp_path / "list.csv")
    assert csv_[0].scene_id == "mine" and csv_[1].uri == str(tmp_path / "rel" / "video.mov")
    assert scene_id_for("/a/clip0.mp4") != scene_id_for("/b/clip0.mp4")


# ---- the supervisor: every way a task can die is isolated ---------------------------------------------------

def test_supervisor_isolates_exception_segfault_timeout_and_memory():
    eng = engines.LocalEngine(workers=2, timeout_s=4.0, memory_mb=400, fn="tests.fixtures.clips:dispatch")
    tasks = [{"task_id": d, "do": d} for d in ("segfault", "ok", "raise", "sleep", "hog")]
    res = {t["task_id"]: r for t, r in eng.run(tasks) if t is not None}
    assert res["ok"]["status"] == "complete" and res["ok"]["result"]["pid"] != os.getpid()
    assert res["raise"]["status"] == "failed" and "ValueError: bad value in task" in res["raise"]["reason"]
    assert res["segfault"]["error_type"] == "Crash" and "SIGSEGV" in res["segfault"]["reason"]
    assert res["sleep"]["error_type"] == "Timeout" and "timed out after 4 s" in res["sleep"]["reason"]
    assert 4.0 <= res["sleep"]["wall_s"] < 20
    assert res["hog"]["error_type"] == "OutOfMemory" and "400 MiB limit" in res["hog"]["reason"]
    assert res["hog"]["peak_rss_mb"] > 400


# ---- local engine: a bad file among good ones; index; report; resume skips; --retry-failed ------------------

def test_local_build_isolates_failures_and_resumes(tmp_path, clips):
    (tmp_path / "sources.txt").write_text("\n".join(
        [str(clips / "clip0.mp4"), str(clips / "broken.mp4"), str(clips / "clip1.mp4"), "missing.mp4"]))
    ds = tmp_path / "ds"
    opts = BuildOptions(workers=2, until=UNTIL)
    s = build_dataset(tmp_path / "sources.txt", ds, fast_cfg(), opts)
    assert len(s.completed) == 2 and len(s.failed) == 2
    rows = {r["scene_id"]: r for r in _check_index_matches_folders(ds)}
    assert len(rows) == 4
    broken = next(r for r in rows.values() if r["scene_id"].startswith("broken-"))
    missing = next(r for r in rows.values() if r["scene_id"].startswith("missing-"))
    assert broken["status"] == "failed" and broken["failure_stage"] == "ingest" and broken["error_type"] == "InputError"
    assert "not a decodable video" in broken["failure_reason"]
    assert missing["status"] == "failed" and "input not found" in missing["failure_reason"]
    html = (ds / "report.html").read_text()
    assert all(sid in html for sid in rows) and "<svg" in html and "not a decodable video" in html

    # dataset-info
    out = subprocess.run([sys.executable, "-m", "vid2scene.cli", "dataset-info", str(ds), "--json"],
                         capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["by_status"] == {"complete": 2, "failed": 2} and sum(info["failure_reasons"].values()) == 2

    # re-run: nothing starts; complete scenes untouched, failures kept
    good = [sid for sid, r in rows.items() if r["status"] == "complete"]
    before = {sid: ((ds / "scenes" / sid / "manifest.json").stat().st_mtime_ns, _stage_finish_times(ds / "scenes" / sid))
              for sid in good}
    s2 = build_dataset(tmp_path / "sources.txt", ds, fast_cfg(), opts)
    assert s2.ran == [] and sorted(s2.skipped_complete) == sorted(good) and len(s2.skipped_failed) == 2
    assert {sid: ((ds / "scenes" / sid / "manifest.json").stat().st_mtime_ns,
                  _stage_finish_times(ds / "scenes" / sid)) for sid in good} == before
    # --retry-failed re-runs only the failures (and they fail again, with the same reasons)
    s3 = build_dataset(tmp_path / "sources.txt", ds, fast_cfg(), BuildOptions(workers=2, until=UNTIL, retry_failed=True))
    assert sorted(s3.ran) == sorted([broken["scene_id"], missing["scene_id"]])
    assert read_task_records(ds)[broken["scene_id"]]["attempts"] == 2


def test_timeout_marks_failed_then_retry_completes(tmp_path, clips):
    ds = tmp_path / "ds"
    (tmp_path / "one.txt").write_text(str(clips / "clip2.mp4"))
    s = build_dataset(tmp_path / "one.txt", ds, fast_cfg(), BuildOptions(until=UNTIL, timeout_s=0.5))
    (sid, why), = s.failed.items()
    assert "timed out after 0.5 s" in why
    row, = read_index(ds)
    assert row["status"] == "failed" and row["error_type"] == "Timeout"
    s2 = build_dataset(tmp_path / "one.txt", ds, fast_cfg(), BuildOptions(until=UNTIL, timeout_s=0.5))
    assert s2.skipped_failed == [sid] and s2.ran == []
    s3 = build_dataset(tmp_path / "one.txt", ds, fast_cfg(), BuildOptions(until=UNTIL, retry_failed=True))
    assert s3.completed == [sid]
    row, = _check_index_matches_folders(ds)
    assert row["status"] == "complete" and row["attempts"] == 2


# ---- resume after the build process is killed ------------------------------------------------------------------

def test_resume_after_killed_build(tmp_path, clips):
    (tmp_path / "cfg.json").write_text(json.dumps(FAST))
    (tmp_path / "sources.txt").write_text("\n".join(str(clips / f"clip{k}.mp4") for k in range(3)))
    ds = tmp_path / "ds"
    cmd = [sys.executable, "-m", "vid2scene.cli", "build", str(tmp_path / "sources.txt"), "-o", str(ds),
           "--until", UNTIL, "--workers", "1", "--config", str(tmp_path / "cfg.json"), "-q"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not finished_files(ds / "tasks", "*.json"):
        time.sleep(0.1)
    proc.kill()  # SIGKILL: no clean-up at all
    proc.wait()
    finished = [p.stem for p in finished_files(ds / "tasks", "*.json")]
    assert 1 <= len(finished) < 3, "the build should have been killed after its first video"
    time.sleep(1.5)  # the orphaned task process notices its parent is gone and exits
    before = {sid: _stage_finish_times(ds / "scenes" / sid) for sid in finished}
    mtimes = {sid: (ds / "scenes" / sid / "manifest.json").stat().st_mtime_ns for sid in finished}
    s = build_dataset(tmp_path / "sources.txt", ds, fast_cfg(), BuildOptions(until=UNTIL))
    assert sorted(s.skipped_complete) == sorted(finished)
    assert len(s.completed) == 3 - len(finished) and not s.failed
    assert {sid: _stage_finish_times(ds / "scenes" / sid) for sid in finished} == before  # nothing recomputed
    assert {sid: (ds / "scenes" / sid / "manifest.json").stat().st_mtime_ns for sid in finished} == mtimes
    rows = _check_index_matches_folders(ds)
    assert len(rows) == 3 and all(r["status"] == "complete" for r in rows)


# ---- long tours: shot sub-scenes are scenes of their own ----------------------------------------------------

def test_long_tour_subscenes_become_rows(tmp_path):
    two_shot_clip(tmp_path / "tour.mp4")
    (tmp_path / "list.txt").write_text(str(tmp_path / "tour.mp4"))
    cfg = PipelineConfig.model_validate({"shots": {"backend": "adaptive", "emit": "all", "min_shot_s": 1.5},
                                         "quality": FAST["quality"]})
    ds = tmp_path / "ds"
    s = build_dataset(tmp_path / "list.txt", ds, cfg, BuildOptions(until="quality"))
    assert len(s.completed) == 1
    rows = read_index(ds)
    tid = s.completed[0]
    assert [r["scene_id"] for r in rows] == [f"{tid}--shot_000", f"{tid}--shot_001"]
    for r in rows:
        assert r["parent_scene_id"] == tid and r["status"] == "complete"
        assert (ds / r["scene_dir"] / "manifest.json").is_file() and "/subscenes/shot_" in r["scene_dir"]
        assert r["duration_s"] == pytest.approx(3.0, abs=0.25)
    s2 = build_dataset(tmp_path / "list.txt", ds, cfg, BuildOptions(until="quality"))
    assert s2.skipped_complete == [tid] and s2.ran == []


# ---- URL sources through a local HTTP server ----------------------------------------------------------------

def test_fetch_urls_from_local_http_server(tmp_path, clips):
    pytest.importorskip("yt_dlp")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(clips))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        (tmp_path / "urls.txt").write_text(f"{base}/clip0.mp4\n{base}/nothing-here.mp4\n")
        ds = tmp_path / "ds"
        s = build_dataset(tmp_path / "urls.txt", ds, fast_cfg(), BuildOptions(workers=2, until=UNTIL))
        assert len(s.completed) == 1 and len(s.failed) == 1
        rows = {r["source"]: r for r in _check_index_matches_folders(ds)}
        ok, bad = rows[f"{base}/clip0.mp4"], rows[f"{base}/nothing-here.mp4"]
        assert ok["status"] == "complete" and ok["source_kind"] == "url" and ok["fetch_s"] > 0
        got = ds / "downloads" / f"{ok['scene_id']}.mp4"
        assert got.read_bytes() == (clips / "clip0.mp4").read_bytes()
        assert len((ds / "downloads" / "archive.txt").read_text().splitlines()) == 1
        assert bad["status"] == "failed" and bad["failure_stage"] == "fetch" and "404" in bad["failure_reason"]
        from vid2scene.dataset.fetch import fetch

        mtime = got.stat().st_mtime_ns
        path, now = fetch(f"{base}/clip0.mp4", ds / "downloads", ok["scene_id"])
        assert path == got and not now and got.stat().st_mtime_ns == mtime  # an existing download is reused
    finally:
        srv.shutdown()


# ---- the Ray engine, inside a loopback-only network namespace ---------------------------------------------------

def _netns_ok() -> tuple[bool, str]:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False, "unshare/ip not found"
    try:
        r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up && true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"unshare failed: {e}"
    return r.returncode == 0, f"unshare -n not permitted here: {r.stderr.decode().strip()[:200]}"


def test_ray_engine_in_loopback_namespace(tmp_path, clips):
    pytest.importorskip("ray")
    ok, why = _netns_ok()
    if not ok:
        pytest.skip(f"Ray test needs a loopback-only network namespace (Ray start-up probes outside hosts): {why}")
    (tmp_path / "cfg.json").write_text(json.dumps(FAST))
    (tmp_path / "sources.txt").write_text("\n".join([str(clips / "clip0.mp4"), str(clips / "broken.mp4"),
                                                     str(clips / "clip1.mp4")]))
    ds = tmp_path / "ds"
    inner = " ".join([sys.executable, "-m", "vid2scene.cli", "build", str(tmp_path / "sources.txt"), "-o", str(ds),
                      "--engine", "ray", "--workers", "2", "--until", UNTIL, "--config", str(tmp_path / "cfg.json"),
                      "-q"])
    r = subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {inner}"], env=_env(),
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {r_["scene_id"].split("-")[0]: r_ for r_ in _check_index_matches_folders(ds)}
    assert rows["clip0"]["status"] == rows["clip1"]["status"] == "complete"
    assert rows["broken"]["status"] == "failed" and rows["broken"]["failure_stage"] == "ingest"

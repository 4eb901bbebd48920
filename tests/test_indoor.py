"""The indoor filter of ``quality``: synthetic outdoor frames (sky gradient, no vertical structure) are rejected
as outdoor, the textured room passes, the real outdoor test video is rejected as outdoor and the HoloLens walk
passes; the CLIP backend slot works with a tiny randomly initialised ``transformers`` CLIP model."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.fixtures.room import fast_config, intrinsics, render_room, run_stages, scene_from_images, walk_trajectory
from tests.fixtures.tiny_hf import tiny_clip_tokenizer
from vid2scene.errors import BackendNotInstalled, RejectedInput
from vid2scene.quality import indoor

DATA = next((p for p in (Path(os.environ.get("VID2SCENE_DATA", "/nonexistent")),
                         Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data"))
             if p.is_dir()), None)


def outdoor_frames(n: int = 20, w: int = 320, h: int = 240, seed: int = 0) -> list[np.ndarray]:
    """A camera panning over a landscape: a blue sky gradient over the top half, rolling grass below (green
    noise, a wavy horizon): no straight vertical or horizontal structure."""
    rng = np.random.default_rng(seed)
    W = w + 6 * n
    yy = np.linspace(0, 1, h)[:, None, None]
    sky = np.concatenate([np.full((h, W, 1), 200.0), np.full((h, W, 1), 170.0), np.full((h, W, 1), 110.0)], 2)
    sky = sky * (1 - 0.35 * yy) + np.array([0, 20, 60.0]) * yy  # RGB: pale at the top, deeper blue lower
    sky = sky[..., ::-1].copy()  # (B, G, R) built above: to RGB
    grass = cv2.GaussianBlur(rng.integers(0, 255, (h, W)).astype(np.float32), (0, 0), 1.5)[..., None]
    grass = np.concatenate([40 + 0.3 * grass, 90 + 0.5 * grass, 20 + 0.2 * grass], 2)
    horizon = (0.5 * h + 0.06 * h * np.sin(np.linspace(0, 5 * np.pi, W)))[None, :]
    img = np.where((np.arange(h)[:, None] > horizon)[..., None], grass, sky)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return [np.ascontiguousarray(img[:, 6 * i: 6 * i + w]) for i in range(n)]


def room_frames(n: int = 20) -> list[np.ndarray]:
    K = intrinsics(320, 240)
    return [render_room(p, K, 320, 240)[0] for p in walk_trajectory(n)]


def test_synthetic_outdoor_frames_are_rejected_as_outdoor(tmp_path):
    scene = scene_from_images(tmp_path / "outdoor", outdoor_frames())
    with pytest.raises(RejectedInput, match="^outdoor: ") as e:
        run_stages(scene, fast_config(), "quality")
    assert "sky-like region" in str(e.value)
    q = scene.quality()  # written anyway, with per-frame verdicts and reasons
    assert q["indoor"]["decision"] == "outdoor"
    typed = [r for r in q["frames"] if "scene_type" in r]
    assert typed and all(r["scene_type"] == "outdoor" and r["scene_reasons"] for r in typed)
    assert scene.read_manifest()["stages"]["quality"]["status"] == "failed"


def test_textured_room_is_indoor(tmp_path):
    scene = scene_from_images(tmp_path / "room", room_frames())
    run_stages(scene, fast_config(), "quality")
    q = scene.quality()
    assert q["indoor"]["decision"] is None and q["indoor"]["counts"]["indoor"] >= 0.8 * q["indoor"]["n_frames"]


def test_random_noise_is_unknown_not_outdoor():
    from tests.fixtures.room import random_texture

    v = indoor.HeuristicBackend().classify_one(np.ascontiguousarray(random_texture(240, 320)))
    assert v["verdict"] == "unknown" and "too little structure" in v["reasons"][0]


def test_blank_frames_are_not_a_walkthrough():
    b = indoor.HeuristicBackend()
    v = b.classify([np.full((240, 320, 3), 128, np.uint8), np.zeros((240, 320, 3), np.uint8)])
    assert [x["verdict"] for x in v] == ["not_walkthrough", "not_walkthrough"]
    assert indoor.decide(v, indoor.Config())[0] == "not_walkthrough"


def test_decide_counts_outdoor_among_frames_that_show_a_place():
    v = [{"verdict": k} for k in ["outdoor"] * 3 + ["not_walkthrough"] * 4 + ["indoor"] * 2]
    decision, counts = indoor.decide(v, indoor.Config())
    assert decision == "outdoor" and counts == {"indoor": 2, "outdoor": 3, "not_walkthrough": 4, "unknown": 0}
    assert indoor.decide([{"verdict": "unknown"}] * 5, indoor.Config())[0] is None  # nothing to judge by
    assert indoor.decide([{"verdict": "indoor"}] * 3 + [{"verdict": "outdoor"}] * 2, indoor.Config())[0] is None


def _video_frames(path: Path, step: int, n: int) -> list[np.ndarray]:
    import av

    out = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(c.streams.video[0])):
            if i % step == 0:
                out.append(f.to_ndarray(format="rgb24", width=640, height=360))
            if len(out) >= n:
                break
    return out


@pytest.mark.skipif(DATA is None or not (DATA / "pyscenedetect" / "testvideo.mp4").is_file(),
                    reason="shared data missing")
def test_outdoor_test_video_is_rejected_as_outdoor(tmp_path):
    from vid2scene.pipeline import run_pipeline

    cfg = fast_config()
    with pytest.raises(RejectedInput, match="^outdoor: "):
        run_pipeline(DATA / "pyscenedetect" / "testvideo.mp4", tmp_path / "s", cfg, until="quality")
    v = indoor.HeuristicBackend().classify(_video_frames(DATA / "pyscenedetect" / "testvideo.mp4", 15, 48))
    assert indoor.decide(v, indoor.Config())[0] == "outdoor"


@pytest.mark.skipif(DATA is None or not (DATA / "hololens_office.mp4").is_file(), reason="shared data missing")
def test_hololens_walk_is_indoor():
    v = indoor.HeuristicBackend().classify(_video_frames(DATA / "hololens_office.mp4", 8, 47))
    decision, counts = indoor.decide(v, indoor.Config())
    assert decision is None and counts["indoor"] >= 0.9 * len(v)


# ---- the CLIP backend slot --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A randomly initialised CLIP (2 layers, 32 wide, 32-px images) with a character-level BPE tokenizer,
    saved as a local model folder."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")

    folder = tmp_path_factory.mktemp("tiny_clip")
    tok = tiny_clip_tokenizer(folder)
    bos, eos = tok.convert_tokens_to_ids("<|startoftext|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    image_proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transformers.CLIPProcessor(image_processor=image_proc, tokenizer=tok).save_pretrained(folder)
    cfg = transformers.CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": bos,
                     "eos_token_id": eos, "pad_token_id": eos},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    import torch

    torch.manual_seed(0)
    transformers.CLIPModel(cfg).save_pretrained(folder)
    return folder


def test_clip_backend_from_a_local_folder(tiny_clip, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = indoor.Config(backend="clip", clip={"model": str(tiny_clip)})
    b = indoor.make_backend(cfg)
    v = b.classify(room_frames(3) + outdoor_frames(2))
    assert len(v) == 5
    for x in v:
        assert x["verdict"] in indoor.VERDICTS
        p = [x["cues"][f"p_{k}"] for k in indoor.ClipBackend.PROMPTS]
        assert abs(sum(p) - 1) < 1e-3 and x["reasons"][0].startswith("CLIP: ")
    # through the stage: quality.json records the backend
    scene = scene_from_images(tmp_path / "room", room_frames(12))
    try:
        run_stages(scene, fast_config(quality={"indoor": {"backend": "clip", "clip": {"model": str(tiny_clip)},
                                                          "max_outdoor_share": 1.0,
                                                          "max_not_walkthrough_share": 1.0}}), "quality")
    except RejectedInput:
        pass  # a random model may call everything "not a walkthrough"; the thresholds above forbid only that
    assert scene.quality()["indoor"]["backend"] == "clip"


def test_clip_backend_offline_without_a_local_model_is_not_installed(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(BackendNotInstalled, match="HF_HUB_OFFLINE"):
        indoor.make_backend(indoor.Config(backend="clip", clip={"model": "openai/clip-vit-base-patch32"}))
    with pytest.raises(BackendNotInstalled, match="quality.indoor.clip.model"):
        indoor.make_backend(indoor.Config(backend="clip"))

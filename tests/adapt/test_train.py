"""The adaptation loop on a tiny synthetic room: runs, writes a checkpoint that loads as the prompt_da backend."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("transformers")

from vid2scene.adapt import train as T  # noqa: E402
from vid2scene.adapt.cli import app  # noqa: E402
from vid2scene.depth.prompt_da import PromptDABackend, load_model  # noqa: E402
from tests.fixtures.adapt_rooms import room_scene  # noqa: E402

CFG = dict(input_size=42, prompt_size=12, render_size=21, batch_views=3, gaussian_stride=3, device="cpu",
           min_anchors=5)


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    return room_scene(tmp_path_factory.mktemp("adapt") / "room", n=5, w=56, h=42, n_points=80,
                      write_true_depth=True)


def test_load_views_and_terms(room):
    cfg = T.AdaptConfig(**CFG)
    views = T.load_views(room.scene, cfg)
    assert len(views) >= 4 and views[0].rgb.shape == (28, 42, 3)
    model = load_model("tiny", "cpu")
    depth, prompts = T.predict(model, views[:3], cfg, np.random.default_rng(0))
    assert depth.shape == (3, 28, 42) and prompts.shape[0] == 3
    a = T.anchor_term(depth, views[:3], 0.05)
    r = T.render_term(depth, views[:3], 0, cfg)
    (a + r).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # true depth (SfM units, area-resampled: edges blur) scores far better than a flat depth
    true = torch.tensor(np.stack([np.asarray(room.true_depth[v.source_frame]) for v in views[:3]]) * 0.5)
    true = torch.nn.functional.interpolate(true[:, None].float(), size=(28, 42), mode="area")[:, 0]
    good = float(T.anchor_term(true, views[:3], 0.05))
    flat = float(T.anchor_term(torch.full_like(true, float(true.median())), views[:3], 0.05))
    assert good < 1e-3 and good < 0.1 * flat


def test_adapt_checkpoint_loads_as_depth_backend(room, tmp_path):
    cfg = T.AdaptConfig(steps=2, **CFG)
    meta = T.run_adapt([room.scene.root], tmp_path / "ckpt", "tiny", cfg)
    assert len(meta["losses"]) == 2 and all(np.isfinite(r["total"]) for r in meta["losses"])
    assert meta["losses"][0]["distill"] == pytest.approx(0.0, abs=1e-6)  # starts at the frozen copy
    saved = json.loads((tmp_path / "ckpt" / "adapt.json").read_text())
    assert saved["model"] == "tiny" and saved["seconds_per_step"] > 0
    be = PromptDABackend(PromptDABackend.Options(model=str(tmp_path / "ckpt"), device="cpu", input_size=42,
                                                 prompt_size=12))
    rng = np.random.default_rng(0)
    d_true = room.true_depth[0] * 0.5
    u, v = rng.integers(0, 56, 40), rng.integers(0, 42, 40)
    sparse = SimpleNamespace(uv=np.stack([u + 0.5, v + 0.5], 1), z=d_true[v, u])
    depth, conf, _ = be.estimate(SimpleNamespace(load_rgb=lambda: room.scene.keyframe_image(0), shape=(42, 56)), [], sparse,
                                 (0.2, 5.0))
    assert depth.shape == (42, 56) and (depth > 0).mean() > 0.9


def test_cli(room, tmp_path):
    r = CliRunner().invoke(app, ["adapt", str(room.scene.root), "-o", str(tmp_path / "c"), "--steps", "1",
                                 "--device", "cpu", "--input-size", "28", "--w-render", "0", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["checkpoint"] == str(tmp_path / "c") and (tmp_path / "c" / "config.json").is_file()

"""``prompt_da`` depth backend with a tiny randomly initialised model saved to and loaded from a local folder."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("transformers")

from vid2scene import io  # noqa: E402
from vid2scene.depth import prompt_da as P  # noqa: E402
from tests.fixtures.room import intrinsics, look_at, render_room  # noqa: E402

W, H = 64, 48


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_pda")
    P.load_model("tiny", "cpu", seed=3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    K = intrinsics(W, H)
    T = look_at((2.5, 1.0, 1.4), (2.5, 3.0, 1.0))
    rgb, depth = render_room(T, K, W, H)
    path = tmp_path_factory.mktemp("view") / "000000.jpg"
    io.write_image_rgb(path, rgb)
    rng = np.random.default_rng(0)
    u, v = rng.integers(0, W, 60), rng.integers(0, H, 60)
    sparse = SimpleNamespace(uv=np.stack([u + 0.5, v + 0.5], 1), z=depth[v, u].astype(np.float64))
    return SimpleNamespace(load_rgb=lambda: io.read_image_rgb(path), shape=(H, W)), sparse, depth


def test_loads_offline_from_a_local_folder(tiny_folder, view, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref, sparse, _ = view
    opts = P.PromptDABackend.Options(model=str(tiny_folder), device="cpu", input_size=70, prompt_size=32)
    loaded = P.PromptDABackend(opts)
    fresh = P.PromptDABackend(P.PromptDABackend.Options(model="tiny", seed=3, device="cpu", input_size=70,
                                                       prompt_size=32))
    d1, c1, weak = loaded.estimate(ref, [], sparse, (0.5, 6.0))
    d2, _, _ = fresh.estimate(ref, [], sparse, (0.5, 6.0))
    assert d1.shape == (H, W) and d1.dtype == np.float32 and not weak.any()
    assert d1 == pytest.approx(d2, rel=1e-5)
    assert (c1[d1 > 0] >= 0.3).all() and (c1[d1 > 0] <= 0.7).all()


def test_depth_is_in_the_prompt_scale(tiny_folder, view):
    ref, sparse, _ = view
    be = P.PromptDABackend(P.PromptDABackend.Options(model=str(tiny_folder), device="cpu", input_size=70,
                                                    prompt_size=32))
    d, _, _ = be.estimate(ref, [], sparse, (0.1, 100.0))
    scaled = SimpleNamespace(uv=sparse.uv, z=sparse.z * 7.0)
    d7, _, _ = be.estimate(ref, [], scaled, (0.7, 700.0))
    ok = d > 0
    assert ok.mean() > 0.9
    assert d7[ok] == pytest.approx(7.0 * d[ok], rel=1e-4)
    assert d[ok].min() >= sparse.z.min() * 0.999       # the output starts at the prompt's minimum
    flat = SimpleNamespace(uv=sparse.uv, z=np.full(len(sparse.z), 2.5))
    df, _, _ = be.estimate(ref, [], flat, (0.1, 100.0))
    assert df == pytest.approx(2.5, rel=0.01)          # a constant prompt: that depth


def test_too_few_prompt_points_give_no_depth(view):
    ref, sparse, _ = view
    be = P.PromptDABackend(P.PromptDABackend.Options(model="tiny", device="cpu", input_size=28, min_prompt_points=5))
    few = SimpleNamespace(uv=sparse.uv[:3], z=sparse.z[:3])
    d, c, _ = be.estimate(ref, [], few, (0.5, 6.0))
    assert not d.any() and not c.any()


def test_densify_prompt_interpolates_inverse_depth():
    uv = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    z = np.array([1.0, 2.0, 1.0, 2.0])
    p = P.densify_prompt(uv, z, (10, 10), (10, 10))
    assert p.shape == (10, 10)
    # along x, 1/z goes linearly from 1 to 0.5: at x = 5.5 (pixel 5's centre) 1/z = 1 - 0.05*5.5
    assert p[4, 5] == pytest.approx(1 / (1 - 0.05 * 5.5), rel=1e-5)
    assert P.model_input_size(640, 480, 518) == (518, 392)
    assert P.PromptDABackend.is_installed()[0]

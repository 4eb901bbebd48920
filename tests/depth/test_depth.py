"""The depth stage on a hand-built synthetic room scene (true cameras, sparse points on the true surfaces;
SfM units are metres here, so tolerances are in metres)."""

from __future__ import annotations


import numpy as np
import pytest
from pydantic import ValidationError

from vid2scene import depth
from vid2scene.depth import BACKENDS, Config, align_scale_shift, backend_status
from vid2scene.depth.mvs import mean_k_smallest
from vid2scene.errors import BackendNotInstalled, StageFailed
from vid2scene.io import read_npz


@pytest.fixture(scope="module")
def ran(synth_scene):
    res = depth.run(synth_scene.scene, Config())
    return synth_scene, res


def _errors(synth, min_conf):
    errs, cov = [], []
    for f, gt in synth.true_depth.items():
        if f in synth.unregistered:
            continue
        d = synth.scene.depth(f)
        m = (d.depth > 0) & (d.confidence > min_conf)
        errs.append(d.depth[m] - gt[m])
        cov.append(m.mean())
    return errs, cov


def test_dense_depth_matches_the_true_depth(ran):
    synth, res = ran
    cfg = Config()
    # confident multi-view depths (above the sparse-fill confidence)
    errs, cov = _errors(synth, cfg.fill_confidence + 1e-3)
    gts = []
    for f, gt in synth.true_depth.items():
        if f not in synth.unregistered:
            d = synth.scene.depth(f)
            gts.append(gt[(d.depth > 0) & (d.confidence > cfg.fill_confidence + 1e-3)])
    e = np.concatenate(errs)
    g = np.concatenate(gts)
    absrel = float(np.mean(np.abs(e) / g))
    assert absrel < 0.05, absrel
    assert np.median(np.abs(e)) < 0.02  # metres (room 5 × 4 m, depths 1–4.5 m)
    assert np.mean(cov) >= 0.5
    # with the sparse fill: more coverage, still accurate
    errs_all, cov_all = _errors(synth, 0.0)
    assert np.mean(cov_all) > np.mean(cov)
    assert np.median(np.abs(np.concatenate(errs_all))) < 0.03
    assert res.qc["sparse_median_rel_error"] < 0.02
    assert res.qc["n_depth_maps"] == len(synth.true_depth) - len(synth.unregistered)


def test_file_format_and_unregistered_keyframes(ran):
    synth, _ = ran
    files = sorted(p.name for p in (synth.scene.root / "depth").glob("*.npz"))
    expected = sorted(f"{f:06d}.npz" for f in synth.true_depth if f not in synth.unregistered)
    assert files == expected
    for f in synth.unregistered:
        assert not synth.scene.depth_path(f).exists()
    assert synth.scene.depth_frames() == [int(n[:6]) for n in expected]
    d = read_npz(synth.scene.depth_path(int(expected[0][:6])))
    assert set(d) == {"depth_sfm", "confidence"}  # the field says the unit; nothing else is stored
    h, w = next(iter(synth.true_depth.values())).shape
    assert d["depth_sfm"].shape == (h, w) and d["depth_sfm"].dtype == np.float32
    assert d["confidence"].dtype == np.float32
    assert 0 <= d["confidence"].min() and d["confidence"].max() <= 1
    assert np.all(d["confidence"][d["depth_sfm"] == 0] == 0)
    assert not list((synth.scene.root / "depth").glob(".*tmp*"))


def test_rerun_is_idempotent(ran):
    synth, res = ran
    f = next(f for f in synth.true_depth if f not in synth.unregistered)
    before = synth.scene.depth(f)
    res2 = depth.run(synth.scene, Config())
    after = synth.scene.depth(f)
    np.testing.assert_array_equal(before.depth, after.depth)
    np.testing.assert_array_equal(before.confidence, after.confidence)
    assert res2.qc["n_depth_maps"] == res.qc["n_depth_maps"]


def test_no_registered_keyframes_fails_with_reason(tmp_path, scene_builder):
    synth = scene_builder(tmp_path / "scene", n=4, register=False)
    with pytest.raises(StageFailed, match="no registered keyframes"):
        depth.run(synth.scene, Config())


def test_requires_sfm(tmp_path, scene_builder):
    synth = scene_builder(tmp_path / "scene", n=4)
    synth.scene.update_manifest(lambda m: m["stages"]["sfm"].update(status="failed"))
    with pytest.raises(StageFailed, match="sfm"):
        depth.run(synth.scene, Config())


def test_config_and_registry():
    assert set(BACKENDS) == {"mvs", "mono", "prompt_da"}
    st = backend_status()
    assert st["mvs"] == "installed"
    assert st["mono"] == "installed" or st["mono"].startswith("not installed: pip install transformers")
    assert st["prompt_da"] == "installed" or st["prompt_da"].startswith("not installed: pip install torch")
    with pytest.raises(ValidationError):
        Config(backend="nope")
    with pytest.raises(ValidationError):
        Config(extra_field=1)
    with pytest.raises(ValidationError):
        Config(mvs={"window": 6})
    with pytest.raises(ValidationError):
        Config(window=7)  # backend options live in their own section
    with pytest.raises(ValidationError):
        Config(mono={"n_planes": 32})
    cfg = Config.model_validate({"backend": "mono", "mono": {"model_path": "/m"}, "mvs": {"n_planes": 32}})
    assert cfg.mono.model_path == "/m" and cfg.mvs.n_planes == 32 and cfg.mvs.window == 7
    assert depth.NAME == "depth" and depth.OUTPUTS == ["depth"]


def test_mono_without_model_is_not_installed(synth_scene):
    with pytest.raises(BackendNotInstalled, match="not installed|model_path"):
        depth.run(synth_scene.scene, Config(backend="mono", mono={"model_path": None}))


def test_mean_k_smallest_matches_sort():
    x = np.random.default_rng(0).random((6, 5, 7)).astype(np.float32)
    for k in range(1, 7):
        np.testing.assert_allclose(mean_k_smallest(x, k), np.sort(x, 0)[:k].mean(0), atol=1e-6)


def test_scale_shift_alignment_recovers_known_values():
    rng = np.random.default_rng(1)
    z = rng.uniform(0.8, 6.0, 400)                       # true depths
    s_true, t_true = 0.37, 0.05
    pred = (1.0 / z - t_true) / s_true                   # relative inverse depth the model "predicts"
    pred = pred * (1 + 0.01 * rng.standard_normal(400))  # 1% noise
    out = rng.choice(400, 80, replace=False)             # 20% gross outliers
    pred[out] = rng.uniform(pred.min(), pred.max(), 80)
    s, t, inl = align_scale_shift(pred, 1.0 / z)
    assert s == pytest.approx(s_true, rel=0.03)
    assert t == pytest.approx(t_true, abs=0.01)
    assert inl.sum() >= 300 and inl[out].mean() < 0.3
    with pytest.raises(ValueError):
        align_scale_shift(np.array([1.0]), np.array([2.0]))


def test_mono_backend_loads_a_tiny_local_model(tmp_path, synth_scene):
    transformers = pytest.importorskip("transformers", reason="transformers not installed: mono model loading "
                                       "is not tested (alignment is)")
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=56, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                              head_hidden_size=8, reassemble_hidden_size=32, patch_size=14)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(tmp_path / "model")
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=False).save_pretrained(tmp_path / "model")
    import shutil

    from vid2scene.scene import Scene

    # its own copy: the shared synthetic scene's MVS depth maps are read by later tests
    scene = Scene(shutil.copytree(synth_scene.scene.root, tmp_path / "scene"))
    res = depth.run(scene, Config(backend="mono", mono={"model_path": str(tmp_path / "model")}))
    assert res.qc["n_depth_maps"] > 0


def test_rerun_after_layout_still_uses_the_sfm_frame(ran, tmp_path):
    """After ``layout`` the scene has a metric world frame; a depth re-run still works in the SfM frame and
    gives the same maps, and the world-frame loader scales them to metres."""
    import shutil

    from vid2scene.scene import Scene

    synth, _ = ran
    scene = Scene(shutil.copytree(synth.scene.root, tmp_path / "scene"))
    f = next(f for f in synth.true_depth if f not in synth.unregistered)
    before = scene.depth(f)
    # emulate layout: world = 2.5 × a 90° yaw of the SfM frame
    S = np.eye(4)
    S[:3, :3] = 2.5 * np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    scene.write_layout({"frame": "gravity_z_up_metric", "units": "m", "world_from_sfm": S.tolist()})
    depth.run(scene, Config())
    after = scene.depth(f)
    np.testing.assert_allclose(after.depth, before.depth, rtol=1e-5, atol=1e-6)
    assert after.frame == "sfm"
    np.testing.assert_allclose(scene.depth(f, frame="world").depth, 2.5 * before.depth, rtol=1e-5, atol=1e-6)


def test_prompt_da_runs_through_the_stage_with_the_consistency_filter(tmp_path, synth_scene):
    """``depth.backend: prompt_da`` (a tiny random model: its values mean nothing) goes through the same stage
    recipe as ``mvs``: source views chosen, maps filtered across views, written as ``depth_sfm``."""
    pytest.importorskip("transformers", reason="transformers not installed: prompt_da is not tested")
    import shutil

    from vid2scene.scene import Scene

    scene = Scene(shutil.copytree(synth_scene.scene.root, tmp_path / "scene"))
    base = {"backend": "prompt_da", "prompt_da": {"model": "tiny", "device": "cpu", "input_size": 56,
                                                  "prompt_size": 16}}
    res = depth.run(scene, Config.model_validate(base))
    assert res.qc["backend"] == "prompt_da" and res.qc["n_depth_maps"] > 0
    assert res.qc["mean_source_views"] > 0  # sources were chosen for the cross-view filter
    frames = scene.depth_frames()
    filtered = sum(int((scene.depth(f).depth > 0).sum()) for f in frames)
    unfiltered_cfg = dict(base, prompt_da=dict(base["prompt_da"], geometric_filter=False), fill_weak="none")
    depth.run(scene, Config.model_validate(unfiltered_cfg))
    unfiltered = sum(int((scene.depth(f).depth > 0).sum()) for f in frames)
    assert unfiltered > 0 and filtered < unfiltered  # the filter removed inconsistent depths


def test_depth_maps_do_not_depend_on_the_number_of_workers(tmp_path, scene_builder):
    maps = []
    for workers in (1, 3):
        synth = scene_builder(tmp_path / f"w{workers}", n=6)
        depth.run(synth.scene, Config(workers=workers))
        maps.append({f: synth.scene.depth(f) for f in synth.scene.depth_frames()})
    assert maps[0].keys() == maps[1].keys() and maps[0]
    for f in maps[0]:
        np.testing.assert_array_equal(maps[0][f].depth, maps[1][f].depth)
        np.testing.assert_array_equal(maps[0][f].confidence, maps[1][f].confidence)


def test_plane_sweep_cost_is_one_minus_the_windowed_zncc():
    """With a source at the reference's pose every plane maps a pixel onto itself, so each plane's cost must
    be 1 - ZNCC of the two images over the window (box means, OpenCV's reflect-101 border), computed here
    pixel by pixel; pixels where the source is out of the image would cost 1 (none here)."""
    from types import SimpleNamespace

    import cv2

    from vid2scene.depth.base import View
    from vid2scene.depth.mvs import plane_sweep

    rng = np.random.default_rng(3)
    h, w, win = 24, 30, 5
    ref = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (3, 3), 0.8)
    src = (0.6 * ref + 0.3 * cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (3, 3), 0.8)).astype(np.float32)
    K = np.array([[25.0, 0, w / 2], [0, 25.0, h / 2], [0, 0, 1]])
    pose = np.eye(4)

    def view(i, grey):
        return View(index=i, frame=SimpleNamespace(cam_from_world=pose), load_rgb=lambda: None, scale=1.0,
                    grey=grey, K=K)

    cost, inv_depths, sd_r = plane_sweep(view(0, ref), [view(1, src)], (1.0, 4.0), 6, win, 1)
    r = win // 2
    pr, ps = (np.pad(a.astype(np.float64), r, mode="reflect") for a in (ref, src))
    expect = np.empty((h, w))
    for y in range(h):
        for x in range(w):
            a, b = pr[y:y + win, x:x + win].ravel(), ps[y:y + win, x:x + win].ravel()
            cov = (a * b).mean() - a.mean() * b.mean()
            expect[y, x] = 1 - cov / np.sqrt(max(a.var(), 0) * max(b.var(), 0) + 1e-8)
    assert cost.shape == (6, h, w) and np.all(np.diff(inv_depths) < 0)
    for p in range(6):
        np.testing.assert_allclose(cost[p], expect, atol=2e-4)
    np.testing.assert_allclose(sd_r, np.sqrt([[pr[y:y + win, x:x + win].var() for x in range(w)] for y in range(h)]),
                               atol=1e-4)

"""Pre-training on synthetic rooms: data paths, loss decrease, checkpoint resume, ablations, the linear probe."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.fixtures.ssl_rooms import CLASSES, make_room, make_rooms
from vid2scene.ssl.data import Sample, ViewConfig, clean, find_sources, load_sample, make_views
from vid2scene.ssl.model import preset
from vid2scene.ssl.probe import confusion, iou_per_class, miou, probe
from vid2scene.ssl.train import load_checkpoint, load_samples, pretrain


def _cfg(**kw):
    base = dict(steps=30, views=ViewConfig(max_points=600), num_prototypes=64, head_hidden=32, head_embed=16,
                checkpoint_every=100, lr=3e-3)
    base.update(kw)
    return preset("tiny", **base)


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssl_rooms")
    scenes = make_rooms(root / "scenes", 2, seed=0, kind="scene", density=25)
    pointcept = make_rooms(root / "pointcept", 3, seed=10, kind="pointcept", density=25)
    return {"root": root, "scenes": scenes, "pointcept": pointcept,
            "samples": load_samples(scenes + pointcept, _cfg())}


def test_sources_scene_and_pointcept_folders(rooms):
    assert find_sources([rooms["root"]]) == sorted(rooms["scenes"] + rooms["pointcept"])
    nested = rooms["scenes"][0] / "tasks" / "exports" / "pointcept" / "x"  # a scene's own export is not a source
    nested.mkdir(parents=True, exist_ok=True)
    np.save(nested / "coord.npy", np.zeros((3, 3), np.float32))
    assert find_sources([rooms["root"]]) == sorted(rooms["scenes"] + rooms["pointcept"])
    assert find_sources([nested]) == [nested]
    room = make_room(0, density=25)
    s = load_sample(rooms["scenes"][0])  # through Scene.points(frame="world")
    assert np.allclose(s.coord, room["coord"], atol=1e-5) and s.segment is None
    p = load_sample(rooms["pointcept"][0])
    assert p.segment is not None and p.coord.dtype == np.float32
    with pytest.raises(FileNotFoundError):
        find_sources([rooms["root"] / "missing"])


def test_clean_caps_outlier_removal_and_fills_normals():
    room = make_room(1, density=200)
    s = Sample(room["coord"], room["color"].astype(np.float32),
                                          np.zeros_like(room["normal"]))
    out = clean(s)
    assert len(out) >= 0.5 * len(s)
    assert np.allclose(np.linalg.norm(out.normal, axis=1), 1, atol=1e-4)
    floor = out.coord[:, 2] < 0.02
    assert np.median(np.abs(out.normal[floor, 2])) > 0.95  # PCA normals of the floor point up


def test_views_sizes_and_grid(rooms):
    s = rooms["samples"][0]
    vc = ViewConfig(max_points=1000)
    g, loc = make_views(s, vc, np.random.default_rng(0))
    assert len(g) == 2 and len(loc) == 4
    for v in g + loc:
        assert len(v.coord) <= 1000 and v.grid.min() >= 0
        assert len(np.unique(v.grid, axis=0)) == len(v.grid)  # one point per 2 cm voxel


def test_thirty_steps_reduce_the_loss_and_resume_repeats_the_next_step(rooms, tmp_path):
    cfg = _cfg()
    res = pretrain([rooms["root"]], tmp_path / "run", cfg, samples=rooms["samples"])
    log = json.loads((tmp_path / "run" / "log.json").read_text())["steps"]
    losses = [r["loss"] for r in log]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    for term in ("mask", "roll", "unmask", "laplacian", "consistency"):
        assert term in log[-1]
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 0
    assert res["steps"] == 30
    # resume: a 3-step run checkpointed at step 2, resumed in a fresh folder, repeats step 2 exactly
    short = cfg.model_copy(update={"steps": 3, "checkpoint_every": 2})
    pretrain([], tmp_path / "a", short, samples=rooms["samples"])
    ref = json.loads((tmp_path / "a" / "log.json").read_text())["steps"]
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "step_000002.pt", tmp_path / "b" / "checkpoints" / "last.pt")
    pretrain([], tmp_path / "b", short, samples=rooms["samples"])
    again = json.loads((tmp_path / "b" / "log.json").read_text())["steps"]
    assert len(again) == 3 and again[2]["loss"] == pytest.approx(ref[2]["loss"], rel=1e-6)
    ck = load_checkpoint(tmp_path / "b")
    assert ck["step"] == 3 and ck["config"]["steps"] == 3
    with pytest.raises(ValueError):
        pretrain([], tmp_path / "b", cfg, samples=rooms["samples"])  # different config in the same folder


def test_ablation_switches_drop_terms(rooms, tmp_path):
    cfg = _cfg(steps=2, laplacian=False, consistency=False)
    pretrain([], tmp_path / "abl", cfg, samples=rooms["samples"][:1])
    last = json.loads((tmp_path / "abl" / "log.json").read_text())["steps"][-1]
    assert "laplacian" not in last and "consistency" not in last and "mask" in last
    cfg = _cfg(steps=2, distill=False)
    pretrain([], tmp_path / "abl2", cfg, samples=rooms["samples"][:1])
    last = json.loads((tmp_path / "abl2" / "log.json").read_text())["steps"][-1]
    assert "mask" not in last and "laplacian" in last


def test_miou_by_hand():
    gt = np.array([0, 0, 1, 1, 2, -1])
    pred = np.array([0, 1, 1, 1, 0, 2])
    conf = confusion(pred, gt, 3)
    iou = iou_per_class(conf)
    assert np.allclose(iou, [1 / 3, 2 / 3, 0.0])
    assert miou(conf) == pytest.approx(1 / 3)


def test_probe_pretrained_and_random(rooms, tmp_path):
    cfg = _cfg(steps=2)
    pretrain([], tmp_path / "run", cfg, samples=rooms["samples"][:1])
    pc = rooms["pointcept"]
    res = probe(tmp_path / "run", pc[:2], pc[2:], label_key="segment", epochs=20, class_names=list(CLASSES))
    assert 0 <= res["miou"] <= 1 and "floor" in res["iou"] and res["channels"] == sum(cfg.backbone.channels)
    rnd = probe(None, pc[:2], pc[2:], label_key="segment", epochs=20, cfg=cfg)
    assert 0 <= rnd["miou"] <= 1 and rnd["n_val"] == 1

"""The first mapping restart lets COLMAP pick its initial pair under the smaller triangulation angle."""

from types import SimpleNamespace

import pycolmap

from vid2scene import sfm


class _Model:
    def __init__(self, n):
        self.n = n

    def num_reg_images(self):
        return self.n

    def reg_image_ids(self):
        return list(range(1, self.n + 1))


def _opts(angle):
    return SimpleNamespace(mapper=SimpleNamespace(init_min_tri_angle=angle), init_image_id1=-1, init_image_id2=-1)


def test_first_restart_uses_smaller_init_angle_and_keeps_the_larger_model(tmp_path, monkeypatch):
    seen = []

    def fake_mapping(db, images, out, opts, *a, **k):
        seen.append((opts.mapper.init_min_tri_angle, opts.init_image_id1))
        # the smaller angle registers everything; restarts inside other models would register less
        return {0: _Model(100 if opts.mapper.init_min_tri_angle < 16 else 40)}

    monkeypatch.setattr(pycolmap, "incremental_mapping", fake_mapping)
    cfg = sfm.Config()
    first = _Model(60)
    opts = _opts(cfg.init_min_tri_angle_deg)
    best = sfm._multi_start(tmp_path / "db", tmp_path, tmp_path, opts, {0: first, 1: _Model(30)}, first, 100, cfg)
    assert best.num_reg_images() == 100
    assert seen[0] == (cfg.restart_init_min_tri_angle_deg, -1)  # COLMAP chooses the pair, under 8 degrees
    assert len(seen) == 1  # 100/100 is above multi_start_below: no restart inside other models
    assert opts.mapper.init_min_tri_angle == cfg.init_min_tri_angle_deg  # restored for continuation passes


def test_no_restart_when_the_first_model_is_large_enough(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pycolmap, "incremental_mapping", lambda *a, **k: calls.append(1) or {})
    cfg = sfm.Config()
    first = _Model(99)
    assert sfm._multi_start(tmp_path, tmp_path, tmp_path, _opts(16.0), {0: first}, first, 100, cfg) is first
    assert calls == []

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


def _complete(tmp_path, monkeypatch, first_n, cont_n, restart_n, n=100):
    """Run ``sfm._complete_model`` with stand-ins: continuation passes bring a model to ``cont_n`` (or keep
    it), restarts find ``restart_n``; returns (result size, calls)."""
    calls = []

    def fake_rest(db, images, out, opts, model, passes, tag="", n_images=0):
        opts.mapper.abs_pose_min_num_inliers = 15  # what the real passes do to their options
        calls.append(("continue", model.num_reg_images(), tag))
        return _Model(max(model.num_reg_images(), cont_n if not tag else n))

    def fake_restart(db, images, out, opts, models, best, n_images, config, cut_short=False):
        calls.append(("restart", opts.mapper.abs_pose_min_num_inliers))
        return _Model(restart_n) if restart_n > best.num_reg_images() else best

    monkeypatch.setattr(sfm, "_register_rest", fake_rest)
    monkeypatch.setattr(sfm, "_multi_start", fake_restart)
    opts = SimpleNamespace(mapper=SimpleNamespace(init_min_tri_angle=16.0, abs_pose_min_num_inliers=30))
    first = _Model(first_n)
    out = sfm._complete_model(tmp_path, tmp_path, tmp_path, opts, {0: first}, first, [f"{i}" for i in range(n)],
                              sfm.Config())
    return out.num_reg_images(), calls


def test_continuation_comes_before_restarts_and_spares_them(tmp_path, monkeypatch):
    # the 60-s walk: continuation grows the first mapping's 229/336 to all; the restarts would find nothing
    size, calls = _complete(tmp_path, monkeypatch, first_n=68, cont_n=100, restart_n=68)
    assert size == 100 and calls == [("continue", 68, "")]


def test_restarts_run_when_continuation_cannot_grow_the_model(tmp_path, monkeypatch):
    # the sample clip: 79 -> 80 by continuation; the restart at 8 degrees maps more, and is continued
    size, calls = _complete(tmp_path, monkeypatch, first_n=54, cont_n=55, restart_n=97)
    assert size == 100
    assert calls[0] == ("continue", 54, "")
    assert calls[1] == ("restart", 30)  # the restarts get the mapping's options, not the relaxed passes'
    assert calls[2] == ("continue", 97, "restart_")


def test_the_continued_model_is_kept_when_restarts_find_nothing_larger(tmp_path, monkeypatch):
    size, calls = _complete(tmp_path, monkeypatch, first_n=50, cont_n=70, restart_n=60)
    assert size == 70 and [c[0] for c in calls] == ["continue", "restart"]


def test_a_complete_first_model_needs_neither(tmp_path, monkeypatch):
    size, calls = _complete(tmp_path, monkeypatch, first_n=100, cont_n=100, restart_n=0)
    assert size == 100 and calls == []


def test_a_cut_short_first_mapping_maps_its_other_models_before_restarting_inside_them(tmp_path, monkeypatch):
    seen = []

    def fake_mapping(db, images, out, opts, *a, **k):
        seen.append((opts.mapper.init_min_tri_angle, opts.init_image_id1))
        if opts.init_image_id1 != -1:
            return {0: _Model(96)}  # a restart inside one of the other models
        if opts.mapper.init_min_tri_angle == 16.0:
            return {0: _Model(5), 1: _Model(58), 2: _Model(30)}  # the first mapping run to its end
        return {0: _Model(60)}  # the restart at the smaller angle: short of 95%

    monkeypatch.setattr(pycolmap, "incremental_mapping", fake_mapping)
    cfg = sfm.Config()
    opts = _opts(cfg.init_min_tri_angle_deg)
    first = _Model(40)
    best = sfm._multi_start(tmp_path, tmp_path, tmp_path, opts, {0: _Model(3), 1: first}, first, 100, cfg,
                            cut_short=True)
    assert seen[0] == (cfg.restart_init_min_tri_angle_deg, -1)
    assert seen[1] == (cfg.init_min_tri_angle_deg, -1)  # the first mapping's other models
    assert seen[2][1] != -1 and best.num_reg_images() == 96
    seen.clear()
    (tmp_path / "again").mkdir()
    sfm._multi_start(tmp_path, tmp_path, tmp_path / "again", opts, {0: _Model(3), 1: first}, first, 100, cfg)
    assert (cfg.init_min_tri_angle_deg, -1) not in seen  # not cut short: its models are all there


class _Manager:
    def __init__(self):
        self.models = []

    def size(self):
        return len(self.models)

    def get(self, i):
        return self.models[i]


class _StandInPipeline:
    """pycolmap.IncrementalPipeline's constructor and add_callback; a test's subclass says what run does."""

    def __init__(self, options, database, manager):
        self.options, self.manager, self.callbacks = options, manager, {}

    def add_callback(self, kind, fn):
        self.callbacks[kind] = fn


def test_the_first_mapping_stops_once_a_model_holds_stop_share(tmp_path, monkeypatch):
    """A stand-in pipeline maps models of 3, 10, 79, 48, 42 keyframes (the sample clip's) and, like COLMAP's,
    ends after a model when ``multiple_models`` is off."""
    sizes = [3, 10, 79, 48, 42]

    class _Pipeline(_StandInPipeline):
        def run(self):
            for n in sizes:
                self.manager.models.append(_Model(n))
                self.callbacks[pycolmap.IncrementalPipelineCallback.LAST_IMAGE_REG_CALLBACK]()
                if not self.options.multiple_models:
                    return

    monkeypatch.setattr(pycolmap, "IncrementalPipeline", _Pipeline)
    monkeypatch.setattr(pycolmap, "ReconstructionManager", _Manager)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.image_names = [f"{i}.png" for i in range(147)]
    models, cut = sfm.first_mapping(tmp_path / "db.db", tmp_path, tmp_path, opts, 0.5)
    assert [m.num_reg_images() for m in models.values()] == [3, 10, 79] and cut
    assert opts.multiple_models  # the caller's options are not changed
    models, cut = sfm.first_mapping(tmp_path / "db.db", tmp_path, tmp_path, opts, 0.6)
    assert len(models) == 5 and not cut  # no model holds 60%: COLMAP's whole mapping


def test_map_images_passes_the_stop_share(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(sfm, "first_mapping", lambda db, img, out, opts, share: seen.append(share) or ({}, False))
    sfm.map_images(tmp_path / "db.db", tmp_path, tmp_path, sfm.Config(), ["a.png"])
    sfm.map_images(tmp_path / "db.db", tmp_path, tmp_path, sfm.Config(first_mapping_stop_share=1), ["a.png"])
    assert seen == [0.5, 1.0]


def test_continuation_stops_once_every_keyframe_is_registered(tmp_path, monkeypatch):
    class _Writable(_Model):
        def write(self, path):
            pass

    calls = []

    def fake_mapping(db, images, out, opts, input_path=None, **k):
        calls.append(input_path)
        return {0: _Writable(40 + 5 * len(calls))}  # each pass registers five more

    monkeypatch.setattr(pycolmap, "incremental_mapping", fake_mapping)
    opts = SimpleNamespace(multiple_models=True,
                           mapper=SimpleNamespace(abs_pose_min_num_inliers=30, abs_pose_min_inlier_ratio=0.25))
    (tmp_path / "a").mkdir()
    out = sfm._register_rest(tmp_path, tmp_path, tmp_path / "a", opts, _Writable(40), 3, n_images=45)
    assert out.num_reg_images() == 45 and len(calls) == 1  # complete after one pass: no second pass
    calls.clear()
    (tmp_path / "b").mkdir()
    out = sfm._register_rest(tmp_path, tmp_path, tmp_path / "b", opts, _Writable(40), 3, n_images=100)
    assert out.num_reg_images() == 55 and len(calls) == 3  # still growing: every pass runs
    assert opts.multiple_models is False and opts.mapper.abs_pose_min_num_inliers == 15


def test_the_first_mapping_lets_other_threads_run_at_each_registered_image(tmp_path, monkeypatch):
    """IncrementalPipeline.run holds the GIL; detect runs beside sfm in a thread. The stand-in's run holds the
    GIL too (``sum`` over a range runs in C, and forced switching is pushed to 5 s), registering 30 images; a
    ticker thread must still get to run between them."""
    import sys
    import threading
    import time

    class _Pipeline(_StandInPipeline):
        def run(self):
            self.manager.models.append(_Model(30))
            for _ in range(30):
                sum(range(1_000_000))  # C code holding the GIL, like a registration
                next_image = self.callbacks.get(pycolmap.IncrementalPipelineCallback.NEXT_IMAGE_REG_CALLBACK)
                if next_image is not None:
                    next_image()
            self.callbacks[pycolmap.IncrementalPipelineCallback.LAST_IMAGE_REG_CALLBACK]()

    monkeypatch.setattr(pycolmap, "IncrementalPipeline", _Pipeline)
    monkeypatch.setattr(pycolmap, "ReconstructionManager", _Manager)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.image_names = [f"{i}.png" for i in range(30)]
    ticks, running, stop = [0], threading.Event(), threading.Event()

    def ticker():
        running.set()
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.0005)

    old = sys.getswitchinterval()
    t = threading.Thread(target=ticker, daemon=True)
    t.start()
    running.wait(5)
    sys.setswitchinterval(5.0)
    try:
        before = ticks[0]
        models, _ = sfm.first_mapping(tmp_path / "db.db", tmp_path, tmp_path, opts, 0.5)
        during = ticks[0] - before
    finally:
        sys.setswitchinterval(old)
        stop.set()
        t.join(5)
    assert [m.num_reg_images() for m in models.values()] == [30]
    assert during >= 10, during

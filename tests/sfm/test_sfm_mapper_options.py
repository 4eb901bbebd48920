"""sfm.mapper_options: pass-through of pycolmap pipeline options, with a one-line error for a wrong name."""

import pytest

pycolmap = pytest.importorskip("pycolmap")

from vid2scene.errors import InputError  # noqa: E402
from vid2scene.sfm import Config, apply_mapper_options  # noqa: E402


def test_top_level_and_nested_options_are_set_with_the_attribute_type():
    opts = pycolmap.IncrementalPipelineOptions()
    apply_mapper_options(opts, {"ba_global_frames_ratio": 1.4, "mapper.abs_pose_max_error": 8,
                                "mapper.ba_local_num_images": 4.0})
    assert opts.ba_global_frames_ratio == pytest.approx(1.4)
    assert opts.mapper.abs_pose_max_error == pytest.approx(8.0)
    assert opts.mapper.ba_local_num_images == 4 and isinstance(opts.mapper.ba_local_num_images, int)


@pytest.mark.parametrize("key", ["no_such_option", "mapper.no_such_option", "nothing.ba_local_num_images",
                                 "__class__"])
def test_an_unknown_option_is_an_input_error_naming_it(key):
    with pytest.raises(InputError, match="no option"):
        apply_mapper_options(pycolmap.IncrementalPipelineOptions(), {key: 1})


def test_the_config_field_defaults_to_no_extra_options_and_validates_values():
    assert Config().mapper_options == {}
    assert Config(mapper_options={"ba_global_points_ratio": 1.3}).mapper_options["ba_global_points_ratio"] == 1.3
    with pytest.raises(Exception):
        Config(mapper_options={"ba_global_points_ratio": "fast"})


def test_map_images_passes_the_refinement_rounds_and_mapper_options_win(monkeypatch, tmp_path):
    """``ba_global_max_refinements`` (2; COLMAP's 5) reaches the options pycolmap maps with; an explicit
    ``mapper_options`` entry is applied after it and wins."""
    from vid2scene import sfm

    seen = []
    monkeypatch.setattr(sfm, "first_mapping", lambda db, img, out, opts, share: seen.append(opts) or ({}, False))
    assert sfm.map_images(tmp_path / "db.db", tmp_path, tmp_path, Config(), ["a.png"]) == (None, 0, set())
    assert seen[-1].ba_global_max_refinements == 2 != pycolmap.IncrementalPipelineOptions().ba_global_max_refinements
    sfm.map_images(tmp_path / "db.db", tmp_path, tmp_path,
                   Config(ba_global_max_refinements=3, mapper_options={"ba_global_max_refinements": 4}), ["a.png"])
    assert seen[-1].ba_global_max_refinements == 4
    sfm.map_images(tmp_path / "db.db", tmp_path, tmp_path, Config(ba_global_max_refinements=3), ["a.png"])
    assert seen[-1].ba_global_max_refinements == 3

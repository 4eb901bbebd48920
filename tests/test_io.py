"""``vid2scene.io``: atomic writes and listing only finished files."""

from __future__ import annotations

import pytest

from vid2scene.io import atomic_path, finished_files, read_json, write_json


def test_finished_files_skip_an_atomic_write_in_progress(tmp_path):
    write_json(tmp_path / "a.json", {"k": 1})
    with atomic_path(tmp_path / "b.json") as tmp:
        tmp.write_text("{")  # half-written, still under its temporary name
        assert tmp.name.startswith(".b.json.tmp.") and tmp.suffix == ".json"
        assert [p.name for p in finished_files(tmp_path, "*.json")] == ["a.json"]
    assert [p.name for p in finished_files(tmp_path, "*.json")] == ["a.json", "b.json"]


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    write_json(tmp_path / "a.json", {"k": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{")
            raise RuntimeError("crash")
    assert read_json(tmp_path / "a.json") == {"k": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]

"""``vid2scene ssl pretrain|probe`` through the typer sub-app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.fixtures.ssl_rooms import make_rooms
from vid2scene.ssl.cli import ssl_app


def test_cli_pretrain_then_probe(tmp_path):
    rooms = make_rooms(tmp_path / "rooms", 3, seed=20, density=25)
    run = tmp_path / "run"
    r = CliRunner().invoke(ssl_app, ["pretrain", str(rooms[0]), "-o", str(run), "--steps", "1", "--device", "cpu",
                                     "--no-consistency"])
    assert r.exit_code == 0, r.output
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "loss_curve.png").is_file()
    assert "consistency" not in json.loads((run / "log.json").read_text())["steps"][0]
    out = tmp_path / "probe.json"
    r = CliRunner().invoke(ssl_app, ["probe", str(run), str(rooms[1]), "--val", str(rooms[2]), "--labels", "segment",
                                     "--epochs", "3", "--device", "cpu", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert 0 <= json.loads(out.read_text())["miou"] <= 1
    r = CliRunner().invoke(ssl_app, ["pretrain", str(rooms[0]), "-o", str(run), "--config", "huge"])
    assert r.exit_code != 0

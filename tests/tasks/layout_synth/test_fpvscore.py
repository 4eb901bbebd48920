"""The FPVScore client against a local OpenAI-compatible server on 127.0.0.1 (bounded: it stops itself):
request shape, parsing, retries, timeouts, malformed replies; and the generator writing ``after.fpvscore``."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest

from tests.fixtures import layout_scene as ls
from tests.fixtures.fake_openai import FakeChatServer
from vid2scene.errors import StageFailed
from vid2scene.io import read_json
from vid2scene.tasks import layout_synth as L
from vid2scene.tasks.layout_synth.fpvscore import (ENV_BASE_URL, RUBRIC, FPVScoreClient, FPVScoreConfig,
                                                   parse_reply)

GOOD = json.dumps({**{k: 4 for k in RUBRIC}, "navigability": 2, "comment": "A tidy room; the aisle is narrow."})


@pytest.fixture
def server():
    made = []

    def make(*actions):
        s = FakeChatServer(actions or ["ok"], GOOD)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


FRAMES = [np.full((24, 32, 3), 30 * k, np.uint8) for k in range(5)]


def client(url, **kw):
    return FPVScoreClient(FPVScoreConfig(enabled=True, base_url=url, **{"retries": 0, "timeout_s": 5, **kw}))


def test_request_shape_and_score(server):
    s = server(GOOD)
    out = client(s.url, model="qwen2.5-vl", api_key="sekret", max_frames=3).score(FRAMES, ["chair", "chair", "tv"])
    assert out["criteria"]["navigability"] == 2 and out["score"] == pytest.approx((3.5 - 1) / 4)
    assert out["comment"] == "A tidy room; the aisle is narrow." and out["n_frames"] == 3 and out["model"] == "qwen2.5-vl"
    req = s.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sekret"
    body = req["body"]
    assert body["model"] == "qwen2.5-vl" and body["temperature"] == 0 and len(body["messages"]) == 1
    parts = body["messages"][0]["content"]
    assert parts[0]["type"] == "text" and "2 chair, 1 tv" in parts[0]["text"]
    assert all(k in parts[0]["text"] for k in RUBRIC)
    assert [p["type"] for p in parts[1:]] == ["image_url"] * 3
    png = base64.b64decode(parts[1]["image_url"]["url"].split(",", 1)[1])
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,") and png[:4] == b"\x89PNG"


def test_base_url_from_the_environment(server, monkeypatch):
    s = server(GOOD)
    monkeypatch.setenv(ENV_BASE_URL, s.url + "/v1/")
    c = FPVScoreClient(FPVScoreConfig(enabled=True, retries=0))
    assert c.url == s.url + "/v1/chat/completions" and c.score(FRAMES[:1], [])["score"] > 0
    monkeypatch.delenv(ENV_BASE_URL)
    with pytest.raises(StageFailed, match="base_url"):
        FPVScoreClient(FPVScoreConfig(enabled=True))


def test_fenced_and_embedded_json_replies():
    assert parse_reply("```json\n" + GOOD + "\n```")["criteria"]["realism"] == 4
    assert parse_reply("Here you go: " + GOOD + " Thanks.")["score"] == pytest.approx(0.625)


@pytest.mark.parametrize("reply, match", [
    ("RAW:not json at all", "not JSON"),
    ("RAW:" + json.dumps({"choices": []}), "unexpected reply"),
    ("RAW:" + json.dumps({"result": "ok"}), "unexpected reply"),
    ("I think the room looks fine.", "malformed answer"),
    (json.dumps({k: 4 for k in list(RUBRIC)[:-1]}), "malformed answer"),                  # a criterion missing
    (json.dumps({**{k: 4 for k in RUBRIC}, "realism": 9}), "malformed answer"),           # out of range
    (json.dumps({**{k: 4 for k in RUBRIC}, "realism": "good"}), "malformed answer"),      # not a number
    (json.dumps([1, 2, 3]), "malformed answer"),
])
def test_malformed_replies_raise(server, reply, match):
    s = server(reply)
    with pytest.raises(StageFailed, match=match):
        client(s.url).score(FRAMES[:1], ["chair"])


def test_timeout_retries_and_http_errors(server):
    s = server("sleep")
    t0 = time.perf_counter()
    with pytest.raises(StageFailed, match="timed out after 0.3 s"):
        client(s.url, timeout_s=0.3, retries=1, backoff_s=0.01).score(FRAMES[:1], [])
    assert time.perf_counter() - t0 < 2.0 and len(s.requests) == 2
    s = server("500", "500", GOOD)
    assert client(s.url, retries=2, backoff_s=0.01).score(FRAMES[:1], [])["score"] > 0 and len(s.requests) == 3
    s = server("400", GOOD)
    with pytest.raises(StageFailed, match="HTTP 400"):
        client(s.url, retries=3, backoff_s=0.01).score(FRAMES[:1], [])
    assert len(s.requests) == 1  # a client error is not retried
    s = server(GOOD)
    url = s.url
    s.close()
    with pytest.raises(StageFailed, match="cannot get an answer"):
        client(url, retries=0).score(FRAMES[:1], [])


def fast(**kw) -> L.Config:
    return L.Config(render={"width": 64, "max_trajectory_frames": 2, "max_walk_frames": 3}, max_agreement_frames=2,
                    agreement_width=64, **kw)


def test_generator_writes_fpvscore(server, tmp_path):
    s = server(GOOD)
    scene = ls.write_layout_scene(tmp_path / "s", n_cameras=4)
    res = L.run(scene, fast(fpvscore={"enabled": True, "base_url": s.url, "retries": 0, "max_frames": 4}))
    fpv = read_json(scene.task_path("layout_synth/scores.json"))["after"]["fpvscore"]
    assert fpv["status"] == "ok" and fpv["score"] == pytest.approx(0.625) and fpv["n_frames"] == 4
    assert res.warnings == []
    bad = server("nonsense")
    res = L.run(scene, fast(fpvscore={"enabled": True, "base_url": bad.url, "retries": 0}))
    fpv = read_json(scene.task_path("layout_synth/scores.json"))["after"]["fpvscore"]
    assert fpv["status"] == "failed" and "malformed" in fpv["reason"] and res.warnings == [fpv["reason"]]

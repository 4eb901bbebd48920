"""The optional VLM labeller backend (``instances.captioner = "openai"``) against a small OpenAI-compatible server the
test starts on 127.0.0.1: request format (model, base64 JPEG crop, key), reply parsing, retries on 5xx,
timeouts, a server that is down, a missing base URL, and the stage filling ``caption``."""

from __future__ import annotations

import base64
import socket

import cv2
import numpy as np
import pytest

from tests.fixtures.fake_openai import FakeChatServer
from vid2scene.errors import BackendNotInstalled, StageFailed
from vid2scene.instances.labellers import BACKENDS, ENV_BASE_URL, OpenAICompatLabeller, caption_instances


OK_REPLY = '{"label": "Office Chair", "caption": "A black mesh office chair."}'


@pytest.fixture
def vlm(request):
    servers = []

    def make(*actions):
        s = FakeChatServer(actions or ["ok"], OK_REPLY)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


CROP = np.full((40, 30, 3), (200, 30, 30), np.uint8)


def labeller(base_url=None, **options):
    return OpenAICompatLabeller(OpenAICompatLabeller.Options(base_url=base_url, **options))


def test_request_format_and_reply(vlm):
    s = vlm("ok")
    lab = labeller(s.url, model="qwen2-vl", api_key="sekret", timeout_s=5, retries=0)
    out = lab.describe(CROP, "chair")
    assert out == {"label": "office chair", "caption": "A black mesh office chair."}
    req = s.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sekret"
    assert req["body"]["model"] == "qwen2-vl"
    parts = req["body"]["messages"][0]["content"]
    assert "chair" in parts[0]["text"]
    url = parts[1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    img = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (40, 30, 3) and abs(int(img[..., 2].mean()) - 200) < 10  # the crop itself (BGR)


def test_plain_text_and_fenced_replies(vlm):
    s = vlm("```json\n{\"label\": \"sofa\", \"caption\": \"A grey sofa.\"}\n```")
    assert labeller(s.url + "/v1", retries=0).describe(CROP, "couch") == {"label": "sofa",
                                                                                      "caption": "A grey sofa."}
    s2 = vlm("A wooden table with papers.\nmore")
    assert labeller(s2.url, retries=0).describe(CROP, "dining table") == {
        "label": "dining table", "caption": "A wooden table with papers."}


def test_retries_on_server_errors_then_succeeds(vlm):
    s = vlm("500", "500", "ok")
    out = labeller(s.url, retries=2, backoff_s=0.01).describe(CROP)
    assert out["label"] == "office chair" and len(s.requests) == 3


def test_gives_up_with_a_one_line_reason(vlm):
    s = vlm("500")
    with pytest.raises(StageFailed, match=r"HTTP 500.*after 2 tries") as e:
        labeller(s.url, retries=1, backoff_s=0.01).describe(CROP)
    assert "\n" not in str(e.value) and len(s.requests) == 2
    s4 = vlm("400")
    with pytest.raises(StageFailed, match="refused the request: HTTP 400"):
        labeller(s4.url, retries=3, backoff_s=0.01).describe(CROP)
    assert len(s4.requests) == 1  # a client error is not retried


def test_timeout(vlm):
    s = vlm("sleep")
    with pytest.raises(StageFailed, match="timed out after 0.2 s"):
        labeller(s.url, timeout_s=0.2, retries=1, backoff_s=0.01).describe(CROP)


def test_server_down():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on this port now
    with pytest.raises(StageFailed, match=r"instances: labeller: cannot get an answer from .*after 2 tries"):
        labeller(f"http://127.0.0.1:{port}", retries=1, backoff_s=0.01).describe(CROP)


def test_missing_base_url(monkeypatch):
    monkeypatch.delenv(ENV_BASE_URL, raising=False)
    with pytest.raises(BackendNotInstalled, match=ENV_BASE_URL):
        OpenAICompatLabeller()
    assert not OpenAICompatLabeller.is_installed()[0]
    from vid2scene.instances import Config
    from vid2scene.instances.labellers import make_labeller

    with pytest.raises(BackendNotInstalled, match=ENV_BASE_URL):
        make_labeller(Config(captioner="openai"))
    assert make_labeller(Config()) is None and set(BACKENDS) == {"none", "openai"}
    with pytest.raises(ValueError, match="unknown instances labeller backend"):
        Config(captioner="florence")


def test_env_configuration_and_stage_captions(vlm, tmp_path, monkeypatch):
    from vid2scene.instances import Config
    from vid2scene.scene import Scene

    s = vlm("ok")
    monkeypatch.setenv(ENV_BASE_URL, s.url)
    monkeypatch.setenv("VID2SCENE_VLM_MODEL", "env-model")
    scene = Scene(tmp_path)
    scene.frames_dir.mkdir()
    cv2.imwrite(str(scene.keyframe_path(7)), np.full((60, 80, 3), 128, np.uint8))
    insts = [{"label": "chair", "views": [{"frame": 7, "bbox_xyxy": [10, 10, 40, 50], "score": 0.8, "iou": 0.7}],
              "caption": None},
             {"label": "tv", "views": [], "caption": None}]
    n = caption_instances(scene, insts, Config(captioner="openai", openai={"retries": 0}))
    assert n == 1 and insts[0]["caption"] == "A black mesh office chair." and insts[0]["caption_label"] == "office chair"
    assert insts[1]["caption"] is None
    assert s.requests[0]["body"]["model"] == "env-model"

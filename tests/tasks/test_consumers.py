"""Conformance of the task outputs with their consumers, written from those consumers' code and docs (facts, not
their code): VLN-CE's ``VLNCEDatasetV1`` / habitat's ``VocabDict`` and its NDTW ground-truth file, habitat-sim's
scene file (binary glTF, y up), and GPT4Scene's loader (``scene_anno[scene_id]`` → images) with LLaMA-Factory's
ShareGPT format. Run on the synthetic scene of :mod:`tests.fixtures.task_scene`, and on a copy of a real scene
folder when ``VID2SCENE_REAL_SCENE`` names one."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.task_scene import write_scene
from vid2scene.scene import Scene
from vid2scene.tasks import bev, common, nav, vln

REAL = os.environ.get("VID2SCENE_REAL_SCENE")

# habitat-lab's Episode / NavigationEpisode and VLN-CE's VLNExtendedEpisode (attrs, kw_only): the only keys
# VLNExtendedEpisode(**episode) accepts
EPISODE_FIELDS = {"episode_id", "scene_id", "scene_dataset_config", "additional_obj_config_paths", "start_position",
                  "start_rotation", "info", "goals", "start_room", "shortest_paths", "reference_path", "instruction",
                  "trajectory_id"}
REQUIRED = {"episode_id", "scene_id", "start_position", "start_rotation", "goals", "reference_path", "instruction"}
INSTRUCTION_FIELDS = {"instruction_text", "instruction_tokens"}  # habitat's InstructionData(**instruction)
GOAL_FIELDS = {"position", "radius"}  # NavigationGoal


@pytest.fixture(scope="module", params=["synthetic"] + (["real"] if REAL else []))
def scene_dir(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("taskconsumers")
    if request.param == "synthetic":
        return write_scene(root / "room")
    dst = root / Path(REAL).name
    shutil.copytree(REAL, dst, ignore=shutil.ignore_patterns("tasks", "frames_all", "depth"))
    return dst


@pytest.fixture(scope="module")
def vln_files(scene_dir) -> dict:
    qc = vln.run(scene_dir, vln.Config(stride_m=0.5)).qc
    return {"qc": qc, **{k: p for k, p in vln.split_paths(scene_dir, "train").items()}}


def _vocab_dict(word_list):
    """habitat's VocabDict(word_list=...) as documented: <unk> prepended when missing, index = position."""
    words = word_list if "<unk>" in word_list else ["<unk>"] + word_list
    w2i = {w: i for i, w in enumerate(words)}
    return words, w2i, w2i["<unk>"], w2i.get("<pad>")


def _habitat_tokenize(s: str) -> list[str]:
    s = s.lower().replace("'s", " 's").replace(",", "").replace("?", "")
    return [t.strip() for t in re.split(r"([^\w-]+)", s) if t.strip()]


def test_vlnce_dataset_loads_as_vlncedatasetv1_reads_it(scene_dir, vln_files):
    assert vln_files["dataset"].name == "train.json.gz"  # DATA_PATH "{split}/{split}.json.gz"
    with gzip.open(vln_files["dataset"], "rt") as f:  # VLNCEDatasetV1.__init__
        d = json.loads(f.read())
    words, w2i, unk, pad = _vocab_dict(d["instruction_vocab"]["word_list"])  # from_json reads only word_list
    v = d["instruction_vocab"]
    assert v["word_list"] == words and v["stoi"] == v["word2idx_dict"] == w2i and v["itos"] == words
    assert v["num_vocab"] == len(words) and (v["UNK_INDEX"], v["PAD_INDEX"]) == (unk, pad) == (1, 0)
    assert d["episodes"] and vln_files["qc"]["n_episodes"] == len(d["episodes"])
    sname = scene_dir.resolve().name
    for e in d["episodes"]:
        assert set(e) <= EPISODE_FIELDS and REQUIRED <= set(e), set(e) - EPISODE_FIELDS
        assert set(e["instruction"]) <= INSTRUCTION_FIELDS and isinstance(e["instruction"]["instruction_text"], str)
        for g in e["goals"]:
            assert set(g) <= GOAL_FIELDS and g["radius"] == 3.0 and len(g["position"]) == 3
        assert len(e["start_position"]) == 3 and len(e["start_rotation"]) == 4
        assert np.linalg.norm(e["start_rotation"]) == pytest.approx(1.0)
        # scene_id: SCENES_DIR-relative .glb; _scene_from_episode = its basename without extension
        assert e["scene_id"] == f"{sname}/{sname}.glb"
        assert (vln.vln_dir(scene_dir) / "scene_datasets" / e["scene_id"]).is_file()
        assert os.path.splitext(os.path.basename(e["scene_id"]))[0] == sname
        # instruction_tokens: vocabulary indices of habitat's tokenizer, padded with <pad> to 200
        tok = e["instruction"]["instruction_tokens"]
        assert len(tok) == 200 and all(isinstance(t, int) for t in tok)
        n = len(_habitat_tokenize(e["instruction"]["instruction_text"]))
        assert [words[t] for t in tok[:n]] == _habitat_tokenize(e["instruction"]["instruction_text"])
        assert all(t == pad for t in tok[n:]) and unk not in tok[:n]
        # geodesic_distance: consistent with the reference path (its length)
        ref = np.asarray(e["reference_path"])
        assert e["info"]["geodesic_distance"] == pytest.approx(np.linalg.norm(np.diff(ref, axis=0), axis=1).sum(),
                                                               abs=1e-3)
        assert ref[0].tolist() == e["start_position"] and ref[-1].tolist() == e["goals"][0]["position"]
        assert isinstance(e["episode_id"], int) and isinstance(e["trajectory_id"], int)


def test_vlnce_ground_truth_file_is_what_ndtw_reads(vln_files):
    assert vln_files["gt"].name == "train_gt.json.gz"  # GT_PATH "{split}/{split}_gt.json.gz"
    with gzip.open(vln_files["gt"], "rt") as f:
        gt = json.load(f)
    d = vln.read_gz(vln_files["dataset"])
    assert set(gt) == {str(e["episode_id"]) for e in d["episodes"]}  # NDTW: gt_json[str(episode.episode_id)]
    for e in d["episodes"]:
        g = gt[str(e["episode_id"])]
        locs = np.asarray(g["locations"])
        assert locs.ndim == 2 and locs.shape[1] == 3 and len(locs) >= 2
        assert locs[0].tolist() == pytest.approx(e["start_position"], abs=1e-3)
        assert np.linalg.norm(locs[-1] - np.asarray(e["goals"][0]["position"])) < 0.5
        assert g["forward_steps"] == sum(a == nav.FORWARD for a in g["actions"]) == len(locs) - 1
        assert g["actions"][-1] == nav.STOP and set(g["actions"]) <= {0, 1, 2, 3}
        assert np.all(np.abs(np.diff(locs, axis=0)).sum(axis=1) > 0)  # no repeated location
        assert np.allclose(locs[:, 1], 0.0)  # on the floor: habitat y = 0
    extra = vln.read_gz(vln_files["extra"])
    assert set(extra["episodes"]) == set(gt) and all("template" in x for x in extra["episodes"].values())


def test_habitat_scene_is_a_y_up_glb_of_the_mesh(scene_dir, vln_files):
    import trimesh

    sname = scene_dir.resolve().name
    glb = vln.vln_dir(scene_dir) / "scene_datasets" / sname / f"{sname}.glb"
    assert glb.read_bytes()[:4] == b"glTF"  # binary glTF, what habitat-sim loads as a y-up stage
    loaded = trimesh.load(glb, force="mesh", process=False)
    world = common.mesh(scene_dir)
    keep = world.vertices[:, 2] >= -0.25  # the floor clean-up drops deeper vertices, snaps the rest to z = 0
    expect = world.vertices[keep].copy()
    expect[:, 2] = np.maximum(expect[:, 2], 0)
    assert len(loaded.vertices) == len(expect) == vln_files["qc"]["glb_vertices"]
    assert np.allclose(loaded.vertices, np.c_[expect[:, 0], expect[:, 2], -expect[:, 1]], atol=1e-4)
    assert loaded.vertices[:, 1].min() == pytest.approx(0.0, abs=1e-5)  # floor at y = 0, up = +y
    assert loaded.visual.vertex_colors.shape[0] == len(loaded.vertices)
    d = vln.read_gz(vln_files["dataset"])
    lo, hi = loaded.vertices.min(axis=0), loaded.vertices.max(axis=0)
    for e in d["episodes"]:  # episodes lie on the scene's floor, inside its extent
        p = np.asarray(e["start_position"])
        assert p[1] == 0.0 and np.all(p[[0, 2]] >= lo[[0, 2]] - 0.5) and np.all(p[[0, 2]] <= hi[[0, 2]] + 0.5)


def test_vocab_from_a_file_indexes_with_its_words(scene_dir, tmp_path):
    words = ["<pad>", "<unk>", "walk", "the", "stop"]
    (tmp_path / "vocab.json").write_text(json.dumps(words))
    docs, _ = vln.generate(scene_dir, vln.Config(vocab=tmp_path / "vocab.json"))
    v = docs["dataset"]["instruction_vocab"]
    assert v["word_list"] == words
    for e in docs["dataset"]["episodes"]:
        toks = _habitat_tokenize(e["instruction"]["instruction_text"])
        ids = e["instruction"]["instruction_tokens"][:len(toks)]
        assert ids == [words.index(t) if t in words else 1 for t in toks]


@pytest.fixture(scope="module", params=["synthetic"] + (["real"] if REAL else []))
def g4s_dir(request, tmp_path_factory) -> Path:
    if request.param == "synthetic":
        from tests.fixtures.five_objects import build_scene

        return build_scene(tmp_path_factory.mktemp("g4s") / "room5").scene.root
    dst = tmp_path_factory.mktemp("g4s") / Path(REAL).name
    shutil.copytree(REAL, dst, ignore=shutil.ignore_patterns("tasks", "frames_all", "depth"))
    return dst


def test_gpt4scene_scene_anno_and_sharegpt_training_file(g4s_dir):
    from PIL import Image

    scene_dir = g4s_dir
    assert bev.Config().n_frames == 32  # GPT4Scene's released model: 32 frames
    out = bev.generate(scene_dir, bev.Config(max_side_px=256))
    d = Scene(scene_dir).task_path("gpt4scene")
    sid = common.scene_name(scene_dir)
    anno = json.loads((d / "scene_anno.json").read_text())
    paths = anno[sid]  # GPT4Scene's loader: scene_anno[scene_id] -> the image list of that scene
    n_reg = len(common.cameras(scene_dir))
    assert len(paths) == 1 + min(32, n_reg) == out["gpt4scene"]["n_images"]
    assert paths[0].endswith("bev.png") and all(Path(p).is_file() for p in paths)
    for p in paths[:3]:
        Image.open(p).verify()
    doc = json.loads(Scene(scene_dir).task_path("gpt4scene.json").read_text())
    frames = [f["source_frame"] for f in doc["frames"]]
    assert frames == sorted(frames) and [Path(p).name for p in paths[1:]] == [f"{f:06d}.jpg" for f in frames]
    # LLaMA-Factory's sharegpt format as registered in dataset_info.json
    info = json.loads((d / "dataset_info.json").read_text())
    (name, reg), = info.items()
    assert reg["formatting"] == "sharegpt" and (d / reg["file_name"]).is_file()
    cols, tags = reg["columns"], reg["tags"]
    rows = json.loads((d / reg["file_name"]).read_text())
    assert rows and out["gpt4scene"]["n_samples"] == len(rows)
    tags_seen = set()
    for r in rows:
        msgs, images = r[cols["messages"]], r[cols["images"]]
        assert [m[tags["role_tag"]] for m in msgs] == [tags["user_tag"], tags["assistant_tag"]]
        # the number of <image> placeholders must equal the number of images
        assert sum(m[tags["content_tag"]].count("<image>") for m in msgs) == len(images) == len(paths)
        assert images == paths and msgs[1][tags["content_tag"]]
        tags_seen |= set(re.findall(r"<OBJ\d{3}>", msgs[0][tags["content_tag"]] + msgs[1][tags["content_tag"]]))
    objects = {o["tag"] for o in doc["objects"]}
    assert tags_seen and tags_seen <= objects
    assert {r["task"] for r in rows} >= {"identify", "ground"}

"""GPT4Scene training files from the BEV and the marked keyframes of :mod:`.bev` (Qi et al., 2025, "GPT4Scene:
Understand 3D Scenes from Videos with Vision-Language Models"; code: Qi-Zhangyang/GPT4Scene-and-VLN-R1).

What GPT4Scene's code reads, and what is written here (under ``SCENE/tasks/gpt4scene/``):

``scene_anno.json``
    ``{scene_id: [image path, ...]}``: its data loader looks ``scene_anno[scene_id]`` up for every annotation
    row and puts every image of that list, in order, before the text prompt of the user turn. The list is the
    BEV first, then the marked frames in time order (the "bev + multi-frame" input of the released
    ``..._mark_32_3D_img512`` model, which sees 32 frames).
``train_sharegpt.json``
    A ShareGPT-style training set (LLaMA-Factory's ``sharegpt`` formatting, which GPT4Scene trains with): a
    list of ``{"id", "scene_id", "task", "conversations": [{"from": "human", "value": "<image>" × n_images +
    question}, {"from": "gpt", "value": answer}], "images": [the scene_anno list]}``. LLaMA-Factory requires the
    number of ``<image>`` placeholders to equal the number of images; objects are named by their markers
    (``<OBJ###>``, drawn on every image). Tasks: ``identify`` ("What is <OBJ003>?" → the label), ``ground``
    ("Which objects are chairs?" → the tags, comma-separated, GPT4Scene's Multi3DRef answer style) and ``vqa``
    (the scene's ``tasks/vqa.jsonl`` questions, when present, answered with their ground truth: the option
    text for multiple choice, the number otherwise).
``dataset_info.json``
    The LLaMA-Factory registration of that file: ``{"vid2scene_gpt4scene": {"file_name":
    "train_sharegpt.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "images":
    "images"}, "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag":
    "gpt"}}}``.

Image paths are absolute, or relative to ``image_root`` when given (GPT4Scene opens them as written, relative
to its working directory).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..io import read_json, write_json
from ..scene import Scene

DATASET_NAME = "vid2scene_gpt4scene"
OUT_DIR = "gpt4scene"
IMAGE_TOKEN = "<image>"


def image_paths(scene: Scene, doc: dict, image_root: str | Path | None = None) -> list[str]:
    """The scene's GPT4Scene image list: ``tasks/bev.png`` then every marked frame of ``gpt4scene.json`` (``doc``)
    in time order; absolute, or relative to ``image_root``."""
    rel = [doc["bev"]["image"]] + [f["image"] for f in sorted(doc["frames"], key=lambda f: f["source_frame"])]
    paths = [scene.task_path(r).resolve() for r in rel]
    if image_root is None:
        return [str(p) for p in paths]
    root = Path(image_root).resolve()
    return [Path(os.path.relpath(p, root)).as_posix() for p in paths]


def _plural(label: str) -> str:
    return label if label.endswith("s") else label + "s"


def _vqa_answer(q: dict) -> str | None:
    gt = q.get("ground_truth")
    if gt is None:
        return None
    if q.get("options"):
        for opt in q["options"]:
            if str(opt).strip().upper().startswith(str(gt).strip().upper() + "."):
                return str(opt).strip()
        return str(gt)
    return str(gt)


def conversations(doc: dict, vqa_rows: list[dict] | None = None) -> list[tuple[str, str, str]]:
    """``(task, question, answer)`` triples for one scene from ``gpt4scene.json`` (``doc``: its ``objects``
    with ``tag`` / ``label``) and optional VQA rows (module docstring)."""
    out = []
    objects = [o for o in doc.get("objects", []) if o.get("label")]
    for o in objects:
        out.append(("identify", f"What is the object {o['tag']}? Answer with its name.", str(o["label"])))
    by_label: dict[str, list[dict]] = {}
    for o in objects:
        by_label.setdefault(str(o["label"]), []).append(o)
    for label, objs in sorted(by_label.items()):
        tags = ", ".join(o["tag"] for o in sorted(objs, key=lambda o: o["id"]))
        out.append(("ground", f"Which objects are {_plural(label)}? Answer with their IDs in the format "
                              "'<OBJ###>', separated by commas.", tags))
    for q in vqa_rows or []:
        ans = _vqa_answer(q)
        if not q.get("question") or ans is None:
            continue
        text = str(q["question"])
        if q.get("options"):
            text += "\nOptions:\n" + "\n".join(str(x) for x in q["options"])
        out.append(("vqa", text, ans))
    return out


def training_records(scene_id: str, images: list[str], triples: list[tuple[str, str, str]]) -> list[dict]:
    """ShareGPT records (module docstring) of one scene: every question preceded by one ``<image>`` per image."""
    prefix = IMAGE_TOKEN * len(images) + "\n"
    return [{"id": f"{scene_id}_{k:05d}", "scene_id": scene_id, "task": task,
             "conversations": [{"from": "human", "value": prefix + q}, {"from": "gpt", "value": a}],
             "images": list(images)} for k, (task, q, a) in enumerate(triples)]


def dataset_info(file_name: str = "train_sharegpt.json") -> dict:
    """LLaMA-Factory ``dataset_info.json`` entry registering ``file_name`` (module docstring)."""
    return {DATASET_NAME: {"file_name": file_name, "formatting": "sharegpt",
                           "columns": {"messages": "conversations", "images": "images"},
                           "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                    "assistant_tag": "gpt"}}}


def write(scene: Scene, doc: dict, scene_id: str, image_root: str | Path | None = None) -> dict:
    """Write ``scene_anno.json``, ``train_sharegpt.json`` and ``dataset_info.json`` under
    ``SCENE/tasks/gpt4scene/``; returns ``{"scene_anno", "train", "dataset_info", "n_images", "n_samples"}``
    (paths and counts)."""
    images = image_paths(scene, doc, image_root)
    vqa_path = scene.task_path("vqa.jsonl")
    rows = []
    if vqa_path.is_file():
        from .eval_vqa import read_jsonl

        try:
            rows = read_jsonl(vqa_path, "questions")
        except Exception:  # an unreadable question file: the other tasks are still written
            rows = []
    records = training_records(scene_id, images, conversations(doc, rows))
    d = scene.task_path(OUT_DIR)
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "scene_anno.json", {scene_id: images})
    write_json(d / "train_sharegpt.json", records, indent=None)
    write_json(d / "dataset_info.json", dataset_info())
    return {"scene_anno": str(d / "scene_anno.json"), "train": str(d / "train_sharegpt.json"),
            "dataset_info": str(d / "dataset_info.json"), "n_images": len(images), "n_samples": len(records)}


def read_scene_anno(path: str | Path) -> dict[str, list[str]]:
    """``scene_anno.json`` back: ``{scene_id: [image paths]}``."""
    return read_json(path)

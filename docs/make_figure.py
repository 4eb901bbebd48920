"""Make docs/sample_result.png from a scene folder: top-down camera path over the sparse points, beside keyframes.

    python docs/make_figure.py scenes/sample docs/sample_result.png
"""

import sys

import cv2
import numpy as np

from vid2scene.report import top_down_view
from vid2scene.scene import Scene


def main(scene_dir: str, out: str) -> None:
    scene = Scene(scene_dir)
    cams = [c for c in scene.cameras(frame="world") if c.registered]
    pts = scene.sparse_points(frame="world").points
    centers = np.array([c.center_in_world for c in cams])
    top = top_down_view(pts, centers, size=480)
    pick = np.linspace(0, len(cams) - 1, 6).astype(int)
    tiles = [cv2.resize(scene.frame_image(cams[i].source_frame), (240, 160), interpolation=cv2.INTER_AREA)
             for i in pick]
    grid = np.vstack([np.hstack(tiles[r * 2:(r + 1) * 2]) for r in range(3)])
    canvas = np.full((480, 480 + 480 + 10, 3), 255, np.uint8)
    canvas[:, :480] = top
    canvas[:, 490:] = grid
    cv2.putText(canvas, f"{len(cams)} registered keyframes, {len(pts)} sparse points", (10, 470),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(out, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""vid2scene: lift unlabeled walkthrough videos into 3D scene-understanding data."""

__version__ = "0.1.0"

"""The three adaptation losses and their helpers (PyTorch).

Anchor loss (SfM anchors ``X_k``, the model's pixel-aligned points ``X̂_k`` at the anchors' pixels)::

    (s, R, t) = Umeyama(X̂ → X)                    (closed form, no gradient)
    L_anchor  = mean_k ρ_δ( ‖s R X̂_k + t − X_k‖ / m )

with ρ_δ the Huber function (``ρ_δ(r) = r²/2`` for ``r ≤ δ``, ``δ(r − δ/2)`` above; δ = 0.05) and ``m`` the
median anchor depth of the batch (so the loss is scale-free). It is zero for any point map that equals the
anchors up to a Sim(3). With ``align="none"`` the fit is skipped (``s, R, t = 1, I, 0``): the right choice for
a model whose points are already in the anchors' frame (see :mod:`.train`).

Rendering consistency (target image ``I``, rendering ``Î`` from the context views' Gaussians, coverage mask
``M = {A > 0.5}``)::

    L_render = mean_{p ∈ M} [ (1 − λ) |Î(p) − I(p)|₁ / C + λ (1 − SSIM(Î, I)(p)) / 2 ],   λ = 0.2

(SSIM with a 7×7 box window, per channel, averaged over channels).

Distillation to the frozen starting model (depth ``D`` of the model being adapted, ``D⁰`` of the frozen copy on
the same inputs, pixels where both are positive)::

    L_distill = mean_p | log D(p) − log D⁰(p) |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def umeyama(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares Sim(3) ``dst ≈ s R src + t`` for matched ``N×3`` tensors (no gradient).

    Returns (``s`` scalar tensor, ``R`` 3×3, ``t`` 3). Raises ValueError for fewer than 3 pairs."""
    if len(src) < 3:
        raise ValueError(f"umeyama needs >= 3 matched points, got {len(src)}")
    with torch.no_grad():
        src, dst = src.detach().double(), dst.detach().double()
        mu_s, mu_d = src.mean(0), dst.mean(0)
        xs, xd = src - mu_s, dst - mu_d
        var_s = (xs ** 2).sum() / len(src)
        U, D, Vt = torch.linalg.svd(xd.T @ xs / len(src))
        S = torch.eye(3, dtype=src.dtype, device=src.device)
        if torch.det(U) * torch.det(Vt) < 0:
            S[2, 2] = -1
        R = U @ S @ Vt
        s = (D * torch.diagonal(S)).sum() / var_s.clamp_min(1e-30)
        t = mu_d - s * R @ mu_s
    return s, R, t


def huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    """Elementwise Huber ``r²/2`` (``|r| ≤ δ``) or ``δ(|r| − δ/2)``."""
    a = r.abs()
    return torch.where(a <= delta, 0.5 * a ** 2, delta * (a - 0.5 * delta))


def anchor_loss(points: torch.Tensor, anchors: torch.Tensor, median_depth: torch.Tensor | float | None = None,
                delta: float = 0.05, align: str = "sim3") -> torch.Tensor:
    """``L_anchor`` of the module docstring.

    Args:
        points: ``N×3`` predicted points (differentiable). anchors: ``N×3`` SfM anchors.
        median_depth: the normaliser ``m``; default the median distance of the anchors to their centroid.
        align: ``"sim3"`` (the per-batch Umeyama fit) or ``"none"`` (``s, R, t = 1, I, 0``: for a model whose
            points are already in the anchors' frame, such as a prompted metric-depth model placed by known
            poses — a Sim(3) fit would leave its scale free to drift).
    """
    dt = points.dtype
    if align == "none":
        aligned = points
    else:
        s, R, t = umeyama(points, anchors)
        aligned = s.to(dt) * points @ R.to(dt).T + t.to(dt)
    m = median_depth
    if m is None:
        m = (anchors - anchors.mean(0)).norm(dim=1).median()
    r = (aligned - anchors.to(dt)).norm(dim=1) / torch.as_tensor(m, dtype=dt).clamp_min(1e-12)
    return huber(r, delta).mean()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7, c1: float = 0.01 ** 2,
         c2: float = 0.03 ** 2) -> torch.Tensor:
    """Per-pixel SSIM of two ``H×W×C`` images in 0..1 (box window, reflect padding), averaged over channels:
    ``H×W``."""
    a = x.permute(2, 0, 1)[None]
    b = y.permute(2, 0, 1)[None]
    pad = window // 2

    def mean(z):
        return F.avg_pool2d(F.pad(z, (pad,) * 4, mode="reflect"), window, stride=1)

    mu_a, mu_b = mean(a), mean(b)
    va = mean(a * a) - mu_a ** 2
    vb = mean(b * b) - mu_b ** 2
    cov = mean(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return s[0].mean(0)


def photometric_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lam: float = 0.2) -> torch.Tensor:
    """``L_render`` of the module docstring for ``H×W×C`` images and an ``H×W`` bool mask (0 if empty)."""
    if not bool(mask.any()):
        return pred.sum() * 0.0
    l1 = (pred - target).abs().mean(-1)
    d = (1 - lam) * l1 + lam * (1 - ssim(pred, target)) / 2
    return d[mask].mean()


def distillation_loss(depth: torch.Tensor, depth0: torch.Tensor) -> torch.Tensor:
    """``L_distill`` of the module docstring (same-shape depth tensors; ``depth0`` is not differentiated)."""
    ok = (depth > 0) & (depth0 > 0)
    if not bool(ok.any()):
        return depth.sum() * 0.0
    return (torch.log(depth[ok]) - torch.log(depth0.detach()[ok])).abs().mean()


def sample_at(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of an ``H×W`` (or ``H×W×C``) tensor at ``N×2`` pixel coordinates (COLMAP convention,
    pixel centres at +0.5), border-clamped: ``N`` (or ``N×C``), differentiable in ``image``."""
    h, w = image.shape[:2]
    img = image[None, None] if image.dim() == 2 else image.permute(2, 0, 1)[None]
    gx = uv[:, 0] / w * 2 - 1
    gy = uv[:, 1] / h * 2 - 1
    grid = torch.stack([gx, gy], -1)[None, None].to(img.dtype)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0]
    return out[0] if image.dim() == 2 else out.T

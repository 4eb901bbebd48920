"""A small differentiable Gaussian-splatting renderer in plain PyTorch (CPU or GPU; no custom kernels).

Model. ``N`` isotropic 3-D Gaussians with means ``μ_i`` (world frame), standard deviations ``σ_i`` (world
units), colours ``c_i`` (``C`` channels) and opacities ``o_i ∈ (0, 1)``. For a pinhole camera ``(K,
cam_from_world)`` the mean maps to camera coordinates ``x_i = R μ_i + t`` (depth ``z_i``) and to the pixel
``m_i = (f_x x/z + c_x, f_y y/z + c_y)`` (COLMAP convention: pixel ``(u, v)`` has its centre at
``(u + 0.5, v + 0.5)``). The image-space covariance is the EWA splat ``Σ'_i = σ_i² J_i J_iᵀ + ε I`` with the
projection Jacobian ``J = [[f_x/z, 0, −f_x x/z²], [0, f_y/z, −f_y y/z²]]`` (a rotation leaves an isotropic
``σ² I`` unchanged) and the anti-aliasing term ``ε`` (``eps2d``, px², 0.3 as in 3DGS).

At a pixel centre ``p`` Gaussian ``i`` has ``α_i(p) = min(o_i · exp(−½ (p − m_i)ᵀ Σ'_i⁻¹ (p − m_i)), α_max)``.
Gaussians are sorted front to back by ``z_i`` (the order is not differentiated) and composited:

    T_i = Π_{j<i} (1 − α_j),   C(p) = Σ_i T_i α_i c_i,   D(p) = Σ_i T_i α_i z_i,   A(p) = Σ_i T_i α_i

(``D`` is the expected z-depth not normalised by ``A``; divide by ``A`` for a depth where ``A > 0``). Gaussians
with ``z ≤ near`` are dropped. Every pixel sees every Gaussian (dense ``pixels × N`` evaluation, chunked over
pixels): meant for small images and a few thousand Gaussians, as in the adaptation's consistency loss.
"""

from __future__ import annotations

import torch


def project_gaussians(means: torch.Tensor, sigmas: torch.Tensor, K: torch.Tensor, cam_from_world: torch.Tensor,
                      eps2d: float = 0.3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel means (``N×2``), inverse 2-D covariances (``N×2×2``) and depths (``N``) of isotropic Gaussians.

    Args:
        means: ``N×3`` world points. sigmas: ``N`` world-unit standard deviations. K: 3×3. cam_from_world:
            4×4 (same dtype/device as ``means``).
    """
    R, t = cam_from_world[:3, :3], cam_from_world[:3, 3]
    xc = means @ R.T + t
    x, y, z = xc[:, 0], xc[:, 1], xc[:, 2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    zs = z.clamp_min(1e-9)
    m = torch.stack([fx * x / zs + cx, fy * y / zs + cy], 1)
    j00, j02 = fx / zs, -fx * x / zs ** 2
    j11, j12 = fy / zs, -fy * y / zs ** 2
    s2 = sigmas ** 2
    a = s2 * (j00 ** 2 + j02 ** 2) + eps2d
    b = s2 * (j02 * j12)
    d = s2 * (j11 ** 2 + j12 ** 2) + eps2d
    det = a * d - b * b
    inv = torch.stack([torch.stack([d, -b], -1), torch.stack([-b, a], -1)], -2) / det[:, None, None]
    return m, inv, z


def render(means: torch.Tensor, sigmas: torch.Tensor, colors: torch.Tensor, opacities: torch.Tensor,
           K: torch.Tensor, cam_from_world: torch.Tensor, width: int, height: int, *, near: float = 1e-3,
           eps2d: float = 0.3, alpha_max: float = 0.99, chunk: int = 4096) -> dict[str, torch.Tensor]:
    """Render Gaussians into one camera (equations in the module docstring), differentiable in every input.

    Args:
        means: ``N×3`` world points; sigmas: ``N`` (> 0, world units); colors: ``N×C``; opacities: ``N`` in (0, 1).
        K: 3×3 intrinsics for a ``width × height`` image; cam_from_world: 4×4 OpenCV axes.
        chunk: at most this many pixels evaluated at once (fewer when ``N`` is large: ``chunk × N ≤ 4·10⁶``).

    Returns:
        ``{"image": H×W×C, "depth": H×W (Σ T α z), "alpha": H×W}``, same dtype and device as ``means``.
    """
    dev, dt = means.device, means.dtype
    m, inv, z = project_gaussians(means, sigmas, K, cam_from_world, eps2d)
    keep = z > near
    m, inv, z = m[keep], inv[keep], z[keep]
    col, op = colors[keep], opacities[keep]
    order = torch.argsort(z.detach())
    m, inv, z, col, op = m[order], inv[order], z[order], col[order], op[order]
    vs, us = torch.meshgrid(torch.arange(height, device=dev, dtype=dt), torch.arange(width, device=dev, dtype=dt),
                            indexing="ij")
    pix = torch.stack([us.reshape(-1) + 0.5, vs.reshape(-1) + 0.5], 1)
    C = colors.shape[1]
    chunk = max(64, min(chunk, int(4e6) // max(len(z), 1)))
    outs_c, outs_d, outs_a = [], [], []
    for s in range(0, len(pix), chunk):
        p = pix[s:s + chunk]
        if len(z) == 0:
            outs_c.append(torch.zeros(len(p), C, device=dev, dtype=dt))
            outs_d.append(torch.zeros(len(p), device=dev, dtype=dt))
            outs_a.append(torch.zeros(len(p), device=dev, dtype=dt))
            continue
        dlt = p[:, None, :] - m[None]                                   # P×N×2
        q = (dlt[..., 0] ** 2 * inv[None, :, 0, 0] + 2 * dlt[..., 0] * dlt[..., 1] * inv[None, :, 0, 1]
             + dlt[..., 1] ** 2 * inv[None, :, 1, 1])
        alpha = (op[None] * torch.exp(-0.5 * q)).clamp(max=alpha_max)    # P×N
        log_t = torch.cumsum(torch.log1p(-alpha), dim=1)
        trans = torch.exp(torch.cat([torch.zeros_like(log_t[:, :1]), log_t[:, :-1]], 1))
        w = trans * alpha
        outs_c.append(w @ col)
        outs_d.append(w @ z)
        outs_a.append(w.sum(1))
    return {"image": torch.cat(outs_c).reshape(height, width, C), "depth": torch.cat(outs_d).reshape(height, width),
            "alpha": torch.cat(outs_a).reshape(height, width)}


def gaussians_from_depth(depth: torch.Tensor, image: torch.Tensor, K: torch.Tensor, cam_from_world: torch.Tensor,
                         stride: int = 1, sigma_px: float = 0.7, opacity: float = 0.9) -> dict[str, torch.Tensor]:
    """Pixel-aligned Gaussians of one view: one per ``stride``-th pixel with depth > 0.

    Mean = the pixel's back-projected point ``T⁻¹ (d K⁻¹ [u+0.5, v+0.5, 1])`` (world frame, differentiable in
    ``depth``); σ = ``sigma_px · stride · d / f_x`` (the footprint of ``sigma_px·stride`` pixels at that depth);
    colour = the pixel's; opacity constant.

    Args:
        depth: ``H×W`` z-depth; image: ``H×W×C``; K: 3×3 for that size; cam_from_world: 4×4.

    Returns:
        ``{"means": N×3, "sigmas": N, "colors": N×C, "opacities": N}``.
    """
    h, w = depth.shape
    dev, dt = depth.device, depth.dtype
    vs, us = torch.meshgrid(torch.arange(0, h, stride, device=dev), torch.arange(0, w, stride, device=dev),
                            indexing="ij")
    d = depth[vs, us].reshape(-1)
    col = image[vs, us].reshape(-1, image.shape[-1])
    ok = d > 0
    d, col = d[ok], col[ok]
    u = us.reshape(-1)[ok].to(dt) + 0.5
    v = vs.reshape(-1)[ok].to(dt) + 0.5
    xc = torch.stack([(u - K[0, 2]) / K[0, 0] * d, (v - K[1, 2]) / K[1, 1] * d, d], 1)
    R, t = cam_from_world[:3, :3], cam_from_world[:3, 3]
    means = (xc - t) @ R
    sig = sigma_px * stride * d / K[0, 0]
    return {"means": means, "sigmas": sig, "colors": col, "opacities": torch.full_like(d, opacity)}

"""A second metric scale from object sizes, next to the layout's (the scene is not rescaled).

Object-size priors (:data:`SIZE_PRIORS`, typical sizes of COCO indoor classes) of confident instances give
log size ratios; their inverse-variance mean (ratios beyond 1.5× of the median one dropped) times the layout
scale is the object-prior scale, recorded with its sigma and the inverse-variance combination of the two.
"""

from __future__ import annotations

import math

import numpy as np

from .boxes import box_dimension

#: Typical sizes of COCO indoor classes: (dimension, metres, sigma metres). ``top`` is the height of the top
#: above the floor (z max; robust to legs the reconstruction misses, for furniture standing on the floor),
#: ``height`` the z extent, ``length`` the longer horizontal side. Rough figures from common furniture
#: standards / product ranges; "dining table" is wide because COCO's class also takes desks and counters.
SIZE_PRIORS: dict[str, tuple[str, float, float]] = {
    "chair": ("top", 0.88, 0.12),
    "couch": ("top", 0.85, 0.12),
    "bed": ("top", 0.6, 0.15),
    "dining table": ("top", 0.75, 0.1),
    "toilet": ("top", 0.75, 0.08),
    "refrigerator": ("top", 1.7, 0.2),
    "oven": ("top", 0.9, 0.06),
    "microwave": ("height", 0.3, 0.05),
    "tv": ("height", 0.5, 0.2),
    "laptop": ("length", 0.34, 0.05),
    "keyboard": ("length", 0.44, 0.05),
    "mouse": ("length", 0.11, 0.015),
    "cell phone": ("length", 0.15, 0.015),
    "bottle": ("height", 0.25, 0.06),
    "cup": ("height", 0.1, 0.02),
    "book": ("length", 0.23, 0.05),
}


def prior_measurements(instances: list[dict], config) -> list[dict]:
    """One record per confident instance with a size prior: ``{"id", "label", "dimension", "measured_m",
    "prior_m", "ratio"}`` (``ratio = prior / measured``). Confident: score ≥ ``prior_min_score``, ≥
    ``prior_min_views`` views, median view IoU ≥ ``prior_min_iou`` and a measured dimension above 1 cm."""
    used = []
    for inst in instances:
        pr = SIZE_PRIORS.get(inst["label"])
        if pr is None or inst["score"] < config.prior_min_score or inst["n_views"] < config.prior_min_views:
            continue
        if inst.get("views") and np.median([v["iou"] for v in inst["views"]]) < config.prior_min_iou:
            continue  # the box does not frame the detected object well: its size says little
        dim, prior_m, _ = pr
        measured = box_dimension(inst["box"], dim)
        if measured <= 0.01:
            continue
        used.append({"id": inst["id"], "label": inst["label"], "dimension": dim, "measured_m": round(measured, 4),
                     "prior_m": prior_m, "ratio": round(prior_m / measured, 4)})
    return used


def object_scale(instances: list[dict], layout_scale: float | None, layout_sigma: float | None,
                 config=None) -> dict:
    """Metric scale from object-size priors (:data:`SIZE_PRIORS`), next to the layout's.

    Each confident instance (:func:`prior_measurements`) gives ``r_i = prior_i / measured_i`` (measured in the
    current, layout-scaled metres) with relative sigma ``σ_i / prior_i``; the estimate is the inverse-variance
    mean of ``log r_i`` (its sigma widened to the spread of the ``log r_i`` when that is larger), times
    ``layout_scale`` (metres per SfM unit). ``combined`` is the inverse-variance mean of the two estimates (the
    layout's alone when it has sigma 0: a user scale). ``config``: an ``instances`` Config (default: defaults).

    Returns:
        ``{"layout_metres_per_sfm_unit", "layout_sigma", "object_prior_metres_per_sfm_unit",
        "object_prior_sigma", "n_objects_used", "combined", "combined_sigma", "objects"}`` (the object-prior
        fields None without usable objects or without a layout scale).
    """
    if config is None:
        from .config import Config

        config = Config()
    used = prior_measurements(instances, config)
    out = {"layout_metres_per_sfm_unit": layout_scale, "layout_sigma": layout_sigma,
           "object_prior_metres_per_sfm_unit": None, "object_prior_sigma": None, "n_objects_used": len(used),
           "combined": layout_scale, "combined_sigma": layout_sigma, "objects": used}
    if not used or layout_scale is None:
        return out
    logs = np.log([u["ratio"] for u in used])
    if len(used) >= 3:  # drop ratios more than 1.5x away from the median one (partial or merged objects)
        keep = np.abs(logs - np.median(logs)) <= math.log(1.5)
        for u, k in zip(used, keep):
            u["used"] = bool(k)
        used = [u for u, k in zip(used, keep) if k]
        logs = logs[keep]
        out["n_objects_used"] = len(used)
    sig = np.array([SIZE_PRIORS[u["label"]][2] / SIZE_PRIORS[u["label"]][1] for u in used])
    wts = 1.0 / sig ** 2
    mu = float((wts * logs).sum() / wts.sum())
    s_mu = float(1.0 / math.sqrt(wts.sum()))
    if len(used) > 1:
        s_mu = max(s_mu, float(np.std(logs, ddof=1) / math.sqrt(len(used))))
    s_obj = layout_scale * math.exp(mu)
    sig_obj = s_obj * s_mu
    out["object_prior_metres_per_sfm_unit"] = round(s_obj, 6)
    out["object_prior_sigma"] = round(sig_obj, 6)
    if layout_sigma is not None and layout_sigma > 0:
        w1, w2 = 1 / layout_sigma ** 2, 1 / sig_obj ** 2
        out["combined"] = round((w1 * layout_scale + w2 * s_obj) / (w1 + w2), 6)
        out["combined_sigma"] = round(1 / math.sqrt(w1 + w2), 6)
    return out


#: Largest plausible footprint (longer horizontal side, metres) of common indoor classes; a group whose box
#: exceeds its voted label's while another voted label fits is that other object (a box labelled "chair"
#: that holds a round table and its chairs).
MAX_FOOTPRINT_M: dict[str, float] = {
    "chair": 1.1, "couch": 3.5, "bed": 2.6, "dining table": 4.5, "toilet": 1.0, "tv": 2.2, "refrigerator": 1.3,
    "oven": 1.3, "microwave": 0.8, "sink": 1.5, "potted plant": 1.6, "vase": 0.8, "bottle": 0.5, "cup": 0.4,
    "laptop": 0.6, "keyboard": 0.7, "mouse": 0.2, "book": 0.5, "backpack": 0.8, "suitcase": 1.1, "handbag": 0.7,
    "bench": 2.5, "clock": 0.8, "bowl": 0.5, "cell phone": 0.3, "remote": 0.3, "teddy bear": 1.0}

"""Student / teacher networks and one self-distillation step (Sonata objective + LAM3C's two losses).

One step on a batch of scenes:

1. per scene, 2 global and 4 local views (:func:`vid2scene.ssl.data.make_views`); the student sees the global
   views grid-masked (mask token) and the local views; the EMA teacher sees the global views, with N(0, σ)
   coordinate noise when the noise-consistency loss is on;
2. both run the PTv3 encoder; the multi-level features of stage ``level`` (stride 4 by default) feed a head
   (MLP → L2-normalised embedding → cosine logits against ``num_prototypes`` prototypes);
3. teacher targets are Sinkhorn–Knopp assignments at the teacher temperature; student points are matched to
   the nearest teacher point of the paired view (by position before augmentation, within ``match_radius``):
   **mask** (masked global ↔ same global), **roll** (masked global ↔ the other global), **unmask** (local ↔
   each global), weighted 4 : 2 : 2 (unmask : mask : roll); a term averages the view pairs that have matches
   and is absent from the step when none has;
4. **Laplacian smoothing** of the student's masked global-view features at stage ``level``, and **noise
   consistency** between student and noisy-teacher embeddings of the same global view (nearest teacher point
   within ``consistency_radius`` in the view frame).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .backbone import BACKBONES, PTv3, BackboneConfig, upcast
from .data import CleanConfig, Sample, ViewConfig, collate, grid_mask, make_views, noisy
from .losses import (cosine_schedule, distillation_loss, laplacian_smoothing_loss, laplacian_weight, linear_warmup,
                     nearest_match, noise_consistency_loss, sinkhorn_knopp)


class PretrainConfig(BaseModel):
    """Everything a pre-training run needs (stored in every checkpoint). Shares ``frac`` of training below mean
    ``step / steps``."""

    model_config = ConfigDict(extra="forbid")

    backbone: BackboneConfig = Field(default_factory=lambda: BACKBONES["tiny"].model_copy())
    views: ViewConfig = Field(default_factory=ViewConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    steps: int = 200
    batch_size: int = 1                 # scenes per step
    seed: int = 0
    lr: float = 2e-3
    weight_decay: float = 0.05
    grad_clip: float = 3.0
    pct_start: float = 0.05             # OneCycle warm-up share
    level: int = 2                      # stage the heads and losses read (stride 2**level)
    head_hidden: int = 256
    head_embed: int = 64
    num_prototypes: int = 4096
    student_temp: float = 0.1
    teacher_temp: tuple[float, float] = (0.04, 0.07)
    teacher_temp_warmup: float = 0.1
    sinkhorn_iters: int = 3
    ema: tuple[float, float] = (0.994, 1.0)
    mask_size: tuple[float, float] = (0.1, 0.4)   # grid-mask cell (m), start → end of warm-up
    mask_ratio: tuple[float, float] = (0.3, 0.7)
    mask_warmup: float = 0.05
    match_radius: float = 0.32
    weights: dict[str, float] = Field(default_factory=lambda: {"unmask": 4 / 8, "mask": 2 / 8, "roll": 2 / 8})
    distill: bool = True
    laplacian: bool = True
    laplacian_k: int = 24
    laplacian_cut: float = 0.08
    laplacian_delta: float = 0.5
    laplacian_schedule: tuple[float, float, float, float] = (2e-4, 3e-3, 1.5e-3, 0.1)  # start, peak, end, warm-up
    consistency: bool = True
    consistency_sigma: float = 0.01
    consistency_radius: float = 0.32
    consistency_weight: float = 0.05
    checkpoint_every: int = 50
    device: str = "auto"
    bf16: bool = True                   # autocast on CUDA only


def preset(name: str, **overrides) -> PretrainConfig:
    """``tiny`` (CPU smoke runs and tests: tiny encoder, ≤ 8192-point views, 256 prototypes) or ``base`` (LAM3C's
    Base encoder, 65,536-point views, 4096 prototypes, 8 scenes per step). Raises KeyError for other names."""
    if name == "tiny":
        cfg = PretrainConfig(backbone=BACKBONES["tiny"].model_copy(), views=ViewConfig(max_points=8192),
                             num_prototypes=256)
    elif name == "base":
        cfg = PretrainConfig(backbone=BACKBONES["base"].model_copy(), batch_size=8, lr=4e-3, head_hidden=4096,
                             head_embed=256, steps=100000, checkpoint_every=1000)
    else:
        raise KeyError(f"unknown config {name!r}; use 'tiny' or 'base'")
    return cfg.model_copy(update=overrides)


class Head(nn.Module):
    """MLP → L2-normalised embedding; cosine logits against L2-normalised prototypes."""

    def __init__(self, c_in: int, hidden: int, embed: int, prototypes: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(c_in, hidden), nn.GELU(), nn.Linear(hidden, embed))
        self.prototypes = nn.Parameter(torch.randn(prototypes, embed) / embed ** 0.5)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = F.normalize(self.mlp(feat), dim=-1)
        return e, e @ F.normalize(self.prototypes, dim=-1).t()


class Network(nn.Module):
    """PTv3 encoder + head on the stage-``level`` multi-level features. ``forward`` returns
    ``(stage point, features, embedding, logits)``."""

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        self.level = cfg.level
        self.backbone = PTv3(cfg.backbone)
        self.head = Head(self.backbone.level_channels(cfg.level), cfg.head_hidden, cfg.head_embed, cfg.num_prototypes)

    def forward(self, point, mask=None):
        levels = self.backbone(point, mask)
        feat = upcast(levels, self.level)
        emb, logits = self.head(feat)
        return levels[self.level], feat, emb, logits


def make_teacher(student: Network) -> Network:
    """A frozen deep copy (eval mode) updated only by :func:`ema_update`."""
    teacher = copy.deepcopy(student)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``θ_t ← m·θ_t + (1 − m)·θ_s``."""
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


def schedules(cfg: PretrainConfig, step: int) -> dict[str, float]:
    """Scheduled values at ``step``: teacher temperature, EMA momentum, mask cell and ratio, Laplacian weight."""
    frac = step / max(cfg.steps, 1)
    s, p, e, w = cfg.laplacian_schedule
    return {"teacher_temp": linear_warmup(*cfg.teacher_temp, frac, cfg.teacher_temp_warmup),
            "ema": cosine_schedule(*cfg.ema, frac),
            "mask_size": linear_warmup(*cfg.mask_size, frac, cfg.mask_warmup),
            "mask_ratio": linear_warmup(*cfg.mask_ratio, frac, cfg.mask_warmup),
            "laplacian_weight": laplacian_weight(step, cfg.steps, s, p, e, w)}


def build_batch(samples: list[Sample], cfg: PretrainConfig, sched: dict, rng: np.random.Generator,
                device: torch.device) -> dict:
    """Views of a batch of scenes: student ``Point`` (globals of every scene, then locals) with its mask, the
    teacher ``Point`` (globals), and the view ids: global view ``(b, i)`` is ``b·G + i``, local ``(b, l)`` is
    ``B·G + b·L + l``."""
    vc = cfg.views
    g_views, l_views, t_views, masks = [], [], [], []
    for s in samples:
        g, loc = make_views(s, vc, rng)
        g_views += g
        l_views += loc
        masks += [grid_mask(v, sched["mask_size"], sched["mask_ratio"], rng) for v in g]
        t_views += [noisy(v, cfg.consistency_sigma, vc.grid_size, rng) if cfg.consistency else v for v in g]
    mask = np.concatenate(masks + [np.zeros(len(v.coord), bool) for v in l_views])
    return {"student": collate(g_views + l_views, vc.grid_size, device), "teacher": collate(t_views, vc.grid_size, device),
            "mask": torch.from_numpy(mask).to(device), "B": len(samples), "G": vc.global_views, "L": vc.local_views}


def _pairs(batch: dict) -> dict[str, list[tuple[list[int], list[int]]]]:
    """For each distillation term, a list of (student view ids, teacher view ids each is matched to)."""
    B, G, L = batch["B"], batch["G"], batch["L"]
    glob = [[b * G + i for b in range(B) for i in range(G)]]
    out = {"mask": [(glob[0], glob[0])],
           "roll": [(glob[0], [b * G + (i + 1) % G for b in range(B) for i in range(G)])] if G > 1 else [],
           "unmask": [([B * G + b * L + j for b in range(B) for j in range(L)], [b * G + i for b in range(B)
                                                                            for _ in range(L)]) for i in range(G)]}
    return out


def _match_views(s_pt, t_pt, s_views: list[int], t_views: list[int], radius: float):
    """Pairs (student idx, teacher idx) between student views ``s_views[k]`` and teacher views ``t_views[k]``
    (nearest by pre-augmentation position)."""
    relabel = torch.full((int(s_pt.batch.max()) + 1,), -1, dtype=torch.long, device=s_pt.batch.device)
    relabel[torch.tensor(s_views, device=relabel.device)] = torch.tensor(t_views, device=relabel.device)
    qb = relabel[s_pt.batch]
    sel = torch.nonzero(qb >= 0).squeeze(1)
    si, ti = nearest_match(s_pt.origin[sel], t_pt.origin, qb[sel], t_pt.batch, radius)
    return sel[si], ti


def step_losses(student: Network, teacher: Network, batch: dict, cfg: PretrainConfig, sched: dict) -> dict:
    """All loss terms of one step (``loss`` is the weighted total; terms switched off are absent)."""
    s_pt, s_feat, s_emb, s_logits = student(batch["student"], batch["mask"])
    with torch.no_grad():
        t_pt, _, t_emb, t_logits = teacher(batch["teacher"])
        targets = sinkhorn_knopp(t_logits, sched["teacher_temp"], cfg.sinkhorn_iters)
    out: dict[str, torch.Tensor] = {}
    total = s_feat.sum() * 0
    n_glob = batch["B"] * batch["G"]
    if cfg.distill:
        for name, pairs in _pairs(batch).items():
            matches = [_match_views(s_pt, t_pt, sv, tv, cfg.match_radius) for sv, tv in pairs]
            terms = [distillation_loss(s_logits, targets, si, ti, cfg.student_temp) for si, ti in matches
                     if len(si)]  # view pairs without any match (no overlap) do not count
            if terms:
                out[name] = torch.stack(terms).mean()
                total = total + cfg.weights[name] * out[name]
    gsel = torch.nonzero(s_pt.batch < n_glob).squeeze(1)
    if cfg.laplacian:
        out["laplacian"] = laplacian_smoothing_loss(s_pt.coord[gsel], s_feat.index_select(0, gsel).float(),
                                                    s_pt.batch[gsel],
                                                    cfg.laplacian_k, cfg.laplacian_cut, cfg.laplacian_delta)
        total = total + sched["laplacian_weight"] * out["laplacian"]
    if cfg.consistency:
        si, ti = nearest_match(s_pt.coord[gsel], t_pt.coord, s_pt.batch[gsel], t_pt.batch, cfg.consistency_radius)
        out["consistency"] = noise_consistency_loss(s_emb.index_select(0, gsel).float(), t_emb.float(), si, ti)
        total = total + cfg.consistency_weight * out["consistency"]
    out["loss"] = total
    return out

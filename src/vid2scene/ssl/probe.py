"""Linear probe: frozen backbone, a linear head on the concatenated multi-level features, mIoU per class.

Each labelled scene (Pointcept layout, labels from ``label_key``, −1 ignored) is grid-sampled without
augmentation (first point per voxel); the frozen encoder's features of every stage are up-cast to stage 0 and
concatenated (``Σ channels`` per voxel), standardised with the training voxels' mean and std, and a linear layer
is trained with cross-entropy (AdamW, full-batch steps). Predictions are mapped back to every original point
through its voxel; IoU per class over all validation points, mIoU over the classes present in the validation
labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import PTv3, upcast
from .data import Sample, collate, find_sources, load_sample, eval_view
from .model import PretrainConfig
from .train import load_checkpoint, pick_device


def load_backbone(run_dir: str | Path | None, cfg: PretrainConfig | None = None, which: str = "teacher",
                  seed: int = 0) -> tuple[PTv3, PretrainConfig]:
    """The encoder of a run (``which`` = ``teacher`` or ``student`` weights), or a randomly initialised one
    (``run_dir`` None: ``cfg``'s backbone, torch seed ``seed``). Eval mode, gradients off."""
    if run_dir is not None:
        ck = load_checkpoint(run_dir)
        cfg = PretrainConfig.model_validate(ck["config"])
        state = {k[len("backbone."):]: v for k, v in ck[which].items() if k.startswith("backbone.")}
        net = PTv3(cfg.backbone)
        net.load_state_dict(state)
    else:
        cfg = cfg or PretrainConfig()
        torch.manual_seed(seed)
        net = PTv3(cfg.backbone)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, cfg


@torch.no_grad()
def point_features(net: PTv3, sample: Sample, grid_size: float, device: torch.device | str = "cpu"
                   ) -> tuple[torch.Tensor, np.ndarray]:
    """``(features V×Σchannels float32 on CPU, voxel index N int64 of every sample point)``."""
    view, inv = eval_view(sample, grid_size)
    levels = net(collate([view], grid_size, device))
    return upcast(levels, 0).float().cpu(), inv


def confusion(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> np.ndarray:
    """``n×n`` int64 confusion (rows ground truth, columns prediction) over points with ``gt ≥ 0``."""
    ok = gt >= 0
    return np.bincount(gt[ok] * n_classes + pred[ok], minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU per class (NaN where the class is absent from ground truth and prediction)."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou(conf: np.ndarray) -> float:
    """Mean IoU over the classes present in the ground truth (rows with points)."""
    present = conf.sum(1) > 0
    return float(np.mean(iou_per_class(conf)[present])) if present.any() else float("nan")


def _features(net, samples, grid_size, device):
    feats, labels, invs = [], [], []
    for s in samples:
        f, inv = point_features(net, s, grid_size, device)
        view_lab = np.full(len(f), -1, np.int64)
        view_lab[inv] = s.segment  # one label per voxel (the last point written wins)
        feats.append(f)
        labels.append(torch.from_numpy(view_lab))
        invs.append(inv)
    return feats, labels, invs


def train_linear(x: torch.Tensor, y: torch.Tensor, n_classes: int, epochs: int = 300, lr: float = 1e-2,
                 seed: int = 0) -> torch.nn.Linear:
    """A linear classifier on standardised features ``x`` (``M×C``) for labels ``y`` (``M`` int64, −1 ignored)."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    keep = y >= 0
    x, y = x[keep], y[keep]
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(head(x), y).backward()
        opt.step()
    return head


def probe(run_dir: str | Path | None, train_sources: list[str | Path], val_sources: list[str | Path] | None = None,
          label_key: str = "segment20", epochs: int = 300, lr: float = 1e-2, cfg: PretrainConfig | None = None,
          seed: int = 0, device: str = "auto", class_names: list[str] | None = None) -> dict:
    """Linear-probe mIoU of a pre-trained (``run_dir``) or random (``run_dir`` None) encoder.

    Args:
        train_sources / val_sources: Pointcept folders (or folders of them); without ``val_sources`` every
            fifth scene (at least one) is held out, and a single scene is used for both.
        label_key: the ``.npy`` label array (``segment20`` for ScanNet20 exports).
    Returns:
        ``{"miou", "iou": {class: IoU}, "accuracy", "n_train", "n_val", "n_classes", "channels"}``.
    Raises:
        FileNotFoundError for missing sources; ValueError when a scene has no ``label_key`` labels.
    """
    dev = pick_device(device)
    train_p = find_sources(train_sources)
    val_p = find_sources(val_sources) if val_sources else [p for i, p in enumerate(train_p) if i % 5 == 4]
    if not val_sources:
        train_p = [p for p in train_p if p not in val_p] or train_p
        val_p = val_p or train_p
    load = lambda ps: [load_sample(p, label_key) for p in ps]  # noqa: E731
    tr, va = load(train_p), load(val_p)
    for s in tr + va:
        if s.segment is None:
            raise ValueError(f"{s.name}: no {label_key}.npy labels")
    net, cfg = load_backbone(run_dir, cfg, seed=seed)
    net.to(dev)
    gs = cfg.views.grid_size
    n_classes = int(max(int(s.segment.max()) for s in tr + va)) + 1
    xf, yf, _ = _features(net, tr, gs, dev)
    x, y = torch.cat(xf), torch.cat(yf)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    head = train_linear((x - mu) / sd, y, n_classes, epochs, lr, seed)
    vf, _, vinv = _features(net, va, gs, dev)
    conf = np.zeros((n_classes, n_classes), np.int64)
    with torch.no_grad():
        for f, inv, s in zip(vf, vinv, va):
            pred = head((f - mu) / sd).argmax(1).numpy()[inv]
            conf += confusion(pred, s.segment, n_classes)
    ious = iou_per_class(conf)
    names = class_names or [str(i) for i in range(n_classes)]
    present = conf.sum(1) > 0
    return {"miou": miou(conf), "iou": {names[i]: float(ious[i]) for i in range(n_classes) if present[i]},
            "accuracy": float(np.trace(conf) / max(conf.sum(), 1)), "n_train": len(tr), "n_val": len(va),
            "n_classes": n_classes, "channels": int(x.shape[1])}

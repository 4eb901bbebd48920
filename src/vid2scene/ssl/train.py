"""The pre-training loop: AdamW + OneCycle, gradient clipping, EMA teacher, bf16 autocast on CUDA, checkpoints
with config and step, resume, a JSON log and a loss-curve PNG.

Run folder layout::

    RUN_DIR/config.json            the PretrainConfig
    RUN_DIR/log.json               {"config", "sources", "steps": [{"step", "loss", <terms>, "lr", ...}]}
    RUN_DIR/loss_curve.png         every logged term against the step (log scale)
    RUN_DIR/checkpoints/last.pt    {"step", "config", "student", "teacher", "optimizer", "scheduler", "log"}
    RUN_DIR/checkpoints/step_NNNNNN.pt

Every step draws its views from a generator seeded by ``(seed, step)`` and re-seeds torch the same way, so a
run resumed from a checkpoint repeats the steps it would have run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from .data import Sample, clean, find_sources, load_sample
from .model import Network, PretrainConfig, build_batch, ema_update, make_teacher, schedules, step_losses

CHECKPOINTS = "checkpoints"
LAST = "last.pt"


def pick_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU. Raises ValueError for ``cuda`` without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch has no CUDA device")
    return torch.device(name)


def load_samples(paths: list[str | Path], cfg: PretrainConfig | None = None) -> list[Sample]:
    """Every source under ``paths`` (:func:`vid2scene.ssl.data.find_sources`), loaded and cleaned."""
    cfg = cfg or PretrainConfig()
    return [clean(load_sample(p), cfg.clean) for p in find_sources(paths)]


def _optim(net: Network, cfg: PretrainConfig):
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith("mask_token") else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 2),
                                                pct_start=cfg.pct_start, anneal_strategy="cos", div_factor=10,
                                                final_div_factor=1000)
    return opt, sched


class Trainer:
    """Holds student, teacher, optimiser and scheduler; :meth:`step` runs one training step."""

    def __init__(self, cfg: PretrainConfig, samples: list[Sample]):
        if not samples:
            raise ValueError("no pre-training samples")
        self.cfg, self.samples = cfg, samples
        self.device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.student = Network(cfg).to(self.device)
        self.teacher = make_teacher(self.student)
        self.opt, self.sched = _optim(self.student, cfg)
        self.step_index = 0
        self.log: list[dict] = []

    def state(self) -> dict:
        return {"step": self.step_index, "config": self.cfg.model_dump(mode="json"),
                "student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "log": self.log}

    def load_state(self, ck: dict) -> None:
        self.student.load_state_dict(ck["student"])
        self.teacher.load_state_dict(ck["teacher"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.step_index = int(ck["step"])
        self.log = list(ck.get("log", []))

    def step(self) -> dict:
        """One optimisation step; returns its log record (floats)."""
        cfg, i = self.cfg, self.step_index
        rng = np.random.default_rng([cfg.seed, i])
        torch.manual_seed(cfg.seed * 1_000_003 + i)
        t0 = time.perf_counter()
        sch = schedules(cfg, i)
        picks = rng.choice(len(self.samples), size=cfg.batch_size, replace=len(self.samples) < cfg.batch_size)
        batch = build_batch([self.samples[j] for j in picks], cfg, sch, rng, self.device)
        self.student.train()
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" and cfg.bf16
                    else torch.autocast("cpu", enabled=False))
        with autocast:
            terms = step_losses(self.student, self.teacher, batch, cfg, sch)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {i}: {float(loss)}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip)
        self.opt.step()
        self.sched.step() if i + 1 < self.sched.total_steps else None
        ema_update(self.teacher, self.student, sch["ema"])
        rec = {"step": i, **{k: float(v.detach()) for k, v in terms.items()}, "lr": self.opt.param_groups[0]["lr"],
               "grad_norm": float(gnorm), "laplacian_weight": sch["laplacian_weight"],
               "teacher_temp": sch["teacher_temp"], "ema": sch["ema"], "n_student": len(batch["student"]),
               "n_teacher": len(batch["teacher"]), "seconds": time.perf_counter() - t0}
        self.log.append(rec)
        self.step_index += 1
        return rec


def save_checkpoint(trainer: Trainer, run_dir: Path) -> Path:
    """Write ``checkpoints/step_NNNNNN.pt`` and ``checkpoints/last.pt``; returns the step file."""
    d = run_dir / CHECKPOINTS
    d.mkdir(parents=True, exist_ok=True)
    state = trainer.state()
    path = d / f"step_{trainer.step_index:06d}.pt"
    for p in (path, d / LAST):
        tmp = p.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(p)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint dict (``RUN_DIR`` or a ``.pt`` file); tensors on the CPU."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINTS / LAST
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {p}")
    return torch.load(p, map_location="cpu", weights_only=False)


def write_log(run_dir: Path, trainer: Trainer, sources: list[str]) -> None:
    doc = {"config": trainer.cfg.model_dump(mode="json"), "sources": sources, "steps": trainer.log}
    tmp = run_dir / "log.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(run_dir / "log.json")


TERMS = ("loss", "unmask", "mask", "roll", "laplacian", "consistency")


def plot_losses(log: list[dict], path: str | Path) -> Path:
    """Loss-curve PNG (one line per term present, log-scale y). matplotlib if installed, else a PIL drawing."""
    path = Path(path)
    terms = [t for t in TERMS if any(t in r for r in log)]
    steps = [r["step"] for r in log]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for t in terms:
            ax.plot(steps, [r.get(t, math.nan) for r in log], label=t)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    except ImportError:
        _plot_pil(log, terms, path)
    return path


def _plot_pil(log: list[dict], terms: list[str], path: Path) -> None:
    from PIL import Image, ImageDraw

    w, h, m = 700, 400, 40
    img = Image.new("RGB", (w, h), "white")
    dr = ImageDraw.Draw(img)
    vals = [max(r[t], 1e-12) for r in log for t in terms if t in r]
    lo, hi = math.log10(min(vals)), math.log10(max(vals)) + 1e-9
    n = max(len(log) - 1, 1)
    colours = ["black", "red", "blue", "green", "orange", "purple"]
    for c, t in zip(colours, terms):
        pts = [(m + (w - 2 * m) * k / n, h - m - (h - 2 * m) * (math.log10(max(r[t], 1e-12)) - lo) / (hi - lo))
               for k, r in enumerate(log) if t in r]
        if len(pts) > 1:
            dr.line(pts, fill=c, width=2)
        dr.text((w - m - 100, m + 12 * colours.index(c)), t, fill=c)
    img.save(path)


def pretrain(sources: list[str | Path], run_dir: str | Path, cfg: PretrainConfig | None = None,
             resume: bool = True, samples: list[Sample] | None = None, log_every: int = 10,
             progress=None) -> dict:
    """Pre-train on every source under ``sources`` into ``run_dir`` (see the module docstring).

    Args:
        sources: scene / Pointcept / dataset folders.
        cfg: run configuration (default :class:`PretrainConfig`); on resume the checkpoint's config is used and
            ``cfg.steps`` may extend it only if the scheduler has the same length (a different ``steps`` raises).
        resume: continue from ``run_dir/checkpoints/last.pt`` when it exists.
        samples: already loaded samples (skips loading ``sources``).
        progress: optional callable ``(record) -> None`` after every step.

    Returns:
        ``{"run_dir", "steps", "final", "seconds_per_step", "checkpoint"}``.
    Raises:
        FileNotFoundError when no source is found, ValueError on a config mismatch, FloatingPointError on NaN.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg or PretrainConfig()
    ck = None
    if resume and (run_dir / CHECKPOINTS / LAST).is_file():
        ck = load_checkpoint(run_dir)
        saved = PretrainConfig.model_validate(ck["config"])
        if saved.model_copy(update={"device": cfg.device}) != cfg.model_copy(update={"device": cfg.device}):
            raise ValueError(f"{run_dir} holds a run with a different config; use another RUN_DIR or resume=False")
    src = [str(p) for p in find_sources(sources)] if samples is None else [str(s) for s in sources]
    samples = samples if samples is not None else [clean(load_sample(p), cfg.clean) for p in src]
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=1))
    trainer = Trainer(cfg, samples)
    if ck is not None:
        trainer.load_state(ck)
    t0, start = time.perf_counter(), trainer.step_index
    last = None
    while trainer.step_index < cfg.steps:
        rec = trainer.step()
        if progress is not None:
            progress(rec)
        if trainer.step_index % cfg.checkpoint_every == 0 or trainer.step_index == cfg.steps:
            last = save_checkpoint(trainer, run_dir)
        if trainer.step_index % log_every == 0 or trainer.step_index == cfg.steps:
            write_log(run_dir, trainer, src)
    write_log(run_dir, trainer, src)
    if trainer.log:
        plot_losses(trainer.log, run_dir / "loss_curve.png")
    done = trainer.step_index - start
    return {"run_dir": str(run_dir), "steps": trainer.step_index, "final": trainer.log[-1] if trainer.log else None,
            "seconds_per_step": (time.perf_counter() - t0) / done if done else None,
            "checkpoint": str(last) if last else None}

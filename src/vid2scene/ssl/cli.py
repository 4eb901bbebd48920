"""``vid2scene ssl pretrain|probe``: a typer sub-app (mounted by the main CLI as ``ssl``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

def _checked(fn):
    """``fn()``; bad input (a missing folder or checkpoint, a config mismatch, no labels) is one line on stderr
    and exit code 3 (a stage-style failure keeps its own code), never a traceback."""
    from ..errors import Vid2SceneError

    try:
        return fn()
    except Vid2SceneError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(3)


ssl_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="Self-supervised point-cloud pre-training (LAM3C) and linear probing.")


@ssl_app.command("pretrain")
def pretrain_cmd(
    data: list[Path] = typer.Argument(..., help="scene folders, Pointcept folders or datasets holding them"),
    out: Path = typer.Option(..., "-o", "--out", help="run folder (checkpoints, log.json, loss_curve.png)"),
    config: str = typer.Option("tiny", "--config", help="tiny | base"),
    steps: Optional[int] = typer.Option(None, "--steps", help="optimisation steps (default: the config's)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="scenes per step"),
    no_laplacian: bool = typer.Option(False, "--no-laplacian", help="ablation: switch the Laplacian loss off"),
    no_consistency: bool = typer.Option(False, "--no-consistency", help="ablation: switch noise consistency off"),
    no_distill: bool = typer.Option(False, "--no-distill", help="ablation: switch self-distillation off"),
    fresh: bool = typer.Option(False, "--fresh", help="ignore an existing checkpoint in the run folder"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Pre-train a PTv3 encoder on video point clouds; resumes from RUN_DIR/checkpoints/last.pt."""
    from .model import preset
    from .train import pretrain

    over = {"device": device, "seed": seed, "laplacian": not no_laplacian, "consistency": not no_consistency,
            "distill": not no_distill}
    if steps is not None:
        over["steps"] = steps
    if batch_size is not None:
        over["batch_size"] = batch_size
    try:
        cfg = preset(config, **over)
    except KeyError as e:
        raise typer.BadParameter(str(e)) from None

    def show(rec: dict) -> None:
        if rec["step"] % 10 == 0:
            typer.echo(f"step {rec['step']:6d}  loss {rec['loss']:.4f}  {rec['seconds']:.2f} s")

    res = _checked(lambda: pretrain(data, out, cfg, resume=not fresh, progress=show))
    typer.echo(json.dumps({k: v for k, v in res.items() if k != "final"}, indent=1))


@ssl_app.command("probe")
def probe_cmd(
    run_dir: Path = typer.Argument(..., help="a pretrain run folder"),
    data: list[Path] = typer.Argument(..., help="labelled Pointcept folders (training scenes)"),
    val: Optional[list[Path]] = typer.Option(None, "--val", help="validation folders (default: every 5th scene)"),
    label_key: str = typer.Option("segment20", "--labels", help="label array name (segment20, segment, …)"),
    epochs: int = typer.Option(300, "--epochs", help="full-batch steps of the linear head"),
    random_init: bool = typer.Option(False, "--random-init", help="probe a randomly initialised encoder"),
    device: str = typer.Option("auto", "--device"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="write the result JSON here"),
) -> None:
    """Linear-probe mIoU of the run's frozen (teacher) encoder."""
    from .model import PretrainConfig
    from .probe import probe
    from .train import load_checkpoint

    def run() -> dict:
        cfg = PretrainConfig.model_validate(load_checkpoint(run_dir)["config"]) if random_init else None
        return probe(None if random_init else run_dir, data, val, label_key, epochs, cfg=cfg, device=device)

    res = _checked(run)
    text = json.dumps(res, indent=1)
    if out is not None:
        out.write_text(text)
    typer.echo(text)

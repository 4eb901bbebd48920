"""``vid2scene adapt``: adapt a Prompt Depth Anything model to scenes (a typer sub-app with one command)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.command("adapt")
def adapt_command(
        scenes: List[Path] = typer.Argument(..., help="scene folders (after sfm)"),
        output: Path = typer.Option(..., "-o", "--output", help="checkpoint folder (a depth.prompt_da.model)"),
        model: str = typer.Option("tiny", "--model", help="Hugging Face id, local folder, or 'tiny' (random)"),
        steps: int = typer.Option(100, "--steps", help="optimisation steps"),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
        lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate"),
        w_anchor: float = typer.Option(1.0, "--w-anchor", help="weight of the SfM anchor loss"),
        w_render: float = typer.Option(1.0, "--w-render", help="weight of the rendering-consistency loss"),
        w_distill: float = typer.Option(0.2, "--w-distill", help="weight of the distillation regulariser"),
        anchor_alignment: str = typer.Option("none", "--anchor-alignment",
                                             help="none | sim3: per-batch Sim(3) fit before the anchor loss"),
        input_size: int = typer.Option(112, "--input-size", help="model input long side (pixels)"),
        seed: int = typer.Option(0, "--seed"),
        as_json: bool = typer.Option(False, "--json", help="print the summary as JSON")) -> None:
    """Adapt a depth model to SCENES with SfM anchors, rendering consistency at held-out keyframes and
    distillation to the starting model; the checkpoint loads as `depth.backend: prompt_da`."""
    from ..errors import Vid2SceneError
    from .train import AdaptConfig, run_adapt

    if device not in ("auto", "cpu", "cuda"):
        typer.echo("error: --device must be auto, cpu or cuda", err=True)
        raise typer.Exit(2)
    if anchor_alignment not in ("none", "sim3"):
        typer.echo("error: --anchor-alignment must be none or sim3", err=True)
        raise typer.Exit(2)
    cfg = AdaptConfig(steps=steps, device=device, lr=lr, w_anchor=w_anchor, w_render=w_render,  # type: ignore[arg-type]
                      w_distill=w_distill, input_size=input_size, seed=seed,
                      anchor_alignment=anchor_alignment)  # type: ignore[arg-type]
    try:
        meta = run_adapt(scenes, output, model, cfg)
    except (Vid2SceneError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(getattr(e, "exit_code", 1))
    last = meta["losses"][-1] if meta["losses"] else {}
    if as_json:
        typer.echo(json.dumps({k: meta[k] for k in ("model", "scenes", "n_views", "device", "seconds_per_step")}
                              | {"final": last, "checkpoint": str(output)}))
        return
    typer.echo(f"adapted {model} on {sum(meta['n_views'])} keyframes of {len(scenes)} scene(s) in {steps} steps "
               f"({meta['seconds_per_step']:.2f} s/step); final loss {last.get('total', float('nan')):.4f}; "
               f"checkpoint {output} (depth.backend: prompt_da, depth.prompt_da.model: {output})")


@app.command("noop", hidden=True)
def _noop() -> None:  # keeps `adapt` a named sub-command of this app
    pass

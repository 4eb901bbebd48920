"""The ``vid2scene`` command line (typer).

Exit codes (DESIGN.md): 0 ok, 2 usage, 3 input error or rejected input, 4 stage failed / backend missing.
Every error is reported as one line on stderr; details stay in the scene's ``manifest.json`` and ``logs/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from . import __version__, progress
from .errors import InputError, Vid2SceneError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="vid2scene: lift walkthrough videos into 3D scene data (poses, sparse points, ...).")
from .adapt.cli import app as adapt_app  # noqa: E402 (these sub-apps import torch only when a command runs)
from .evaluation.geometry import make_command as _eval_geometry_command  # noqa: E402
from .ssl.cli import ssl_app  # noqa: E402

app.add_typer(ssl_app, name="ssl")
app.add_typer(adapt_app)  # vid2scene adapt
app.command("eval-geometry")(_eval_geometry_command())
console = progress.console  # stderr: progress, messages and errors
out = Console()  # stdout: the results a command prints (tables, info), so they can be piped
T = TypeVar("T")


def _fail(err: Vid2SceneError) -> NoReturn:
    console.print(Text.assemble(("error", "bold red"), f": {err}"), highlight=False, soft_wrap=True)
    raise typer.Exit(err.exit_code)


def _os_error(e: OSError) -> InputError:
    """An OS error met outside a stage (output path is a file, permission denied) as a one-line input error."""
    what = e.strerror or str(e) or type(e).__name__
    return InputError(f"{what}: {e.filename}" if e.filename else what)


def _checked(fn: Callable[[], T], as_json: bool = False, to_json: Callable[[T], Any] = lambda r: r,
             indent: int | None = 1) -> T | None:
    """``fn()``; a :class:`Vid2SceneError` is printed as one line on stderr and exits with its code. With
    ``as_json`` the result (through ``to_json``) is printed as JSON on stdout and None is returned (nothing is
    left for the caller to print)."""
    try:
        res = fn()
    except Vid2SceneError as e:
        _fail(e)
    except OSError as e:
        _fail(_os_error(e))
    if as_json:
        typer.echo(json.dumps(to_json(res), indent=indent))
        return None
    return res


def _parse_intrinsics(text: str) -> list[float]:
    """``"fx,fy,cx,cy"`` → four finite positive floats. Raises InputError otherwise (also for ``""``)."""
    import math

    try:
        vals = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        vals = []
    if len(vals) != 4 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise InputError(f"--intrinsics wants 'fx,fy,cx,cy' in source-image pixels (positive numbers), got {text!r}")
    return vals


def _stage_table(manifest: dict) -> Table:
    from .pipeline import STAGES

    t = Table(title=Text(f"scene: {manifest.get('status', '?')}"), title_justify="left")
    for col in ("stage", "status", "seconds", "result"):
        t.add_column(col, overflow="fold")
    for name in STAGES:
        st = manifest.get("stages", {}).get(name)
        if not st:
            t.add_row(name, "-", "", "")
            continue
        colour = {"complete": "green", "failed": "red"}.get(st.get("status"), "yellow")
        text = Text(str(st.get("summary") or st.get("reason") or ""))
        if st.get("warnings"):
            text.append(" (" + "; ".join(map(str, st["warnings"])) + ")", style="yellow")
        seconds = st.get("seconds")
        t.add_row(name, Text(str(st.get("status")), style=colour),
                  f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "", text)
    return t


@app.command()
def run(
    input: Path = typer.Argument(..., help="video file or folder of ordered images"),
    output: Path = typer.Option(..., "-o", "--output", help="scene folder to create or resume"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON config file (stage sections)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="named preset: default, fast, quality"),
    until: Optional[str] = typer.Option(None, "--until", help="stop after this stage"),
    overwrite: bool = typer.Option(False, "--overwrite", help="re-run every stage; replace a scene from another input"),
    intrinsics: Optional[str] = typer.Option(None, "--intrinsics",
                                             help="known intrinsics 'fx,fy,cx,cy' in source-image pixels"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Run the pipeline on INPUT into the scene folder OUTPUT (resumes what is complete)."""
    from .config import load_config
    from .pipeline import run_pipeline

    progress.set_enabled(not quiet)
    try:
        overrides = {"sfm": {"known_intrinsics": _parse_intrinsics(intrinsics)}} if intrinsics is not None else None
        cfg = load_config(config, preset, overrides)

        def on_stage(name: str, action: str, why: str) -> None:
            if action == "skip":
                console.print(Text(f"{name}: skipped ({why})", style="dim"), highlight=False)
            else:
                console.print(Text.assemble((name, "bold cyan"), f" ({why})"), highlight=False)

        report = run_pipeline(input, output, cfg, until=until, overwrite=overwrite, on_stage=on_stage)
    except (Vid2SceneError, OSError) as e:
        from .scene import Scene

        err = _os_error(e) if isinstance(e, OSError) else e
        s = Scene(output)
        try:
            if s.exists() and s.manifest_readable():
                console.print(_stage_table(s.read_manifest()))
        except OSError:
            pass
        _fail(err)
        return
    out.print(_stage_table(report.scene.read_manifest()))
    for line in _warning_lines(report.scene.read_manifest()):
        console.print(Text(line, style="yellow"), highlight=False, soft_wrap=True)
    out.print(Text(f"scene folder: {report.scene.root}  (open {report.scene.report_html.name})"), highlight=False)


def _warning_lines(manifest: dict) -> list[str]:
    """``"warning: <stage>: <text>"`` for every stage warning recorded in the manifest, in stage order."""
    from .stage import STAGES

    lines = []
    for name in STAGES:
        st = manifest.get("stages", {}).get(name) or {}
        for w in st.get("warnings") or []:
            lines.append(f"warning: {name}: {w}")
    return lines


@app.command()
def info(scene_dir: Path = typer.Argument(..., help="scene folder"),
         as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON")) -> None:
    """Show a scene's stage status, QC figures, and what failed and why."""
    from .scene import Scene

    m = _checked(Scene(scene_dir).read_manifest)
    if as_json:
        typer.echo(json.dumps(m, indent=1))
    else:
        out.print(Text(f"source: {m['source'].get('path')} ({m['source'].get('kind')})"), highlight=False)
        out.print(_stage_table(m))
        for name, qc in m.get("qc", {}).items():
            out.print(Text.assemble((str(name), "bold"), " QC: " + json.dumps(qc)), highlight=False, soft_wrap=True)
        for line in _warning_lines(m):
            out.print(Text(line, style="yellow"), highlight=False, soft_wrap=True)
    f = m.get("failure")
    if isinstance(f, dict) and f:
        if not as_json:
            out.print(Text.assemble((f"failed in {f.get('stage')}", "bold red"), f": {f.get('reason')}"),
                      highlight=False)
        code = f.get("exit_code", 4)
        raise typer.Exit(code if isinstance(code, int) else 4)


@app.command()
def stages() -> None:
    """List stages and their backends (with 'not installed' hints)."""
    from .stage import STAGES, backend_status, stage_module

    t = Table(title="stages (in order)")
    t.add_column("stage")
    t.add_column("writes")
    t.add_column("backends")
    for name in STAGES:
        mod = stage_module(name)
        status = (mod.backend_status() if hasattr(mod, "backend_status")
                  else backend_status(mod.BACKENDS) if hasattr(mod, "BACKENDS") else {})
        back = ", ".join(f"{k}: {'[green]installed[/]' if v == 'installed' else '[yellow]' + escape(v) + '[/]'}"
                         for k, v in status.items()) or "-"
        t.add_row(name, ", ".join(mod.OUTPUTS), back)
    out.print(t)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


# ---- exporters and task generators -----------------------------------------------------------------------
@app.command()
def export(scene_dir: Path = typer.Argument(..., help="scene folder (after layout and instances)"),
           format: str = typer.Option(..., "--format", "-f",
                                      help="spatiallm | scannet | pointcept | sceneverse | nerfstudio"),
           output: Optional[Path] = typer.Option(None, "-o", "--output",
                                                 help="folder to write into (default SCENE/tasks/exports/FORMAT)"),
           ) -> None:
    """Export a scene to another tool's format; prints a JSON summary of what was written."""
    from .export import export as run_export

    _checked(lambda: run_export(scene_dir, format, output), as_json=True, to_json=lambda r: r.qc, indent=None)


@app.command()
def tasks(scene_dir: Path = typer.Argument(..., help="scene folder with instances.json and layout.json"),
          only: Optional[str] = typer.Option(None, "--only", help="comma-separated generators (default: all)"),
          config: Optional[Path] = typer.Option(None, "--config",
                                                help="YAML/JSON file with one section per generator "
                                                     "(vqa, vln, bev, layout_synth)"),
          seed: Optional[int] = typer.Option(None, "--seed", help="random seed of every generator"),
          as_json: bool = typer.Option(False, "--json", help="print the summaries as JSON")) -> None:
    """Generate task data (spatial QA, navigation episodes, BEV prompts) under SCENE/tasks/."""
    from .tasks import GENERATORS, load_tasks_config, run_tasks

    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    res = _checked(lambda: run_tasks(scene_dir, names, load_tasks_config(config), seed=seed), as_json,
                   to_json=lambda r: {name: result.qc for name, result in r.items()})
    for name, result in (res or {}).items():
        outs = ", ".join(GENERATORS[name].OUTPUTS)
        out.print(Text.assemble((name, "bold"), f" -> {outs}: " + json.dumps(result.qc)), highlight=False,
                  soft_wrap=True)


@app.command("synth-layout")
def synth_layout(scene_dir: Path = typer.Argument(..., help="scene folder with instances.json and layout.json"),
                 config: Optional[Path] = typer.Option(None, "--config",
                                                       help="YAML/JSON: a layout_synth section, or the section itself"),
                 as_json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Synthesise a plausible, editable layout of the room (VIPScene) under SCENE/tasks/layout_synth/."""
    from .tasks.layout_synth import synth_layout as run_synth

    res = _checked(lambda: run_synth(scene_dir, config), as_json,
                   to_json=lambda r: {"summary": r.summary, "qc": r.qc, "warnings": r.warnings})
    if res is not None:
        out.print(res.summary, highlight=False, soft_wrap=True, markup=False)
        for w in res.warnings:
            out.print(Text.assemble(("warning:", "yellow"), f" {w}"), highlight=False)


@app.command("eval-vqa")
def eval_vqa(predictions: Path = typer.Argument(..., help="JSON lines with id and prediction"),
             questions: Optional[Path] = typer.Option(None, "--questions",
                                                      help="scene folder or vqa.jsonl (when the predictions "
                                                           "do not carry question_type / ground_truth)"),
             lenient: bool = typer.Option(False, "--lenient",
                                          help="not VSI-Bench: accept '(C)', '36.6m', leading spaces"),
             as_json: bool = typer.Option(False, "--json", help="print the scores as JSON")) -> None:
    """Score spatial-QA predictions exactly as VSI-Bench's official scorer does (accuracy for multiple choice,
    MRA for numbers); bad input is one line on stderr and exit code 3."""
    from rich.text import Text  # question types are user text: never parsed as markup

    from .tasks import eval_vqa as ev

    res = _checked(lambda: ev.evaluate(ev.read_jsonl(predictions, "predictions"),
                                       ev.load_questions(questions) if questions else None, lenient=lenient),
                   as_json)
    if res is None:
        return
    rules = "lenient parsing, not VSI-Bench" if lenient else "VSI-Bench scoring"
    t = Table(title=f"spatial QA ({rules})", title_justify="left")
    for col in ("question type", "n", "missing", "metric", "score"):
        t.add_column(col)
    for qtype, d in res["per_type"].items():
        t.add_row(Text(qtype), str(d["n"]), str(d["n_missing"]), d["metric"], f"{100 * d['score']:.1f}")
    if res["object_rel_direction"] is not None:
        t.add_row("object_rel_direction (sum of 3) / 3", "", "", "accuracy", f"{100 * res['object_rel_direction']:.1f}")
    if res["overall"] is not None:
        t.add_row("[bold]overall[/] (mean over types)", str(res["n"]), "", "", f"{100 * res['overall']:.1f}")
        t.add_row("overall (mean over questions)", "", "", "", f"{100 * res['overall_micro']:.1f}")
    out.print(t)


# ---- datasets from many videos (vid2scene.dataset) ---------------------------------------------------------

@app.command()
def build(
    sources: Path = typer.Argument(..., help="text/CSV manifest of video paths and URLs, or a folder of videos"),
    output: Path = typer.Option(..., "-o", "--output", help="dataset folder to create or resume"),
    engine: str = typer.Option("local", "--engine", help="local (process pool) or ray"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (auto, ray://host:10001)"),
    workers: int = typer.Option(1, "--workers", help="videos processed at once (local) / CPUs of a local Ray"),
    until: Optional[str] = typer.Option(None, "--until", help="stop every video after this stage"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="re-run videos that failed before"),
    timeout_s: Optional[float] = typer.Option(None, "--timeout-s", help="time limit per video in seconds"),
    memory_mb: Optional[float] = typer.Option(None, "--memory-mb", help="resident-memory limit per video (MiB)"),
    cpus_per_task: float = typer.Option(1.0, "--cpus-per-task", help="CPUs Ray reserves per video"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON config file (stage sections)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="named preset: default, fast, quality"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Build (or resume) a dataset: one scene per video under OUTPUT/scenes, index.parquet, report.html."""
    from .config import load_config
    from .dataset.build import BuildOptions, build_dataset

    progress.set_enabled(not quiet)
    opts = BuildOptions(engine=engine, address=address, workers=workers, until=until, retry_failed=retry_failed,
                        timeout_s=timeout_s, memory_mb=memory_mb, cpus_per_task=cpus_per_task)
    s = _checked(lambda: build_dataset(sources, output, load_config(config, preset), opts))
    out.print(f"ran {len(s.ran)} videos ({len(s.completed)} complete, {len(s.failed)} failed); skipped "
              f"{len(s.skipped_complete)} complete and {len(s.skipped_failed)} failed before "
              f"(--retry-failed re-runs them); {s.wall_s:.1f} s", highlight=False, markup=False)
    for tid, why in s.failed.items():
        out.print(Text.assemble(("failed", "red"), f" {tid}: {why}"), highlight=False, soft_wrap=True)
    out.print(f"dataset: {s.dataset_dir}  (index.parquet, report.html)", highlight=False, markup=False)
    if s.failed and not s.completed:
        console.print(Text(f"error: every one of the {len(s.failed)} videos run failed", style="bold red"),
                      highlight=False)
        raise typer.Exit(4)


@app.command("dataset-info")
def dataset_info(dataset_dir: Path = typer.Argument(..., help="dataset folder made by vid2scene build"),
                 as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
                 report: bool = typer.Option(False, "--report", help="also rewrite report.html")) -> None:
    """Summarise a dataset: scenes by status, failure reasons, QC medians."""
    from .dataset.index import read_index, summarize

    rows = _checked(lambda: read_index(dataset_dir))
    s = summarize(rows)
    if report:
        from .dataset.report import write_dataset_report

        write_dataset_report(dataset_dir, rows)
    if as_json:
        typer.echo(json.dumps(s, indent=1))
        return
    out.print(f"{s['n_scenes']} scenes from {s['n_tasks']} videos: "
              + ", ".join(f"{k} {v}" for k, v in s["by_status"].items()), highlight=False)
    if s["failure_reasons"]:
        t = Table(title="failure reasons", title_justify="left")
        t.add_column("count")
        t.add_column("stage: reason", overflow="fold")
        for k, n in s["failure_reasons"].items():
            t.add_row(str(n), Text(str(k)))
        out.print(t)
    if s["median_of_complete"]:
        out.print("median of complete scenes: " + json.dumps(s["median_of_complete"]), highlight=False, soft_wrap=True,
                  markup=False)
    out.print(f"index: {Path(dataset_dir) / 'index.parquet'}  report: {Path(dataset_dir) / 'report.html'}",
              highlight=False, markup=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

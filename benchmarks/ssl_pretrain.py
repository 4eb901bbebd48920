"""Benchmark: self-supervised pre-training (``vid2scene.ssl``) on CPU with the ``tiny`` config.
Prints one JSON object per line and writes them to ``OUT/results.jsonl``.

Figures:

* ``fwdbwd``: seconds of one forward + backward of the tiny encoder (sum of squared multi-level features as the
  loss) at 20k and 100k points of a synthetic room (one point per 2 cm voxel), median of 3 after one warm-up,
  and peak RSS (MiB, whole process, and the increase over the RSS before the first forward); each size in a
  fresh subprocess, with 1 and with the default number of torch threads.
* ``pretrain``: ``--steps`` pre-training steps on synthetic rooms (scene folders, read through ``Scene``) and,
  when ``--hololens`` has a ``READY`` file, on that scene alone; first/last-10 mean of every loss term, seconds
  per step, the loss-curve PNG and log in the run folder.
* ``probe``: linear-probe mIoU (labels ``segment``: floor, wall, ceiling, table, chair, cabinet, bed, sofa) on
  held-out synthetic rooms from the pre-trained teacher, a randomly initialised encoder, and runs with each loss
  switched off in turn (``--ablation-steps`` steps each with ``--ablation-max-points``-point views, against a
  full run of the same length and views).

    python benchmarks/ssl_pretrain.py --out /tmp/ssl_bench [--steps 200]
        [--only fwdbwd,synthetic,hololens,probe,ablations]   (sections can run as separate processes)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.fixtures
DEFAULT_HOLOLENS = Path("/work/scenes/hololens")


def emit(out: Path, rec: dict) -> None:
    line = json.dumps(rec)
    print(line, flush=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(line + "\n")


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def fwdbwd_child(n: int, threads: int) -> dict:
    """One measurement (run in a subprocess): forward + backward of tiny at ``n`` points."""
    import torch

    from tests.fixtures.ssl_rooms import make_room
    from vid2scene.ssl.backbone import PTv3, upcast
    from vid2scene.ssl.data import Sample, collate, crop, eval_view

    if threads:
        torch.set_num_threads(threads)
    r = make_room(5, density=max(2.5 * n / 60, 100))
    s = Sample(r["coord"], r["color"].astype(np.float32), r["normal"])
    v, _ = eval_view(s, 0.02)
    full = Sample(v.coord, v.color, v.normal)
    if len(full) < n:
        raise RuntimeError(f"room has only {len(full)} voxels")
    keep = crop(full, full.coord.mean(0), 1.0 * n / len(full), n)
    for a in ("coord", "origin", "color", "normal", "grid"):
        setattr(v, a, getattr(v, a)[keep])
    v.grid = v.grid - v.grid.min(0)
    torch.manual_seed(0)
    net = PTv3("tiny").train()
    base = rss_mib()
    times = []
    for it in range(4):
        pt = collate([v], 0.02)
        t0 = time.perf_counter()
        levels = net(pt)
        (upcast(levels, 0) ** 2).mean().backward()
        times.append(time.perf_counter() - t0)
        net.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"figure": "fwdbwd", "points": n, "threads": torch.get_num_threads(), "seconds": float(np.median(times[1:])),
            "seconds_all": [round(t, 3) for t in times], "peak_rss_mib": round(peak, 1),
            "peak_increase_mib": round(peak - base, 1), "loadavg": os.getloadavg()[0]}


def bench_fwdbwd(out: Path) -> None:
    for threads in (1, 0):
        for n in (20000, 100000):
            cmd = [sys.executable, __file__, "--child-fwdbwd", str(n), "--child-threads", str(threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if res.returncode:
                emit(out, {"figure": "fwdbwd", "points": n, "error": res.stderr[-2000:]})
                continue
            emit(out, json.loads(res.stdout.strip().splitlines()[-1]))


def _summary(log: list[dict]) -> dict:
    keys = [k for k in ("loss", "unmask", "mask", "roll", "laplacian", "consistency") if k in log[-1]]
    return {k: {"first10": float(np.mean([r[k] for r in log[:10]])), "last10": float(np.mean([r[k] for r in log[-10:]]))}
            for k in keys}


def run_pretrain(out: Path, name: str, sources, steps: int, samples=None, **over) -> dict:
    import torch

    from vid2scene.ssl.model import preset
    from vid2scene.ssl.train import pretrain

    torch.set_num_threads(1)
    cfg = preset("tiny", steps=steps, checkpoint_every=max(steps // 4, 1), **over)
    t0 = time.perf_counter()
    res = pretrain(sources, out / name, cfg, samples=samples)
    log = json.loads((out / name / "log.json").read_text())["steps"]
    rec = {"figure": "pretrain", "run": name, "steps": res["steps"], "seconds_per_step": res["seconds_per_step"],
           "wall_s": time.perf_counter() - t0, "mean_student_points": float(np.mean([r["n_student"] for r in log])),
           "terms": _summary(log), "curve": str(out / name / "loss_curve.png"), "loadavg": os.getloadavg()[0],
           "switches": {k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in over.items()}}
    emit(out, rec)
    return rec


def make_data(out: Path, n_pre: int, n_probe: int, density: float) -> dict:
    from tests.fixtures.ssl_rooms import make_rooms

    d = out / "data"
    if not (d / "done").is_file():
        make_rooms(d / "pretrain", n_pre, seed=100, kind="scene", density=density)
        make_rooms(d / "probe", n_probe, seed=200, kind="pointcept", density=density)
        (d / "done").write_text("ok")
    probe = sorted((d / "probe").iterdir())
    return {"pretrain": [d / "pretrain"], "probe_train": probe[: n_probe - 2], "probe_val": probe[n_probe - 2:]}


def run_probe(out: Path, name: str, run_dir, data: dict, epochs: int) -> dict:
    import torch

    from tests.fixtures.ssl_rooms import CLASSES
    from vid2scene.ssl.model import preset
    from vid2scene.ssl.probe import probe

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = probe(run_dir, data["probe_train"], data["probe_val"], label_key="segment", epochs=epochs,
                cfg=preset("tiny"), class_names=list(CLASSES))
    rec = {"figure": "probe", "backbone": name, **res, "seconds": time.perf_counter() - t0}
    emit(out, rec)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/ssl_bench"))
    ap.add_argument("--only", default="fwdbwd,synthetic,hololens,probe,ablations")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--ablation-steps", type=int, default=100)
    ap.add_argument("--ablation-max-points", type=int, default=4096, help="points per view in the ablation runs")
    ap.add_argument("--rooms", type=int, default=8)
    ap.add_argument("--probe-rooms", type=int, default=8)
    ap.add_argument("--density", type=float, default=150.0, help="synthetic room points per m²")
    ap.add_argument("--probe-epochs", type=int, default=300)
    ap.add_argument("--hololens", type=Path, default=DEFAULT_HOLOLENS)
    ap.add_argument("--ablations", default="full,laplacian,consistency,distill")
    ap.add_argument("--child-fwdbwd", type=int)
    ap.add_argument("--child-threads", type=int, default=0)
    a = ap.parse_args()
    if a.child_fwdbwd:
        print(json.dumps(fwdbwd_child(a.child_fwdbwd, a.child_threads)))
        return
    from vid2scene.ssl.data import ViewConfig

    a.out.mkdir(parents=True, exist_ok=True)
    only = set(a.only.split(","))
    if "fwdbwd" in only:
        bench_fwdbwd(a.out)
    data = make_data(a.out, a.rooms, a.probe_rooms, a.density)
    if "synthetic" in only:
        run_pretrain(a.out, "synthetic", data["pretrain"], a.steps)
    if "hololens" in only:
        if (a.hololens / "READY").is_file():
            run_pretrain(a.out, "hololens", [a.hololens], a.steps)
        else:
            emit(a.out, {"figure": "pretrain", "run": "hololens", "skipped": f"no {a.hololens / 'READY'}"})
    if "probe" in only:
        if (a.out / "synthetic" / "checkpoints" / "last.pt").is_file():
            run_probe(a.out, "pretrained", a.out / "synthetic", data, a.probe_epochs)
        run_probe(a.out, "random", None, data, a.probe_epochs)
    if "ablations" in only:  # "full" = every loss on, at the ablation step count
        for term in filter(None, a.ablations.split(",")):
            name = f"full_{a.ablation_steps}" if term == "full" else f"no_{term}_{a.ablation_steps}"
            views = ViewConfig(max_points=a.ablation_max_points)
            run_pretrain(a.out, name, data["pretrain"], a.ablation_steps, views=views,
                         **({} if term == "full" else {term: False}))
            run_probe(a.out, name, a.out / name, data, a.probe_epochs)

if __name__ == "__main__":
    main()

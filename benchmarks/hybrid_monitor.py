"""Hybrid generators side by side on the training monitor's val clips: SSIM with the base layer, without
it, the base alone, and the detail ratio (the output's high-frequency energy over the original's: 1 is
as sharp as the original, below 1 blurred), at one or more base-layer settings. Answers whether a
training change (e.g. the adversarial term of the `hybrid-gan` recipe) helps, on the same frames.

    python benchmarks/hybrid_monitor.py fomm-256-hybrid fomm-256-hybrid-v2 fomm-256-hybrid-sharp
    python benchmarks/hybrid_monitor.py gan=checkpoints/fomm-256-hybrid-gan/resume.pt   # a run's checkpoint

A model is a shipped model's name or a training checkpoint (of the config it names; `fomm-256-hybrid`
if none). The base layer is coded as kpcodec.train.hybrid codes it (every kept frame, stride 2), at each `--setting` SIZE:CRF,
the decoder's divisor 2 between base frames; source = frame 0, every frame's own keypoints.
Writes benchmarks/results/hybrid-monitor.md and .json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import git_commit, machine, write_results  # noqa: E402

from kpcodec.train.data import decode_clip  # noqa: E402
from kpcodec.train.evaluate import MONITOR_CLIPS  # noqa: E402
from kpcodec.train.hybrid import MonitorClip, _fps_by_file, cached_base, evaluate_hybrid  # noqa: E402

KEYS = ("ssim", "ssim_no_base", "ssim_base_only", "detail")


def load(spec: str):
    """A model from a shipped name or a checkpoint path, and what it is (step, recipe, CPU-h)."""
    from kpcodec.models.registry import WEIGHTS, load_checkpoint, load_model

    if spec in WEIGHTS:
        return load_model(spec), {"source": f"shipped {WEIGHTS[spec].file}"}
    import torch

    config = torch.load(spec, map_location="cpu", weights_only=False).get("config", "fomm-256-hybrid")
    model, ck = load_checkpoint(config, spec)
    about = {"source": spec, "config": config}
    for k in ("step", "recipe"):
        if k in ck:
            about[k] = ck[k]
    if "cpu_seconds" in ck:
        about["cpu_hours"] = round(ck["cpu_seconds"] / 3600, 2)
    return model, about


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", metavar="LABEL=MODEL")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--cache", type=Path, default=ROOT / "runs" / "cache" / "base")
    p.add_argument("--setting", action="append", metavar="SIZE:CRF", help="base-layer setting (default 96:63 and 128:55)")
    p.add_argument("--frames", type=int, default=100, help="kept frames per clip (stride 2)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hybrid-monitor")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    settings = [tuple(int(x) for x in s.split(":")) for s in (a.setting or ["96:63", "128:55"])]
    fps = _fps_by_file(a.data)
    a.cache.mkdir(parents=True, exist_ok=True)
    clips = []
    for f in MONITOR_CLIPS:
        frames, _ = decode_clip(a.data / f, 2, a.frames)
        clips.append((f, frames))
    start = time.perf_counter()
    results = []
    for spec in a.models:
        label, _, source = spec.partition("=")
        model, about = load(source or label)
        for size, crf in settings:
            rows = []
            for f, frames in clips:
                base = cached_base(a.cache, "monitor-" + Path(f).stem, frames, size, crf, fps.get(f, 25.0) / 2)
                rows.append(evaluate_hybrid(model, MonitorClip(Path(f).stem, frames, base)))
            mean = {k: float(np.mean([r[k] for r in rows])) for k in KEYS}
            results.append({"label": label, **about, "setting": f"{size}:{crf}", "mean": mean, "clips": rows})
            print(f"{label} {size}:{crf}: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()), file=sys.stderr,
                  flush=True)
    command = "python benchmarks/hybrid_monitor.py " + " ".join(a.models) + \
        "".join(f" --setting {s}" for s in (a.setting or []))
    lines = ["# Hybrid generators on the monitor clips", "",
             f"- **Date:** {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; **machine:** {machine()}; "
             f"**code:** {git_commit()}; {time.perf_counter() - start:.0f} s",
             f"- **Command:** `{command}`",
             f"- **Clips:** the trainer's {len(clips)} monitor clips (val people), the first {a.frames} kept "
             "frames at stride 2; source = frame 0, every frame's own keypoints, the base layer at every 2nd "
             "kept frame and moved by the keypoints in between (as the decoder does).",
             "- **Columns:** SSIM with the base layer; without it (zeros: a lost base); the upsampled base alone, "
             "held; detail = the output's high-frequency energy over the original's (1: as sharp as the original).",
             "", "| model | what | base | SSIM | SSIM no base | base alone | detail |", "|---|---|---|---:|---:|---:|---:|"]
    for r in results:
        what = r["source"] + "".join(f", {k} {r[k]}" for k in ("recipe", "step", "cpu_hours") if k in r)
        m = r["mean"]
        lines.append(f"| {r['label']} | {what} | {r['setting']} | {m['ssim']:.4f} | {m['ssim_no_base']:.4f} | "
                     f"{m['ssim_base_only']:.4f} | {m['detail']:.3f} |")
    write_results(a.out, lines, command, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

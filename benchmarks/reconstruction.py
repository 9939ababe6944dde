"""Reconstruction quality of motion models on the val split (issue 3's validation table).

Source = each clip's first frame; every frame's own keypoints drive the generator (the codec
at keep-every 1 with unquantised keypoints). Reports L1, PSNR, SSIM, face-landmark error
(mediapipe face mesh, px at 256), lip-gap and eye-opening correlation with the original and
keypoint spread, next to the frozen first frame, per clip and mean.

    python benchmarks/reconstruction.py --model fomm-256-quarter            # a shipped model
    python benchmarks/reconstruction.py --checkpoint runs/X/checkpoint.pt --config fomm-256-quarter
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from kpcodec.models.registry import load_checkpoint, load_model
from kpcodec.train.data import manifest_rows
from kpcodec.train.evaluate import evaluate, load_eval_clips

COLUMNS = ["l1", "psnr", "ssim", "landmark_error_px", "lip_gap_corr", "eye_opening_corr", "kp_spread",
           "l1_frozen", "psnr_frozen", "ssim_frozen", "landmark_error_px_frozen"]


def load(args):
    if args.checkpoint:
        return load_checkpoint(args.config, args.checkpoint)[0], f"{args.config} @ {args.checkpoint}"
    return load_model(args.model), args.model


def fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fomm-256-quarter")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--config", default="fomm-256-quarter")
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--landmarks", type=Path, default=Path("runs/cache/landmarks"))
    p.add_argument("--max-frames", type=int, default=250)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--tag", default=None, help="name of the result files (default: model name)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    net, label = load(args)
    files = [r["file"] for r in manifest_rows(args.data, "val")]
    start = time.time()
    clips = load_eval_clips(args.data, files, args.max_frames, args.stride, args.landmarks)
    result = evaluate(net, clips)
    seconds = time.time() - start
    tag = args.tag or (args.model if not args.checkpoint else Path(args.checkpoint).parent.name)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"reconstruction-{tag}.json").write_text(json.dumps({"model": label, **result}, indent=1))
    lines = [
        f"# Reconstruction on the val split: {label}",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()} ({platform.processor() or platform.machine()},"
        f" {torch.get_num_threads()} torch threads), {seconds:.0f} s.",
        f"Command: `{' '.join([Path(sys.executable).name] + sys.argv)}`",
        f"Source = frame 0; up to {args.max_frames} frames a clip (stride {args.stride}); every frame's own keypoints.",
        "",
        "| clip | frames | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for row in result["clips"] + [{"clip": "**mean**", **result["mean"]}]:
        lines.append(f"| {row['clip']} | {fmt(row.get('frames'))} | " + " | ".join(fmt(row.get(c)) for c in COLUMNS) + " |")
    text = "\n".join(lines) + "\n"
    (args.out / f"reconstruction-{tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

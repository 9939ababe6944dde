"""SSIM of the eye region over whole val clips, for several motion models side by side.

Whole-frame SSIM over a clip's first 100 frames missed a failure a GPU-trained step showed in
later frames: the eyes smeared sideways when the face came closer to the camera than in the
source frame (lia_vox_driving3). This measures where such failures live: every `stride`-th
frame of each whole val clip, source = frame 0, every frame's own keypoints, SSIM inside the box
around the original's eye landmarks (mediapipe face mesh from the landmark cache, 10 px margin).
Per clip: mean, 5th percentile and minimum; overall: mean, 5th percentile, frames below 0.3.

    python benchmarks/eye_region.py --model fomm-256-fast --checkpoint old=/tmp/old-fast.pt:fomm-256-fast
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from kpcodec.eval.landmarks import EYE_CONTOUR
from kpcodec.eval.metrics import ssim
from kpcodec.models.registry import load_checkpoint, load_model
from kpcodec.train.data import decode_clip, manifest_rows
from kpcodec.train.evaluate import reconstruct

MARGIN = 10  # px around the eye landmarks
LOW = 0.3  # "smeared" threshold for a frame's eye-region SSIM


def eye_box(landmarks: np.ndarray, size: int) -> tuple[int, int, int, int] | None:
    eyes = landmarks[list(EYE_CONTOUR)]
    if not np.isfinite(eyes).all():
        return None
    x0, y0 = np.clip(eyes.min(0) - MARGIN, 0, size - 1).astype(int)
    x1, y1 = np.clip(eyes.max(0) + MARGIN, 0, size - 1).astype(int)
    return (x0, y0, x1, y1) if x1 - x0 >= 16 and y1 - y0 >= 12 else None  # SSIM needs a few windows


def clip_scores(model, frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    decoded, _ = reconstruct(model, frames)
    scores = []
    for original, rendered, lm in zip(frames, decoded, landmarks):
        box = eye_box(lm, original.shape[0])
        if box is not None:
            x0, y0, x1, y1 = box
            scores.append(ssim(original[y0:y1, x0:x1], rendered[y0:y1, x0:x1]))
    return np.asarray(scores)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], help="shipped model name (repeatable)")
    p.add_argument("--checkpoint", action="append", default=[], help="LABEL=PATH:CONFIG (repeatable)")
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--landmarks", type=Path, default=Path("runs/cache/landmarks"))
    p.add_argument("--stride", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/eye_region.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    models = [(name, load_model(name)) for name in args.model]
    for spec in args.checkpoint:
        label, rest = spec.split("=", 1)
        path, config = rest.rsplit(":", 1)
        models.append((label, load_checkpoint(config, Path(path))[0]))
    for _, m in models:
        m.eval()
    start = time.time()
    per_model = {label: [] for label, _ in models}
    rows = []
    for row in manifest_rows(args.data, "val"):
        stem = Path(row["file"]).stem
        frames, index = decode_clip(args.data / row["file"], args.stride)
        with np.load(args.landmarks / f"{stem}.npz") as z:
            landmarks = z["landmarks"].astype(np.float32)[index]
        cells = []
        for label, m in models:
            s = clip_scores(m, frames, landmarks)
            per_model[label].append(s)
            cells.append(f"{s.mean():.3f} / {np.percentile(s, 5):.3f} / {s.min():.3f}" if len(s) else "—")
        rows.append(f"| {stem} | {len(frames)} | " + " | ".join(cells) + " |")
        print(rows[-1], file=sys.stderr)
    summary = []
    for label, parts in per_model.items():
        s = np.concatenate(parts)
        summary.append(f"| {label} | {s.mean():.4f} | {np.percentile(s, 5):.4f} | {(s < LOW).sum()} of {len(s)} |")
    labels = [label for label, _ in models]
    text = "\n".join([
        "# Eye-region SSIM over whole val clips",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()} ({platform.machine()}, "
        f"{args.threads} torch threads), {time.time() - start:.0f} s.",
        f"Command: `{' '.join([Path(sys.executable).name] + sys.argv)}`",
        f"Every val clip at stride {args.stride}, source = frame 0, every frame's own keypoints;"
        f" SSIM in the box around the original's eye landmarks (+{MARGIN} px).",
        "",
        f"| model | mean | 5th percentile | frames below {LOW} |",
        "|---|---|---|---|",
        *summary,
        "",
        "Per clip (mean / 5th percentile / minimum):",
        "",
        "| clip | frames | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
        *rows,
    ]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""The validation curve of a training run, as a markdown table, from its log.jsonl.

    python benchmarks/training_curve.py runs/fomm-256-quarter/log.jsonl > benchmarks/results/training-fomm-256-quarter.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = [("l1", "L1"), ("ssim", "SSIM"), ("psnr", "PSNR"), ("landmark_error_px", "landmark px"),
           ("lip_gap_corr", "lip-gap corr"), ("eye_opening_corr", "eye corr"), ("kp_spread", "kp spread")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", type=Path)
    args = p.parse_args()
    rows, frozen, last_train = [], None, None
    for line in args.log.read_text().splitlines():
        rec = json.loads(line)
        if "train" in rec:
            last_train = rec["train"]
        if "val" not in rec:
            continue
        v = rec["val"]
        frozen = v
        s_step = last_train.get("s_per_step") if last_train else None
        rows.append((rec["step"], rec["cpu_hours"], s_step, v))
    print(f"# Validation curve: {args.log}\n")
    print("Monitoring subset of the val split (kpcodec/train/evaluate.py MONITOR_CLIPS: 6 clips, 6 people,"
          " first 100 frames at stride 2), source = frame 0, every frame's own keypoints.\n")
    print("| step | CPU-hours | s/step | " + " | ".join(name for _, name in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    if frozen:
        print("| frozen frame 0 | | | " + " | ".join(
            f"{frozen[k + '_frozen']:.3f}" if frozen.get(k + "_frozen") is not None else "—" for k, _ in COLUMNS) + " |")
    for step, hours, s_step, v in rows:
        cells = [f"{v[k]:.3f}" if v.get(k) is not None else "—" for k, _ in COLUMNS]
        print(f"| {step} | {hours:.2f} | {s_step:.2f} | " + " | ".join(cells) + " |" if s_step else
              f"| {step} | {hours:.2f} | | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

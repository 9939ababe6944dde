"""Pack what a GPU training run needs into one small folder (the device tool carries <= 64 MiB).

    python tools/gpu/pack.py --data ../shared/data --landmarks runs/cache/landmarks --out .devrun \
        --init checkpoints/fomm-256-quarter-mouth/resume.pt

Copies the train split's clips and manifest, the starting weights (without optimiser state), and the face-mesh landmarks of every `stride`-th
frame, cut to the lips, eyelids and a third of the other points (the dense mesh is redundant
for the flow loss) and stored as 1/64-pixel steps, delta-coded in time and deflated.
`tools/gpu/unpack.py` turns them back into the landmark cache's layout (NaN elsewhere).
"""
from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
import torch

from kpcodec.eval.landmarks import EYE_CONTOUR, LIP_CONTOUR, N_LANDMARKS

SCALE = 64.0  # steps per pixel


def landmark_subset(every: int = 3) -> np.ndarray:
    keep = set(LIP_CONTOUR) | set(EYE_CONTOUR) | set(range(0, N_LANDMARKS, every))
    return np.array(sorted(keep), dtype=np.int16)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--landmarks", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--every", type=int, default=3)
    p.add_argument("--init", type=Path, help="resume file the quarter run starts from (-> quarter-init.pt)")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.init:
        ck = torch.load(a.init, map_location="cpu", weights_only=False)
        torch.save({k: v for k, v in ck.items() if k != "optimizer"}, a.out / "quarter-init.pt")
    data = a.out / "data"
    (data / "talking-heads" / "train").mkdir(parents=True, exist_ok=True)
    with open(a.data / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["split"] == "train" and r["file"].startswith("talking-heads/")]
    with open(data / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(train)
    subset = landmark_subset(a.every)
    arrays = {"subset": subset, "stride": np.array(a.stride)}
    for r in train:
        shutil.copy2(a.data / r["file"], data / r["file"])
        stem = Path(r["file"]).stem
        npz = a.landmarks / f"{stem}.npz"
        if not npz.is_file():
            continue
        with np.load(npz) as z:
            full = z["landmarks"].astype(np.float32)
        lm = full[:: a.stride][:, subset]
        q = np.round(np.nan_to_num(lm, nan=-1.0) * SCALE).astype(np.int32)  # -64: no face
        delta = np.diff(q, axis=0, prepend=np.zeros_like(q[:1]))
        arrays[f"{stem}"] = delta.astype(np.int16)
        arrays[f"{stem}.frames"] = np.array(len(full))
    np.savez_compressed(a.out / "landmarks.npz", **arrays)
    size = sum(f.stat().st_size for f in a.out.rglob("*") if f.is_file())
    print(f"{len(train)} clips, {len(subset)} landmarks, {size / 2**20:.1f} MiB in {a.out}")


if __name__ == "__main__":
    main()

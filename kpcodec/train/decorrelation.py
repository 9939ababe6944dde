"""Learn the intra-frame decorrelation table of KPRC coder 1 (kpcodec/bitstream/entropy_decorrelation.json).

    python -m kpcodec.train.decorrelation --trajectories runs/cache/trajectories

Codes the train split's trajectories (kpcodec.train.trajectories) with the closed-loop
quantiser at keep-every 1, 2 and 4 (default steps, format 1.3's in-loop predictors), one per
gap class of kpcodec.bitstream.decorrelate, and fits, for each residual of a frame, a ridge regression
on the residuals coded before it in that frame. The weights are rounded to integers at
2**shift. The table is part
of format 1.3: changing it changes the bitstream, so a new table needs a new coder id; after
it, re-learn coder 1's entropy prior (python -m kpcodec.train.entropy_prior --coder 1).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from kpcodec.bitstream import decorrelate
from kpcodec.bitstream import quantize as q
from kpcodec.train.entropy_prior import residuals
from kpcodec.train.trajectories import load_trajectories

KEEPS = (1, 2, 4)  # the keep-every that trains gap class 0, 1, 2 (frame index delta 1, 2, >= 3)


def residual_rows(trajectories: list[dict], keeps) -> np.ndarray:
    """Every sent frame's residuals but the first of each clip, shaped (N, 6K), float64."""
    rows = []
    for tr in trajectories:
        for keep in keeps:
            _, r_kp, r_jac = residuals(tr["kp"], tr["jac"], np.arange(0, len(tr["kp"]), keep), q.PREDICTORS_1_3)
            rows.append(np.concatenate([r_kp, r_jac], 1)[1:])
    return np.concatenate(rows).astype(np.float64)


def fit_weights(rows: np.ndarray, shift: int = 8, ridge: float = 1.0) -> np.ndarray:
    """Ridge least squares of each column on the columns before it, as integers at 2**shift."""
    width = rows.shape[1]
    gram = rows.T @ rows
    weights = np.zeros((width, width), dtype=np.int64)
    for j in range(1, width):
        w = np.linalg.solve(gram[:j, :j] + ridge * np.eye(j), gram[:j, j])
        weights[j, :j] = np.clip(np.rint(w * (1 << shift)), -decorrelate.MAX_WEIGHT, decorrelate.MAX_WEIGHT)
    return weights


def fit_table(trajectories: list[dict], shift: int = 8, ridge: float = 1.0) -> tuple[decorrelate.Table, int]:
    """The table for these trajectories' detector, and the number of residual frames it saw."""
    per_class = [residual_rows(trajectories, (keep,)) for keep in KEEPS]
    width = per_class[0].shape[1]
    if width % 6:
        raise ValueError(f"a frame's residuals are 6 per keypoint, got {width}")
    weights = np.stack([fit_weights(rows, shift, ridge) for rows in per_class])
    return decorrelate.Table(width // 6, shift, weights), sum(len(r) for r in per_class)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trajectories", type=Path, default=Path("runs/cache/trajectories"))
    p.add_argument("--shift", type=int, default=8, help="weights are integers at 2**shift")
    p.add_argument("--ridge", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "bitstream" / decorrelate.TABLE_FILE)
    args = p.parse_args(argv)
    train = load_trajectories(args.trajectories, "train")
    if not train:
        raise SystemExit(f"{args.trajectories}: no train trajectories")
    table, rows = fit_table(train, args.shift, args.ridge)
    out = {"coder": 1, "keypoints": table.keypoints, "shift": table.shift, "keeps": list(KEEPS),
           "ridge": args.ridge, "clips": len(train), "rows": rows,
           "detector_sha256": train[0]["detector_sha256"], "weights": table.weights.tolist()}
    args.out.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} from {rows} residual frames of {len(train)} train clips")


if __name__ == "__main__":
    main()

"""The learned priors of the keypoint range coder (kpcodec/entropy_prior*.json).

    python -m kpcodec.train.entropy_prior --coder 1 --trajectories runs/cache/trajectories

Codes the train split's trajectories (kpcodec.train.trajectories) as the .kpc writer does
(coder 0 with 1.1's in-loop predictors, coder 1 with 1.3's), at keep-every 1, 2 and 4 with
the default steps, counts how often each adaptive model of kpcodec.bitstream.entropy sees each
symbol, and scales every model's counts to about --total (each count at least 1): the
coder's starting point. Coder 1 counts
the symbols after intra-frame decorrelation (kpcodec.bitstream.decorrelate). Each file is part of the
format (coder 0: 1.1, coder 1: 1.3): changing one changes the bitstream, so regenerate a
prior only for a new coder id.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from kpcodec.bitstream import decorrelate, entropy
from kpcodec.bitstream import quantize as q
from kpcodec.train.trajectories import load_trajectories


def residuals(kp: np.ndarray, jac: np.ndarray, idx: np.ndarray, predictors: tuple[int, int]) -> list[np.ndarray]:
    """Frame index deltas (S, 1), keypoint (S, 2K) and Jacobian (S, 4K) residuals of the
    closed-loop quantiser at the default steps, for sent frames `idx`."""
    r_kp, r_jac = q.closed_loop_rows(kp[idx], jac[idx], q.DEFAULT_KP_STEP, q.DEFAULT_JAC_STEP, predictors)
    return [np.diff(idx, prepend=0).reshape(len(idx), 1), r_kp, r_jac]


def residual_streams(kp: np.ndarray, jac: np.ndarray, idx: np.ndarray, coder: int = 0) -> list[np.ndarray]:
    """The three streams KPRC coder `coder` codes for sent frames `idx` (coder 0 with format 1.1's
    in-loop predictors, coder 1 with 1.3's)."""
    deltas, r_kp, r_jac = residuals(kp, jac, idx, q.PREDICTORS_1_3 if coder == 1 else q.PREDICTORS_1_1)
    if coder == 1:
        r_kp, r_jac = decorrelate.forward_streams(r_kp, r_jac, deltas, decorrelate.shipped_table())
    return [deltas, r_kp, r_jac]


def _scale(counts: list[int], total: int) -> list[int]:
    c = np.asarray(counts, dtype=np.float64)
    if c.sum() == 0:
        return [1] * len(counts)
    return np.maximum(1, np.rint(c / c.sum() * total)).astype(int).tolist()


def build_prior(trajectories: list[dict], keeps=(1, 2, 4), total: int = 1024, coder: int = 0) -> dict:
    sums = None
    for tr in trajectories:
        for keep in keeps:
            idx = np.arange(0, len(tr["kp"]), keep)
            stats = entropy.symbol_statistics(residual_streams(tr["kp"], tr["jac"], idx, coder))
            if sums is None:
                sums = stats
                continue
            for acc, new in zip(sums, stats):
                for key, value in new.items():
                    if key == "contexts":
                        acc[key] = [(np.add(a, b)).tolist() for a, b in zip(acc[key], value)]
                    else:
                        acc[key] = np.add(acc[key], value).tolist()
    streams = [{key: ([_scale(c, total) for c in value] if key == "contexts" else _scale(value, total))
                for key, value in s.items()} for s in sums]
    return {"coder": coder, "total": total, "keeps": list(keeps), "kp_step": q.DEFAULT_KP_STEP,
            "jac_step": q.DEFAULT_JAC_STEP, "clips": len(trajectories), "streams": streams}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trajectories", type=Path, default=Path("runs/cache/trajectories"))
    p.add_argument("--total", type=int, default=1024, help="counts per model after scaling")
    p.add_argument("--coder", type=int, choices=sorted(entropy.PRIOR_FILES), default=1)
    p.add_argument("--out", type=Path, help="default: the coder's file in the package")
    args = p.parse_args(argv)
    out = args.out or Path(__file__).resolve().parents[1] / "bitstream" / entropy.PRIOR_FILES[args.coder]
    train = load_trajectories(args.trajectories, "train")
    if not train:
        raise SystemExit(f"{args.trajectories}: no train trajectories")
    table = build_prior(train, total=args.total, coder=args.coder)
    out.write_text(json.dumps(table, separators=(",", ":")) + "\n")
    print(f"wrote {out} from {len(train)} train clips")


if __name__ == "__main__":
    main()

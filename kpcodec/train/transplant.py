"""One model's motion (keypoint detector + dense motion network) with another's generator.

The fast and quarter configs share detector and dense-motion widths, so a motion trained in
one moves into the other unchanged; the generator then adapts with recipe `generator-only`:

    python -m kpcodec.train.transplant --motion runs/q/weights-fp16.pt \\
        --generator checkpoints/fomm-256-fast/resume.pt --out runs/fast-init.pt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

MOTION_MODULES = ("detector.", "dense_motion.")


def read_checkpoint(path: Path) -> dict:
    """{"model": weights, ...} from a shipped fp16 file, a run's weights-fp16.pt or a (compact)
    checkpoint (which also holds step, CPU time and the optimiser)."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    return ck if "model" in ck else {"model": ck}


def transplant(motion: dict[str, torch.Tensor], generator: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    moved = {k: v for k, v in motion.items() if k.startswith(MOTION_MODULES)}
    if not moved:
        raise ValueError("the motion weights hold no detector or dense-motion tensors")
    out = dict(generator)
    for k, v in moved.items():
        if k not in out or out[k].shape != v.shape:
            raise ValueError(f"{k}: the two models' motion networks differ in shape")
        out[k] = v.to(out[k].dtype) if out[k].is_floating_point() else v
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--motion", type=Path, required=True, help="weights whose detector + dense motion are kept")
    p.add_argument("--generator", type=Path, required=True, help="weights whose generator is kept")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    # The generator's run continues: its step, CPU time and optimiser (generator-only) are kept.
    ck = read_checkpoint(a.generator)
    ck["model"] = transplant(read_checkpoint(a.motion)["model"], ck["model"])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, a.out)
    print(a.out)


if __name__ == "__main__":
    main()

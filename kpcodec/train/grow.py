"""Grow a trained model into a larger config of the same family without changing its output.

Used to give the fast model's generator more bottleneck blocks or more channels and then keep
training it, rather than training a larger generator from scratch. Every tensor is embedded in
the leading slice of the larger one; the rest keeps its fresh initialisation except:
- a convolution's weights on new *input* channels are zero, so channels that did not exist
  contribute nothing until training moves those weights (they receive gradients);
- a residual block that did not exist gets a zero last convolution, so it starts as identity.
Every consumer of a channel in these networks is a convolution or acts per channel (norm,
ReLU, pooling, warping, occlusion, residual add), so the grown model computes what the small
one did (tests/test_grow.py checks it).

    python -m kpcodec.train.grow --weights checkpoints/fomm-256-fast/resume.pt \\
        --from fomm-256-fast --to fomm-256-fast-deep --out runs/fast-deep-init.pt
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from kpcodec.models.fomm import MotionModel
from kpcodec.models.registry import ModelConfig, build_model, get_config
from kpcodec.train.transplant import read_checkpoint

_NEW_BLOCK_LAST_CONV = re.compile(r"(.*\.bottleneck\.\d+)\.conv2\.(weight|bias)$")


def _embed(old: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    if old.shape == fresh.shape:
        return old.to(fresh.dtype) if fresh.is_floating_point() else old
    if old.dim() != fresh.dim() or any(o > n for o, n in zip(old.shape, fresh.shape)):
        raise ValueError(f"cannot embed a {tuple(old.shape)} tensor in {tuple(fresh.shape)}")
    out = fresh.clone()
    if out.dim() == 4:  # conv weight (out, in, kh, kw): silence the new inputs
        out[:, old.shape[1]:] = 0
    out[tuple(slice(0, n) for n in old.shape)] = old.to(out.dtype)
    return out


def grow(state: dict[str, torch.Tensor], target: str | ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """`state` (weights of a smaller config of the same family) embedded in config `target`."""
    torch.manual_seed(seed)
    fresh = MotionModel(get_config(target) if isinstance(target, str) else target).state_dict()
    out = {}
    for key, value in fresh.items():
        if key in state:
            out[key] = _embed(state[key], value)
        elif _NEW_BLOCK_LAST_CONV.match(key):
            out[key] = torch.zeros_like(value)  # a new residual block starts as identity
        else:
            out[key] = value
    unused = sorted(set(state) - set(fresh))
    if unused:
        raise ValueError(f"{len(unused)} tensors have no place in the larger config, e.g. {unused[0]}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True, help="checkpoint or weights of the smaller model")
    p.add_argument("--from", dest="source", required=True, help="its config")
    p.add_argument("--to", dest="target", required=True, help="the larger config")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    ck = read_checkpoint(a.weights)
    if ck.get("config", a.source) != a.source:
        raise SystemExit(f"{a.weights} holds config {ck['config']!r}, not {a.source!r}")
    build_model(a.source).load_state_dict({k: v.float() if v.is_floating_point() else v
                                           for k, v in ck["model"].items()})  # right family, all tensors
    # The run goes on from the small model's step and CPU time; its optimiser does not fit.
    grown = {"model": grow(ck["model"], a.target), "config": a.target,
             **{k: ck[k] for k in ("step", "cpu_seconds", "accelerator_seconds") if k in ck}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(grown, a.out)
    print(a.out)


if __name__ == "__main__":
    main()

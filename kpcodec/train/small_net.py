"""What the trainers of the decoder's small CNNs share (the base-layer restorer, kpcodec.train.restorer;
the between refiner, kpcodec.train.between): their command-line options, a run that resumes from its
checkpoint, the export of its weights (alone, or into a shipped model under a prefix), and the loop:
1 - SSIM + L1 on batches a trainer draws, Adam, a checkpoint every `--save-every` steps, the
monitor every `--val-every` (printed and appended to log.jsonl)."""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from kpcodec.train import losses


def add_options(ap: argparse.ArgumentParser, what: str) -> None:
    """The options every small-net trainer takes (`what`: the net, for the help)."""
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--val-every", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--export", type=Path, default=None, help=f"write the checkpoint's {what} weights and stop")
    ap.add_argument("--into", default=None, help=f"with --export: a shipped model's weights, the {what} added")


@dataclass
class Run:
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    step: int
    arch: tuple
    out: Path
    resumed: bool

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.pt"

    def save(self) -> None:
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save({"model": self.net.state_dict(), "opt": self.opt.state_dict(), "step": self.step, "arch": self.arch}, tmp)
        tmp.replace(self.checkpoint)


def open_run(out: Path, make: Callable[..., torch.nn.Module], arch: tuple, lr: float, legacy_arch: tuple | None = None) -> Run:
    """The run in `out`: resumed from its checkpoint (its own arch; `legacy_arch` for one saved
    without; the optimiser at `lr`, a lower one to finish), or a new `make(*arch)`."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "checkpoint.pt"
    ck = torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None
    if ck is not None:
        arch = tuple(ck["arch"]) if legacy_arch is None else tuple(ck.get("arch", legacy_arch))
    net = make(*arch)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    if ck is None:
        return Run(net, opt, 0, arch, out, False)
    net.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    for group in opt.param_groups:
        group["lr"] = lr
    return Run(net, opt, ck["step"], arch, out, True)


def export(run: Run, path: Path, into: str | None, prefix: str) -> None:
    """The run's weights to `path`: alone, or `into` (a shipped model) with them under `prefix`."""
    state = {k: v.clone() for k, v in run.net.state_dict().items()}
    if into is not None:
        from kpcodec.models.registry import load_model

        state = {**load_model(into).state_dict(), **{f"{prefix}.{k}": v for k, v in state.items()}}
    torch.save(state, path)
    print(f"exported step {run.step} ({run.arch}) to {path}")


def train(run: Run, args, draw: Callable[[random.Random], tuple[tuple, torch.Tensor]],
          evaluate: Callable[[], dict], size: str) -> None:
    """Train until `args.steps` or `args.minutes`: `draw(rng)` gives a batch (the net's inputs, the
    target), `evaluate()` the monitor; `size` says what the data holds."""
    rng = random.Random(run.step)
    log = open(run.out / "log.jsonl", "a")
    print(f"step {run.step}: {size}, monitor {evaluate()}", flush=True)
    t0 = time.time()
    while (args.steps is None or run.step < args.steps) and time.time() - t0 < args.minutes * 60:
        inputs, target = draw(rng)
        out = run.net(*inputs)
        loss = (1 - losses.ssim(out, target)) + (out - target).abs().mean()
        run.opt.zero_grad()
        loss.backward()
        run.opt.step()
        run.step += 1
        if run.step % args.save_every == 0:
            run.save()
        if run.step % args.val_every == 0:
            row = {"step": run.step, "loss": round(loss.item(), 4), "s": round(time.time() - t0), "monitor": evaluate()}
            print(json.dumps(row), flush=True)
            log.write(json.dumps(row) + "\n")
            log.flush()
    run.save()
    print(f"step {run.step}: monitor {evaluate()}", flush=True)

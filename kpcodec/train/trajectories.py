"""Keypoint trajectories of every talking-head clip: the training and validation data of the
keypoint predictors (kpcodec.train.predictor_training) and of benchmarks/predictor_quality.py.

    python -m kpcodec.train.trajectories --data /work/shared/data \\
        --checkpoint runs/fomm-256-quarter/checkpoint.pt --config fomm-256-quarter \\
        --out runs/cache/trajectories
    python -m kpcodec.train.trajectories --model fomm-256-quarter ...     # shipped weights

Writes `<out>/<clip stem>.npz` per clip listed in manifest.csv (train and val): kp (T,K,2)
float32 in [-1,1], jac (T,K,2,2) float32, fps, split, clip (its path), detector (a label) and
detector_sha256. For shipped weights the sha256 is the weights file's (what a .kpc header
records); for a training checkpoint it is the sha256 of the detector's state-dict bytes.
Clips whose npz already carries the same sha256 are skipped, so the command is resumable and
re-running it after the detector changed recomputes everything. Frames are decoded straight
from the shared data folder and never copied.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from kpcodec.models.registry import state_sha256

TALKING_HEADS = "talking-heads/"


def load_detector(checkpoint: Path | None, config: str | None, model: str | None):
    """(detector module in eval mode, label, sha256)."""
    import torch

    from kpcodec.models.registry import get_weights, load_checkpoint

    if checkpoint is not None:
        if not config:
            raise SystemExit("--checkpoint needs --config")
        net, ck = load_checkpoint(config, checkpoint)
        step = ck.get("step") if isinstance(ck, dict) else None
        label = f"{config} @ {checkpoint}" + (f" step {step}" if step is not None else "")
        return net.detector.eval(), label, state_sha256(net.detector.state_dict())
    from kpcodec.errors import ModelError
    from kpcodec.models.keypoints import KeypointDetector
    from kpcodec.models.registry import DEFAULT_MODEL, get_config, sha256_file, weights_dir

    # Only the detector is needed: load its part of the shipped file (sha256 checked), so
    # that changes to the rest of the model do not matter here.
    name = model or DEFAULT_MODEL
    entry = get_weights(name)
    path = weights_dir() / entry.file
    if not path.is_file() or sha256_file(path) != entry.sha256:
        raise ModelError(f"weights of {name!r} missing or failing their sha256 check: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    detector = KeypointDetector(get_config(entry.config))
    detector.load_state_dict({k[len("detector."):]: v.float() for k, v in state.items() if k.startswith("detector.")})
    return detector.eval(), name, entry.sha256


def talking_head_rows(data: Path) -> list[dict]:
    import csv

    with open(data / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["file"].startswith(TALKING_HEADS)]
    return sorted(rows, key=lambda r: r["file"])


def npz_path(out: Path, file: str) -> Path:
    return out / (Path(file).stem + ".npz")


def stored_sha(path: Path) -> str | None:
    try:
        with np.load(path) as z:
            return str(z["detector_sha256"])
    except (OSError, KeyError, ValueError):
        return None


def frame_batches(path: Path, batch: int):
    """(B,H,W,3) uint8 batches of every frame of a clip, in order."""
    import av

    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == batch:
                yield np.stack(frames)
                frames = []
    if frames:
        yield np.stack(frames)


def detect_clip(detector, path: Path, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    import torch

    kps, jacs = [], []
    with torch.inference_mode():
        for frames in frame_batches(path, batch):
            # The detector scales its input to its own working size (64x64 for 256-pixel models).
            kp, jac = detector(torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0))
            kps.append(kp.numpy())
            jacs.append(jac.numpy())
    return np.concatenate(kps).astype(np.float32), np.concatenate(jacs).astype(np.float32)


def save_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(str(tmp), **arrays)
    os.replace(tmp, path)


def run(data: Path, out: Path, checkpoint: Path | None = None, config: str | None = None,
        model: str | None = None, batch: int = 32, threads: int = 1, limit: int | None = None,
        quiet: bool = False) -> dict:
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    torch.set_num_threads(threads)
    if not (data / "manifest.csv").is_file():
        raise SystemExit(f"{data}: no manifest.csv")
    console = Console(stderr=True, quiet=quiet)
    detector, label, sha = load_detector(checkpoint, config, model)
    out.mkdir(parents=True, exist_ok=True)
    rows = talking_head_rows(data)[:limit]
    todo = [r for r in rows if stored_sha(npz_path(out, r["file"])) != sha]
    console.print(f"detector {label} (sha256 {sha[:12]}…): {len(rows) - len(todo)} of {len(rows)} clips done")
    frames_done, seconds = 0, 0.0
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, disable=quiet) as progress:
        task = progress.add_task("trajectories", total=len(todo), info="")
        for row in todo:
            t0 = time.perf_counter()
            kp, jac = detect_clip(detector, data / row["file"], batch)
            dt = time.perf_counter() - t0
            frames_done += len(kp)
            seconds += dt
            save_npz(npz_path(out, row["file"]), kp=kp, jac=jac, fps=np.float64(row["fps"]),
                     split=np.str_(row["split"]), clip=np.str_(row["file"]), detector=np.str_(label),
                     detector_sha256=np.str_(sha))
            progress.update(task, advance=1, info=f"{Path(row['file']).stem[:32]} {1000 * dt / len(kp):.1f} ms/frame")
    console.print(f"{len(todo)} clips, {frames_done} frames in {seconds:.0f} s -> {out}")
    return {"clips": len(todo), "frames": frames_done, "seconds": seconds, "sha256": sha}


def load_trajectories(folder: Path, split: str | None = None, sha256: str | None = None) -> list[dict]:
    """Every npz in `folder` (optionally one split / one detector) as dicts of arrays."""
    out = []
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path) as z:
            if split is not None and str(z["split"]) != split:
                continue
            if sha256 is not None and str(z["detector_sha256"]) != sha256:
                continue
            out.append({"name": path.stem, "kp": z["kp"].astype(np.float32), "jac": z["jac"].astype(np.float32),
                        "fps": float(z["fps"]), "split": str(z["split"]),
                        "detector_sha256": str(z["detector_sha256"])})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--checkpoint", type=Path, help="a training checkpoint (with --config)")
    p.add_argument("--config", help="model config of --checkpoint")
    p.add_argument("--model", help="shipped weights by name (default: the default model)")
    p.add_argument("--out", type=Path, default=Path("runs/cache/trajectories"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, help="only the first N clips (tests)")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.checkpoint is not None and a.model:
        p.error("give --checkpoint or --model, not both")
    run(a.data, a.out, a.checkpoint, a.config, a.model, a.batch, a.threads, a.limit, a.quiet)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Train the base-layer restorer (kpcodec.models.restorer): the learned upsampler that a stream of
the base layer alone goes through before its frames are moved and shown.

Data: the first FRAMES frames of every train clip, coded through the real base layer
(kpcodec.media.baselayer, at TRAIN_PRESET) at two settings drawn per clip from what the rate
control picks below the model size (SETTINGS, CRF 48-63), decoded; each pair is (decoded base
frame, the original frame), cached per clip under `--cache` (coded as a file of the base layer alone
is, so without AV1's CDEF and loop restoration since session 39: baselayer.RESTORED_SVT_PARAMS; a cache
of another encoder setting wants another --cache). The monitor: the six monitor val
clips at four settings, coded at the file's preset (baselayer.PRESET). Loss 1 - SSIM + L1 on
random 128-px crops (flipped half the time), Adam. The run checkpoints every `--save-every`
steps and resumes from its checkpoint. `--frames 3` trains a restorer that also sees the base frames
before and after (a clip's ends their own); `--init` then takes a 1-frame restorer's weights (widened).
`--full-cache` adds base frames at the model size (two of FULL_SETTINGS per clip, CRF 40-62, coded as
encode codes them there: with the filters), for a model that restores those too (config
fomm-256-hybrid-restore-full, `-v5`); both kinds are drawn alike and both monitored.

    python -m kpcodec.train.restorer --data ../shared/data --out runs/restorer --minutes 40 [--init W.pt]
        [--full-cache runs/cache/restorer-full]
    python -m kpcodec.train.restorer --out runs/restorer --export runs/restorer/model.pt --into fomm-256-hybrid-v2
    python -m kpcodec.train.export runs/restorer/model.pt --name fomm-256-hybrid-v3 \
        --config fomm-256-hybrid-restore --default-hybrid
(--export writes the shipped model `--into` with the checkpoint's restorer added, for
kpcodec.train.export; without --into, the restorer's weights alone.)
"""
from __future__ import annotations

import argparse
import random
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from kpcodec.eval.metrics import ssim as ssim_np
from kpcodec.media import baselayer, video
from kpcodec.models.frames import frames_to_tensor, tensor_to_frames
from kpcodec.models.restorer import BaseRestorer, bicubic
from kpcodec.train import small_net
from kpcodec.train.data import manifest_rows
from kpcodec.train.evaluate import MONITOR_CLIPS

FRAMES = 160
TRAIN_PRESET = 4  # close to the file's preset 2 in its artefacts, at a third of its time
SETTINGS = ((192, 4), (160, 3), (128, 3), (128, 4), (128, 6), (96, 4), (64, 6))
CRFS = (48, 63)
MONITOR_SETTINGS = ((192, 4, 56), (160, 3, 54), (128, 4, 55), (96, 4, 52))
# Base frames at the model size (`--full-cache`, for a model that restores them too: restore_full):
# coded as encode codes them there, with AV1's in-loop filters.
FULL_SETTINGS = ((256, 3), (256, 4), (256, 6))
FULL_CRFS = (40, 62)
FULL_MONITOR = ((256, 4, 50), (256, 4, 58))
CROP, BATCH = 128, 8


def upsample(small: np.ndarray, size: int = 256) -> torch.Tensor:
    """(N,s,s,3) uint8 -> (N,3,size,size) in [0,1], bicubic as MotionModel.base_image."""
    return bicubic(frames_to_tensor(small), size)


def coded_pairs(frames: np.ndarray, fps: float, settings, preset: int) -> list[tuple[tuple, np.ndarray, np.ndarray]]:
    """[((size, divisor, crf), decoded base frames, their original frames)] of one clip."""
    out = []
    for size, div, crf in settings:
        s = baselayer.BaseLayerSettings(size, div, crf, alone=True)
        idx = list(s.frame_indices(len(frames)))
        out.append(((size, div, crf), baselayer.decode_clip(baselayer.encode_clip(frames, s, fps, preset=preset)),
                    frames[idx]))
    return out


def build_cache(data: Path, cache: Path, split: str, full: bool = False, part: tuple[int, int] = (0, 1)) -> list[Path]:
    """One .npz per clip (train: two of SETTINGS drawn per clip; val: the monitor clips at
    MONITOR_SETTINGS); `full`: at the model size (FULL_SETTINGS, FULL_MONITOR); `part` (I, N): build
    only the clips k with k % N == I (parallel builds)."""
    choices, crfs, monitor = (FULL_SETTINGS, FULL_CRFS, FULL_MONITOR) if full else (SETTINGS, CRFS, MONITOR_SETTINGS)
    cache.mkdir(parents=True, exist_ok=True)
    rows = manifest_rows(data, split)
    if split == "val":
        rows = [r for r in rows if r["file"] in MONITOR_CLIPS]
    paths = []
    for k, row in enumerate(rows):
        path = cache / f"{split}-{Path(row['file']).stem}.npz"
        paths.append(path)
        if path.is_file() or k % part[1] != part[0]:
            continue
        frames = np.stack(list(islice(video.read_frames(data / row["file"]), FRAMES if split == "train" else 100)))
        if split == "train":
            rng = random.Random(k)
            settings = [(*c, rng.randint(*crfs)) for c in rng.sample(choices, 2)]
        else:
            settings = monitor
        pairs = coded_pairs(frames, float(row["fps"]), settings, TRAIN_PRESET if split == "train" else baselayer.PRESET)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, settings=np.array([p[0] for p in pairs]),
                 **{f"small{j}": p[1] for j, p in enumerate(pairs)}, **{f"target{j}": p[2] for j, p in enumerate(pairs)})
        tmp.replace(path)
    return paths


def load_pairs(paths, max_size: int = 255) -> list[tuple[tuple, np.ndarray, np.ndarray]]:
    out = []
    for path in paths:
        if not path.is_file():
            continue
        z = np.load(path)
        for j, setting in enumerate(z["settings"]):
            if setting[0] <= max_size:
                out.append((tuple(int(v) for v in setting), z[f"small{j}"], z[f"target{j}"]))
    return out


def neighbours(up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(before, after) of each of a clip's consecutive upsampled base frames (B,3,H,W): the ends their own."""
    return torch.cat([up[:1], up[:-1]]), torch.cat([up[1:], up[-1:]])


def evaluate(net: BaseRestorer, monitor) -> dict[str, tuple[float, float]]:
    """Mean SSIM of the monitor's base frames by setting: (bicubic, restored); every other frame
    scored, each with its own neighbours."""
    scores: dict[tuple, list] = {}
    with torch.inference_mode():
        for setting, small, target in monitor:
            up = upsample(small)
            before, after = neighbours(up)
            up = up[::2]
            out = net(up, before[::2], after[::2])
            scores.setdefault(setting, []).append(
                (np.mean([ssim_np(a, b) for a, b in zip(tensor_to_frames(up), target[::2])]),
                 np.mean([ssim_np(a, b) for a, b in zip(tensor_to_frames(out), target[::2])])))
    return {f"{s[0]}@{s[1]}:{s[2]}": (round(float(np.mean([a for a, _ in v])), 4), round(float(np.mean([b for _, b in v])), 4))
            for s, v in scores.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("runs/restorer"))
    ap.add_argument("--cache", type=Path, default=Path("runs/cache/restorer-rc"))  # coded without CDEF/LR (session 39)
    ap.add_argument("--init", type=Path, default=None, help="start from these restorer weights")
    ap.add_argument("--channels", type=int, default=32, help="the restorer's width (a new run; a resumed one keeps its own)")
    ap.add_argument("--depth", type=int, default=6, help="the restorer's convolutions (a new run)")
    ap.add_argument("--frames", type=int, default=1, choices=(1, 3),
                    help="base frames the restorer sees: 3 adds the one before and after (a new run)")
    ap.add_argument("--full-cache", type=Path, default=None,
                    help="also train on (and monitor) base frames at the model size, cached here")
    ap.add_argument("--cache-only", action="store_true", help="build the caches and stop")
    ap.add_argument("--part", default="0/1", help="with --cache-only: build the clips k with k %% N == I (I/N)")
    small_net.add_options(ap, "restorer")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    run = small_net.open_run(a.out, BaseRestorer, (a.channels, a.depth, 2, a.frames), a.lr, legacy_arch=(32, 6))
    if not run.resumed and a.init is not None:
        run.net.widen(torch.load(a.init, map_location="cpu", weights_only=True))  # a 1-frame init for 3 frames too
    if a.export is not None:
        return small_net.export(run, a.export, a.into, "restorer")
    part = tuple(int(v) for v in a.part.split("/"))
    paths = {split: build_cache(a.data, a.cache, split, part=part) for split in ("val", "train")}
    full = {split: build_cache(a.data, a.full_cache, split, full=True, part=part) if a.full_cache else []
            for split in ("val", "train")}
    if a.cache_only:
        return
    train = load_pairs(paths["train"]) + load_pairs(full["train"], max_size=256)
    monitor = load_pairs(paths["val"]) + load_pairs(full["val"], max_size=256)
    items = [(k, i) for k, (_, small, _) in enumerate(train) for i in range(len(small))]
    net = run.net

    def draw(rng):
        ups, targets = [], []
        for _ in range(BATCH):
            k, i = items[rng.randrange(len(items))]
            _, small, target = train[k]
            y, x = rng.randrange(0, 256 - CROP + 1, 8), rng.randrange(0, 256 - CROP + 1, 8)
            near = [max(i - 1, 0), i, min(i + 1, len(small) - 1)] if net.frames == 3 else [i]
            seq = upsample(small[near])[..., y:y + CROP, x:x + CROP]  # (before, frame, after) or (frame,)
            tt = torch.from_numpy(target[i:i + 1, y:y + CROP, x:x + CROP]).permute(0, 3, 1, 2).float() / 255
            if rng.random() < 0.5:
                seq, tt = seq.flip(-1), tt.flip(-1)
            ups.append(seq)
            targets.append(tt)
        seq = torch.stack(ups, dim=1)  # (1 or 3, BATCH, 3, CROP, CROP)
        return (seq[len(seq) // 2], seq[0], seq[-1]), torch.cat(targets)  # (frame, before, after)

    small_net.train(run, a, draw, lambda: evaluate(net, monitor), f"{len(items)} train pairs")


if __name__ == "__main__":
    main()

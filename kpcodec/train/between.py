"""Train the between refiner (kpcodec.models.between): the learned blend of the two moved base frames
that a stream of the base layer alone shows between base frames.

Data: the restorer's cache (kpcodec.train.restorer: the first frames of every train clip coded
through the real base layer at two settings below the model size, decoded), plus one setting at the
model size per clip (256@DIV, CRF 45-60, coded here), and the clips' own frames. Each base frame is
restored and its keypoints detected by a shipped model (`--model`), as the decoder does; for up to
PER_SETTING frames between two base frames, the two base frames moved to the frame (on the cubic
keypoint path, MotionModel.between_parts), its fraction `a` and the original frame are cached, uint8,
under `--cache`. The monitor: the six monitor val clips at the restorer's four monitor settings and
256@4:56, every third frame between base frames; it prints the plain blend's and the refiner's SSIM.
Loss 1 - SSIM + L1 on random 128-px crops (flipped, and played backwards, half the time each), Adam;
the run checkpoints every `--save-every` steps and resumes from its checkpoint.

Not shipped: in session 40, 5,000 steps left the monitor flat (all settings 0.9033 -> 0.9034; the
restorer gained +0.009 in as many): the plain blend of the two moved frames is as good as a local
network makes it, and what the frames between base frames miss is motion the decoder does not know
(MODEL_CARD, session 40).

    python -m kpcodec.train.between --data ../shared/data --out runs/between --minutes 60
    python -m kpcodec.train.between --out runs/between --export runs/between/model.pt --into fomm-256-hybrid-v4
    python -m kpcodec.train.export runs/between/model.pt --name fomm-256-hybrid-v5 \
        --config fomm-256-hybrid-between --default-hybrid
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
from kpcodec.models.between import BetweenRefiner
from kpcodec.models.frames import frames_to_tensor, tensor_to_frames
from kpcodec.train import restorer, small_net
from kpcodec.train.data import manifest_rows
from kpcodec.train.evaluate import MONITOR_CLIPS

PER_SETTING = 16  # train frames cached per clip and setting
FULL_CRFS = (45, 60)  # the CRF range of the setting at the model size (one of restorer.FULL_SETTINGS; train)
FULL_MONITOR = (256, 4, 56)
CROP, BATCH = 128, 8


def moved_pairs(model, small: np.ndarray, frames: np.ndarray, setting, picks: int | None, rng: random.Random):
    """(moved a, moved b, a, original) uint8/float arrays for frames between the base frames `small`
    of a uniform base layer at `setting` (size, divisor, crf) over `frames`; `picks` of them drawn by
    `rng` (None: every third)."""
    size, div, _ = setting
    idx = list(baselayer.BaseLayerSettings(size, div, 63, alone=True).frame_indices(len(frames)))
    idx = idx[:len(small)]
    with torch.inference_mode():
        up = torch.cat([model.base_image(frames_to_tensor(small[i:i + 16]), restore=True) for i in range(0, len(small), 16)])
        kp, jac = model.detect(up)
    spans = [(k, t) for k in range(len(idx) - 1) for t in range(idx[k] + 1, idx[k + 1])]
    spans = spans[::3] if picks is None else rng.sample(spans, min(picks, len(spans)))
    out = []
    with torch.inference_mode():
        for k, t in spans:
            p, q = max(k - 1, 0), min(k + 2, len(idx) - 1)
            a = torch.tensor([(t - idx[k]) / (idx[k + 1] - idx[k])])
            ma, mb = model.between_parts(up[k:k + 1], kp[k:k + 1], jac[k:k + 1], up[k + 1:k + 2], kp[k + 1:k + 2],
                                         jac[k + 1:k + 2], a, (kp[p:p + 1], jac[p:p + 1], kp[q:q + 1], jac[q:q + 1]))
            out.append((tensor_to_frames(ma)[0], tensor_to_frames(mb)[0], float(a), frames[t]))
    return out


def build_cache(model, data: Path, source: Path, cache: Path, split: str, part: tuple[int, int] = (0, 1)) -> list[Path]:
    """One .npz per clip of the restorer's cache `source` (built if missing): arrays ma, mb, a, target."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    rows = {Path(r["file"]).stem: r for r in manifest_rows(data, split)}
    for k, src in enumerate(sorted(restorer.build_cache(data, source, split))):
        path = cache / src.name
        paths.append(path)
        if path.is_file() or k % part[1] != part[0]:
            continue
        row = rows[src.stem.split("-", 1)[1]]
        n = restorer.FRAMES if split == "train" else 100
        frames = np.stack(list(islice(video.read_frames(data / row["file"]), n)))
        rng = random.Random(k)
        z = np.load(src)
        coded = [(tuple(int(v) for v in s), z[f"small{j}"]) for j, s in enumerate(z["settings"])]
        full = (*rng.choice(restorer.FULL_SETTINGS), rng.randint(*FULL_CRFS)) if split == "train" else FULL_MONITOR
        coded.append(restorer.coded_pairs(frames, float(row["fps"]), [full],
                                          restorer.TRAIN_PRESET if split == "train" else baselayer.PRESET)[0][:2])
        items, settings = [], []
        for setting, small in coded:
            got = moved_pairs(model, small, frames, setting, PER_SETTING if split == "train" else None, rng)
            items += got
            settings += [setting] * len(got)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, ma=np.stack([i[0] for i in items]), mb=np.stack([i[1] for i in items]),
                 a=np.array([i[2] for i in items], np.float32), target=np.stack([i[3] for i in items]),
                 settings=np.array(settings))
        tmp.replace(path)
        print(f"{split} {k}: {path.name} {len(items)} frames", flush=True)
    return paths


def load(paths) -> dict[str, np.ndarray] | None:
    """The cached frames of `paths`, concatenated (None: none)."""
    parts = [np.load(p) for p in paths if p.is_file()]
    if not parts:
        return None
    return {key: np.concatenate([z[key] for z in parts]) for key in ("ma", "mb", "a", "target", "settings")}


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255


def evaluate(net: BetweenRefiner, monitor: dict) -> dict[str, tuple[float, float]]:
    """Mean SSIM of the monitor's frames by setting: (plain blend, refined); {} without a monitor."""
    scores: dict[tuple, list] = {}
    if monitor is None:
        return {}
    with torch.inference_mode():
        for i in range(0, len(monitor["a"]), 16):
            ma, mb = _tensor(monitor["ma"][i:i + 16]), _tensor(monitor["mb"][i:i + 16])
            a = torch.from_numpy(monitor["a"][i:i + 16])
            plain = tensor_to_frames(torch.lerp(ma, mb, a.view(-1, 1, 1, 1)).clamp(0, 1))
            refined = tensor_to_frames(net(ma, mb, a))
            for j, (p, r) in enumerate(zip(plain, refined)):
                t = monitor["target"][i + j]
                scores.setdefault(tuple(int(v) for v in monitor["settings"][i + j]), []).append((ssim_np(t, p), ssim_np(t, r)))
    if not scores:
        return {}
    out = {f"{s[0]}@{s[1]}:{s[2]}": (round(float(np.mean([p for p, _ in v])), 4), round(float(np.mean([r for _, r in v])), 4))
           for s, v in sorted(scores.items())}
    every = [x for v in scores.values() for x in v]
    out["all"] = (round(float(np.mean([p for p, _ in every])), 4), round(float(np.mean([r for _, r in every])), 4))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("runs/between"))
    ap.add_argument("--model", default="fomm-256-hybrid-v4", help="the shipped model whose restorer and motion make the data")
    ap.add_argument("--source", type=Path, default=Path("runs/cache/restorer-rc"), help="the restorer's cache")
    ap.add_argument("--cache", type=Path, default=Path("runs/cache/between"))
    ap.add_argument("--cache-only", action="store_true", help="build the cache and stop")
    ap.add_argument("--part", default="0/1", help="with --cache-only: build the clips k with k %% N == I (I/N)")
    ap.add_argument("--channels", type=int, default=48, help="the refiner's width (a new run; a resumed one keeps its own)")
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--unshuffle", type=int, default=4)
    small_net.add_options(ap, "refiner")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    run = small_net.open_run(a.out, BetweenRefiner, (a.channels, a.depth, a.unshuffle), a.lr)
    if a.export is not None:
        return small_net.export(run, a.export, a.into, "refiner")
    from kpcodec.models.registry import load_model

    model = load_model(a.model).eval()
    part = tuple(int(v) for v in a.part.split("/"))
    monitor_paths = build_cache(model, a.data, a.source, a.cache, "val", part)
    train_paths = build_cache(model, a.data, a.source, a.cache, "train", part)
    if a.cache_only:
        return
    del model
    train, monitor = load(train_paths), load(monitor_paths)

    def draw(rng):
        crops = []
        for _ in range(BATCH):
            i = rng.randrange(len(train["a"]))
            y, x = rng.randrange(0, 256 - CROP + 1, 8), rng.randrange(0, 256 - CROP + 1, 8)
            c = [train[key][i, y:y + CROP, x:x + CROP] for key in ("ma", "mb", "target")]
            if rng.random() < 0.5:
                c = [v[:, ::-1] for v in c]
            av = float(train["a"][i])
            if rng.random() < 0.5:  # played backwards: b comes first
                c, av = [c[1], c[0], c[2]], 1 - av
            crops.append((c, av))
        ma, mb, tt = (_tensor(np.stack([c[j] for c, _ in crops])) for j in range(3))
        return (ma, mb, torch.tensor([av for _, av in crops])), tt

    small_net.train(run, a, draw, lambda: evaluate(run.net, monitor), f"{len(train['a'])} train frames")


if __name__ == "__main__":
    main()

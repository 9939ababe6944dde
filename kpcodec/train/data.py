"""Training data: talking-head clips held in memory as uint8, sampled as frame pairs.

Clips are listed by ../shared/data/manifest.csv (split by person). Every `stride`-th frame
is kept (neighbouring frames are nearly identical). Face-mesh landmarks from
`kpcodec.train.landmark_cache`, when present, ride along for the motion supervision.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch


@dataclass
class Clip:
    name: str
    file: str
    frames: np.ndarray  # (T,H,W,3) uint8
    landmarks: np.ndarray | None  # (T,N,2) float32 in [-1,1], NaN where no face
    frame_index: np.ndarray  # (T,) index of each kept frame in the original clip


def manifest_rows(data_dir: Path, split: str) -> list[dict]:
    with open(data_dir / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split and r["file"].startswith("talking-heads/")]
    return sorted(rows, key=lambda r: r["file"])


def decode_clip(path: Path, stride: int = 1, max_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    frames, index = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if max_frames is not None and i >= max_frames:
                break
            if i % stride == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
                index.append(i)
    return np.stack(frames), np.asarray(index)


def load_landmarks(cache_dir: Path | None, clip_file: str, index: np.ndarray, size: int,
                   subset: np.ndarray | None) -> np.ndarray | None:
    if cache_dir is None:
        return None
    path = cache_dir / (Path(clip_file).stem + ".npz")
    if not path.is_file():
        return None
    with np.load(path) as z:
        lm = z["landmarks"].astype(np.float32)
    if len(lm) <= index[-1]:
        return None
    lm = lm[index]
    if subset is not None:
        lm = lm[:, subset]
    # Continuous pixel coordinates (pixel i spans [i, i+1)) -> [-1, 1] with the
    # align_corners=True convention of the models (-1 = centre of the first pixel).
    return (lm - 0.5) / (size - 1) * 2.0 - 1.0


def load_clips(data_dir: Path, split: str, stride: int, landmark_dir: Path | None = None,
               landmark_subset: np.ndarray | None = None, max_frames: int | None = None,
               limit: int | None = None, progress=None) -> list[Clip]:
    rows = manifest_rows(data_dir, split)[:limit]
    clips = []
    for row in rows:
        frames, index = decode_clip(data_dir / row["file"], stride, max_frames)
        lm = load_landmarks(landmark_dir, row["file"], index, frames.shape[1], landmark_subset)
        if lm is None and landmark_dir is not None:  # no cache for this clip: masked out of the loss
            lm = np.full((len(frames), 478 if landmark_subset is None else len(landmark_subset), 2), np.nan, np.float32)
        clips.append(Clip(Path(row["file"]).stem, row["file"], frames, lm, index))
        if progress is not None:
            progress()
    return clips


def refresh_landmarks(clips: list[Clip], landmark_dir: Path | None) -> int:
    """Pick up landmark caches written since the clips were loaded; returns how many were added."""
    added = 0
    for clip in clips:
        if landmark_dir is None or (clip.landmarks is not None and np.isfinite(clip.landmarks).any()):
            continue
        lm = load_landmarks(landmark_dir, clip.file, clip.frame_index, clip.frames.shape[1], None)
        if lm is not None:
            clip.landmarks = lm
            added += 1
    return added


class PairSampler:
    """Random (source, driving) frame pairs from one clip, with augmentation shared by both."""

    def __init__(self, clips: list[Clip], seed: int):
        self.clips = [c for c in clips if len(c.frames) >= 2]
        # Weight clips by length so every frame is about equally likely.
        lengths = np.array([len(c.frames) for c in self.clips], dtype=np.float64)
        self.p = lengths / lengths.sum()
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> dict:
        src, drv, lm_s, lm_d = [], [], [], []
        for _ in range(size):
            clip = self.clips[self.rng.choice(len(self.clips), p=self.p)]
            i, j = self.rng.choice(len(clip.frames), size=2, replace=False)
            a, b = clip.frames[i], clip.frames[j]
            la = clip.landmarks[i] if clip.landmarks is not None else None
            lb = clip.landmarks[j] if clip.landmarks is not None else None
            if self.rng.random() < 0.5:  # mirror both; landmark i stays landmark i
                a, b = a[:, ::-1], b[:, ::-1]
                if la is not None:
                    la, lb = la * [-1.0, 1.0], lb * [-1.0, 1.0]
            src.append(a)
            drv.append(b)
            lm_s.append(la)
            lm_d.append(lb)
        out = {"source": self._to_tensor(src), "driving": self._to_tensor(drv)}
        # Colour jitter, the same for source and driving of a pair.
        gain = torch.from_numpy(self.rng.uniform(0.85, 1.15, (size, 3, 1, 1))).float()
        out["source"] = (out["source"] * gain).clamp(0, 1)
        out["driving"] = (out["driving"] * gain).clamp(0, 1)
        if all(x is not None for x in lm_s):
            out["lm_source"] = torch.from_numpy(np.stack(lm_s).astype(np.float32))
            out["lm_driving"] = torch.from_numpy(np.stack(lm_d).astype(np.float32))
        return out

    @staticmethod
    def _to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(np.stack(frames)))
        return x.permute(0, 3, 1, 2).float() / 255.0

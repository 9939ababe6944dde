"""Training data: talking-head clips held in memory as uint8, sampled as frame pairs.

Clips are listed by ../shared/data/manifest.csv (split by person). Every `stride`-th frame
is kept (neighbouring frames are nearly identical). Face-mesh landmarks from
`kpcodec.train.landmark_cache`, when present, ride along for the motion supervision.
On an accelerator the sampler keeps every frame in device memory and builds batches there.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from kpcodec.codec.parallel import ordered_map


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


@lru_cache(maxsize=1)
def _clip_decoder():
    """PyAV, or OpenCV on a training machine that has no PyAV (a lent GPU box). Chosen once,
    before any decoding thread starts: concurrent first imports of a module can race."""
    try:
        import av  # noqa: F401
    except ImportError:
        return _decode_clip_opencv
    return _decode_clip_pyav


def decode_clip(path: Path, stride: int = 1, max_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    return _clip_decoder()(path, stride, max_frames)


def _decode_clip_pyav(path: Path, stride: int, max_frames: int | None) -> tuple[np.ndarray, np.ndarray]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return _keep_every(path, stride, max_frames, container.decode(stream), lambda f: f.to_ndarray(format="rgb24"))


def _decode_clip_opencv(path: Path, stride: int, max_frames: int | None) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    def frames():
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield bgr

    cap = cv2.VideoCapture(str(path))
    try:
        return _keep_every(path, stride, max_frames, frames(), lambda bgr: np.ascontiguousarray(bgr[:, :, ::-1]))
    finally:
        cap.release()


def _keep_every(path: Path, stride: int, max_frames: int | None, frames, to_rgb) -> tuple[np.ndarray, np.ndarray]:
    """Every `stride`-th of the first `max_frames` decoded frames as RGB (only those converted),
    and their indices."""
    kept, index = [], []
    for i, frame in enumerate(islice(frames, max_frames)):
        if i % stride == 0:
            kept.append(to_rgb(frame))
            index.append(i)
    if not kept:
        raise OSError(f"{path}: no frames decoded")
    return np.stack(kept), np.asarray(index)


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
    # Decoders release the GIL: a few threads load the clips several times faster.
    _clip_decoder()
    decoded = ordered_map(lambda row: decode_clip(data_dir / row["file"], stride, max_frames), rows, workers=4)
    for row, (frames, index) in zip(rows, decoded):
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
    """Random (source, driving) frame pairs from one clip, with augmentation shared by both.

    Given a `device` (an accelerator), every frame and landmark is copied there once and
    batches are gathered on it; the draws, and so the batches, are the same as without.
    """

    def __init__(self, clips: list[Clip], seed: int, device: torch.device | str | None = None):
        self.clips = [c for c in clips if len(c.frames) >= 2]
        # Weight clips by length so every frame is about equally likely.
        lengths = np.array([len(c.frames) for c in self.clips], dtype=np.float64)
        self.p = lengths / lengths.sum()
        self.rng = np.random.default_rng(seed)
        self.device = torch.device(device) if device is not None else None
        self._frames = self._landmarks = None
        if self.device is not None:
            self.offsets = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
            # (N,3,H,W) uint8: 20k frames at 256x256 are 4 GB, a small part of an accelerator.
            self._frames = torch.cat([torch.from_numpy(c.frames).to(self.device) for c in self.clips])
            self._frames = self._frames.permute(0, 3, 1, 2).contiguous()
            self.refresh_landmarks()

    def refresh_landmarks(self) -> None:
        """Copy the clips' landmarks to the device again (after `refresh_landmarks(clips)`)."""
        if self.device is None or any(c.landmarks is None for c in self.clips):
            self._landmarks = None
            return
        self._landmarks = torch.cat([torch.from_numpy(np.asarray(c.landmarks, np.float32)) for c in self.clips])
        self._landmarks = self._landmarks.to(self.device)

    def _draw(self, size: int) -> tuple[list[tuple[int, int, int, bool]], np.ndarray]:
        picks = []
        for _ in range(size):
            c = self.rng.choice(len(self.clips), p=self.p)
            i, j = self.rng.choice(len(self.clips[c].frames), size=2, replace=False)
            picks.append((int(c), int(i), int(j), bool(self.rng.random() < 0.5)))  # flip: mirror both
        # Colour jitter, the same for source and driving of a pair.
        gain = self.rng.uniform(0.85, 1.15, (size, 3, 1, 1))
        return picks, gain

    def batch(self, size: int) -> dict:
        picks, gain = self._draw(size)
        if self._frames is not None:
            return self._device_batch(picks, gain)
        src, drv, lm_s, lm_d = [], [], [], []
        for c, i, j, flip in picks:
            clip = self.clips[c]
            a, b = clip.frames[i], clip.frames[j]
            la = clip.landmarks[i] if clip.landmarks is not None else None
            lb = clip.landmarks[j] if clip.landmarks is not None else None
            if flip:  # landmark i stays landmark i
                a, b = a[:, ::-1], b[:, ::-1]
                if la is not None:
                    la, lb = la * [-1.0, 1.0], lb * [-1.0, 1.0]
            src.append(a)
            drv.append(b)
            lm_s.append(la)
            lm_d.append(lb)
        g = torch.from_numpy(gain).float()
        out = {"source": (self._to_tensor(src) * g).clamp(0, 1), "driving": (self._to_tensor(drv) * g).clamp(0, 1)}
        if all(x is not None for x in lm_s):
            out["lm_source"] = torch.from_numpy(np.stack(lm_s).astype(np.float32))
            out["lm_driving"] = torch.from_numpy(np.stack(lm_d).astype(np.float32))
        return out

    def _device_batch(self, picks: list, gain: np.ndarray) -> dict:
        dev = self.device
        rows_s = torch.tensor([self.offsets[c] + i for c, i, _, _ in picks], device=dev)
        rows_d = torch.tensor([self.offsets[c] + j for c, _, j, _ in picks], device=dev)
        flip = torch.tensor([f for *_, f in picks], device=dev)
        g = torch.from_numpy(gain).float().to(dev)

        def frames(rows):
            x = self._frames[rows].float() / 255.0
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            return (x * g).clamp(0, 1)

        out = {"source": frames(rows_s), "driving": frames(rows_d)}
        if self._landmarks is not None:
            mirror = torch.where(flip, -1.0, 1.0)[:, None]
            for key, rows in (("lm_source", rows_s), ("lm_driving", rows_d)):
                lm = self._landmarks[rows].clone()
                lm[..., 0] *= mirror
                out[key] = lm
        return out

    @staticmethod
    def _to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(np.stack(frames)))
        return x.permute(0, 3, 1, 2).float() / 255.0

"""The decoder's two uses of a motion model, written once: detect keypoints, render frames.

Everything that detects (encode, the refresh pass, training evaluation) goes through
:class:`Detector`; everything that renders (decode, the refresh pass's check renders, training
evaluation) through :class:`Renderer`, whose source state (the keypoints and encoder features of a
source image) is prepared once per source image and reused for every frame rendered from it, as in
Gemino's `update_source` / `predict`. Frames in and out are uint8 (H, W, 3) numpy arrays; keypoints
(K, 2) and Jacobians (K, 2, 2) float32, in batches (B, ...). Torch is imported on first use only.
"""
from __future__ import annotations

import numpy as np


def _torch():
    import torch

    return torch


def _floats(x):
    torch = _torch()
    return x.float() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, np.float32))


class Detector:
    """FOMM keypoints and Jacobians of frames."""

    def __init__(self, net):
        self.net = net

    def __call__(self, frames) -> tuple[np.ndarray, np.ndarray]:
        """(B, K, 2) keypoints and (B, K, 2, 2) Jacobians, float32, of a list or (B, H, W, 3) array of frames."""
        from kpcodec.models.frames import frames_to_tensor

        with _torch().inference_mode():
            kp, jac = self.net.detect(frames_to_tensor(list(frames)))
        return kp.numpy().astype(np.float32), jac.numpy().astype(np.float32)


class Renderer:
    """Frames rendered by dense motion and the generator from a prepared source image."""

    def __init__(self, net):
        self.net = net

    def prepare(self, image: np.ndarray):
        """The source state of one source image (computed once, shared by every frame from it)."""
        from kpcodec.models.frames import frames_to_tensor

        with _torch().inference_mode():
            return self.net.prepare_source(frames_to_tensor([image]))

    def upsample_base(self, small: np.ndarray, restore: bool = False, before: np.ndarray | None = None,
                      after: np.ndarray | None = None):
        """A decoded base frame (h, w, 3) uint8 as the model takes it: (1, 3, H, W), upsampled to
        the model size (a render given it does not upsample it again); `restore`: a stream of the
        base layer alone's, through the model's restorer if it has one (MotionModel.base_image),
        which may see the base frames `before` and `after` it (None: it has none there)."""
        from kpcodec.models.frames import frames_to_tensor

        def tensor(frame):
            return frames_to_tensor([small if frame is None else frame])

        with _torch().inference_mode():
            return self.net.base_image(tensor(small), restore, tensor(before), tensor(after))

    def detect_base(self, up):
        """Keypoints and Jacobians (1,K,2), (1,K,2,2) of an upsampled base frame (upsample_base)."""
        with _torch().inference_mode():
            return self.net.detect(up)

    def between(self, a_frames, b_frames, a, outer=None, knots=None, offsets=None) -> list[np.ndarray]:
        """Frames between base frames (a stream of the base layer alone): `a_frames`/`b_frames` are
        (upsampled tensor, keypoints, Jacobians) of the base frames before and after each frame, `a`
        (B,) how far it is from the first (MotionModel.between); `outer` (the cubic path) the
        (keypoints, Jacobians, keypoints, Jacobians) of the base frames before and after those two;
        `knots` (placed base frames) the video frames of those four, (B, 4); `offsets` (format 2.6) the
        keypoints' offsets from that path, (B, K, 2)."""
        from kpcodec.models.frames import tensor_to_frames

        torch = _torch()
        with torch.inference_mode():
            ua, ka, ja = (torch.cat(x) for x in zip(*a_frames))
            ub, kb, jb = (torch.cat(x) for x in zip(*b_frames))
            around = None if outer is None else tuple(torch.cat(x) for x in zip(*outer))
            knots = None if knots is None else _floats(knots)
            offsets = None if offsets is None else _floats(np.stack(offsets))
            return list(tensor_to_frames(self.net.between(ua, ka, ja, ub, kb, jb, _floats(a), around, knots, offsets)))

    def render(self, state, kp, jac, base=(None, None, None), mix=None) -> list[np.ndarray]:
        """Frames for a batch of keypoints (B, K, 2) and Jacobians (B, K, 2, 2), numpy or tensors.

        `base` (hybrid models): (base frames as a (B, 3, h, w) tensor, the keypoints and Jacobians
        of the frames they show), or Nones for keypoints alone; `mix` (B,) the weights of the
        rendering against the moved base (MotionModel.render), None: the rendering alone."""
        from kpcodec.models.frames import tensor_to_frames

        with _torch().inference_mode():
            mix = None if mix is None else _floats(mix)
            return list(tensor_to_frames(self.net.render(state, _floats(kp), _floats(jac), *base, mix=mix)))

    def render_parts(self, state, kp, jac, base=(None, None, None)) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(rendering, moved base or None) frame pairs: what `render` mixes."""
        from kpcodec.models.frames import tensor_to_frames

        with _torch().inference_mode():
            image, moved = self.net.render_parts(state, _floats(kp), _floats(jac), *base)
            moved = [None] * len(image) if moved is None else list(tensor_to_frames(moved))
            return list(zip(tensor_to_frames(image), moved))

    def render_all(self, state, kps, jacs, batch: int = 8) -> np.ndarray:
        """(T, H, W, 3) frames for T keypoints, `batch` at a time."""
        frames = []
        for i in range(0, len(kps), batch):
            frames += self.render(state, kps[i:i + batch], jacs[i:i + batch])
        return np.stack(frames)

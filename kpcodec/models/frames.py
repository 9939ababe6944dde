"""Conversions between video frames (uint8 RGB, HxWx3) and model tensors (float, Bx3xHxW in [0,1])."""
from __future__ import annotations

import numpy as np
import torch


def frames_to_tensor(frames) -> torch.Tensor:
    """A (B,H,W,3) uint8 array or a list of (H,W,3) frames -> (B,3,H,W) float32 in [0,1]."""
    x = torch.from_numpy(np.ascontiguousarray(np.stack(frames) if isinstance(frames, list) else frames))
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_frames(images: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) in [0,1] -> (B,H,W,3) uint8, rounded."""
    return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()

"""A learned upsampler for the base layer's frames (streams of the base layer alone).

The decoder bicubic-upsamples a decoded base frame smaller than the model size; a restorer then
adds a residual that a small CNN predicts from the upsampled frame, at half resolution (pixel
unshuffle by 2: 12 channels at 128x128 for a 256 model), so its convolutions see a 2x wider
context for the same cost. Its last convolution starts at zero: an untrained restorer is the
bicubic upsample. It learns the AV1 base layer's artefacts and the detail the downscale lost
(kpcodec.train.restorer, on train frames coded through the real base layer). A frame coded at
the model size is not upsampled and goes through unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bicubic(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Frames (B,3,s,s) in [0,1] bicubic-upsampled to size x size (clamped to [0,1]); as they are at that size."""
    if frames.shape[-1] == size:
        return frames
    return F.interpolate(frames, size=(size, size), mode="bicubic", align_corners=False).clamp_(0, 1)


class BaseRestorer(nn.Module):
    def __init__(self, channels: int = 32, depth: int = 6, unshuffle: int = 2):
        super().__init__()
        self.unshuffle = unshuffle
        width = 3 * unshuffle * unshuffle
        layers: list[nn.Module] = [nn.Conv2d(width, channels, 3, padding=1), nn.LeakyReLU(0.1)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.1)]
        self.body = nn.Sequential(*layers)
        self.last = nn.Conv2d(channels, width, 3, padding=1)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, up: torch.Tensor) -> torch.Tensor:
        """Upsampled base frames (B,3,H,W) in [0,1] -> restored, the same shape, in [0,1]."""
        x = F.pixel_unshuffle(up * 2 - 1, self.unshuffle)
        return (up + F.pixel_shuffle(self.last(self.body(x)), self.unshuffle)).clamp(0, 1)

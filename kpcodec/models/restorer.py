"""A learned upsampler for the base layer's frames (streams of the base layer alone).

The decoder bicubic-upsamples a decoded base frame smaller than the model size; a restorer then
adds a residual that a small CNN predicts from the upsampled frame, at half resolution (pixel
unshuffle by 2: 12 channels at 128x128 for a 256 model), so its convolutions see a 2x wider
context for the same cost. Its last convolution starts at zero: an untrained restorer is the
bicubic upsample. It learns the AV1 base layer's artefacts and the detail the downscale lost
(kpcodec.train.restorer, on train frames coded through the real base layer). A frame coded at
the model size is not upsampled and goes through unchanged.

With `frames` = 3 it sees the base frames before and after too (each upsampled and unshuffled
alike, the three stacked): where the picture stands still, their own coding noise averages out, and
detail one of them kept can come back. The first convolution's weights on the neighbours start at
zero (`widen`), so a 3-frame restorer made from a 1-frame one starts as it is.
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
    def __init__(self, channels: int = 32, depth: int = 6, unshuffle: int = 2, frames: int = 1):
        super().__init__()
        if frames not in (1, 3):
            raise ValueError(f"a restorer sees 1 or 3 base frames (got {frames})")
        self.unshuffle, self.frames = unshuffle, frames
        width = 3 * unshuffle * unshuffle
        layers: list[nn.Module] = [nn.Conv2d(width * frames, channels, 3, padding=1), nn.LeakyReLU(0.1)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.1)]
        self.body = nn.Sequential(*layers)
        self.last = nn.Conv2d(channels, width, 3, padding=1)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, up: torch.Tensor, before: torch.Tensor | None = None, after: torch.Tensor | None = None) -> torch.Tensor:
        """Upsampled base frames (B,3,H,W) in [0,1] -> restored, the same shape, in [0,1]. A 3-frame
        restorer also takes the upsampled base frames `before` and `after` each (a missing one: the
        frame itself, as at the ends of a stream); a 1-frame one ignores them."""
        def unshuffled(frames):
            return F.pixel_unshuffle(frames * 2 - 1, self.unshuffle)

        x = unshuffled(up)
        if self.frames == 3:
            x = torch.cat([unshuffled(up if before is None else before), x,
                           unshuffled(up if after is None else after)], dim=1)
        return (up + F.pixel_shuffle(self.last(self.body(x)), self.unshuffle)).clamp(0, 1)

    @torch.no_grad()
    def widen(self, state: dict) -> None:
        """Load a 1-frame restorer's weights into this 3-frame one: the neighbours' weights zero."""
        state = dict(state)
        first = state["body.0.weight"]
        if self.frames == 3 and first.shape[1] * 3 == self.body[0].weight.shape[1]:
            state["body.0.weight"] = torch.cat([torch.zeros_like(first), first, torch.zeros_like(first)], dim=1)
        self.load_state_dict(state)

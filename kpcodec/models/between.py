"""A learned blend of the two moved base frames between base frames (streams of the base layer alone).

Between two base frames the decoder moves each (restored) base frame to the frame's interpolated
keypoints and blends the two by how far the frame is from the first, `a` (MotionModel.between). The
refiner looks at both moved frames and at `a`, and predicts per pixel a correction of the blend
weight (which of the two to trust where one was occluded or moved wrong) and a residual (what the
ghosting of a plain blend smeared). Like the restorer (kpcodec.models.restorer) it works on pixel-
unshuffled frames (by `unshuffle`: 4 in config fomm-256-hybrid-between, a quarter of the resolution,
so that its convolutions see far for little cost), and its last convolution starts at zero: an untrained refiner is
the plain blend, weight `a`, no residual.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EDGE = 1e-3  # `a` kept inside (0, 1) for its logit


class BetweenRefiner(nn.Module):
    def __init__(self, channels: int = 32, depth: int = 6, unshuffle: int = 2):
        super().__init__()
        self.unshuffle = unshuffle
        u2 = unshuffle * unshuffle
        layers: list[nn.Module] = [nn.Conv2d(6 * u2 + 1, channels, 3, padding=1), nn.LeakyReLU(0.1)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.1)]
        self.body = nn.Sequential(*layers)
        self.last = nn.Conv2d(channels, 4 * u2, 3, padding=1)  # 3 residual channels + 1 weight logit, unshuffled
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, moved_a: torch.Tensor, moved_b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The two base frames moved to a frame (B,3,H,W) in [0,1] and its fraction `a` (B,) of the way
        from the first to the second -> the frame, (B,3,H,W) in [0,1]."""
        a = a.to(moved_a.dtype).clamp(EDGE, 1 - EDGE).view(-1, 1, 1, 1)
        u = self.unshuffle
        xa, xb = (F.pixel_unshuffle(m * 2 - 1, u) for m in (moved_a, moved_b))
        x = torch.cat([xa, xb, a.expand(-1, 1, *xa.shape[-2:])], dim=1)
        out = F.pixel_shuffle(self.last(self.body(x)), u)
        weight = torch.sigmoid(torch.logit(a) + out[:, 3:])
        return (torch.lerp(moved_a, moved_b, weight) + out[:, :3]).clamp(0, 1)

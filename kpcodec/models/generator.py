"""FOMM occlusion-aware generator: encode the source, warp its features by the dense flow,
multiply by the occlusion map, then residual bottleneck and decoder back to an image.

`encode` is split from `decode` so a decoder computes the source features once per source.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DownBlock, ResBlock, SameBlock, UpBlock, warp


class Generator(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        e, mx, n = cfg.gen_expansion, cfg.gen_max_features, cfg.gen_num_down

        def width(i: int) -> int:
            return min(mx, e * 2 ** i)

        self.first = SameBlock(3, e, kernel=7)
        self.down = nn.ModuleList(DownBlock(width(i), width(i + 1)) for i in range(n))
        self.bottleneck = nn.Sequential(*(ResBlock(width(n)) for _ in range(cfg.gen_num_bottleneck)))
        self.up = nn.ModuleList(UpBlock(width(n - i), width(n - i - 1)) for i in range(n))
        self.warp_blend = cfg.warp_blend
        self.final = nn.Conv2d(e, 4 if self.warp_blend else 3, 7, padding=3)
        if self.warp_blend:
            # Start by trusting the warped source (sigmoid(2) = 0.88): sharp from step one.
            with torch.no_grad():
                self.final.bias[3] = 2.0

    def encode(self, source: torch.Tensor) -> torch.Tensor:
        out = self.first(source)
        for block in self.down:
            out = block(out)
        return out

    def decode(self, features: torch.Tensor, flow: torch.Tensor, occlusion: torch.Tensor,
               source: torch.Tensor | None = None) -> torch.Tensor:
        b = flow.shape[0]
        full_flow = flow
        if features.shape[0] != b:
            features = features.expand(b, -1, -1, -1)
        h, w = features.shape[-2:]
        if flow.shape[1:3] != (h, w):
            flow = F.interpolate(flow.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=True)
            flow = flow.permute(0, 2, 3, 1)
            occlusion = F.interpolate(occlusion, size=(h, w), mode="bilinear", align_corners=True)
        out = warp(features, flow.to(features.dtype)) * occlusion.to(features.dtype)
        out = self.bottleneck(out)
        for block in self.up:
            out = block(out)
        out = self.final(out).float()
        image = torch.sigmoid(out[:, :3])
        if not self.warp_blend:
            return image
        size = source.shape[-2:]
        full_flow = F.interpolate(full_flow.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=True)
        if source.shape[0] != b:
            source = source.expand(b, -1, -1, -1)
        warped = warp(source.float(), full_flow.permute(0, 2, 3, 1))
        mask = torch.sigmoid(out[:, 3:4])
        return torch.lerp(image, warped, mask)  # mask * warped + (1 - mask) * image, in one pass

"""Building blocks shared by the FOMM networks: conv blocks, the hourglass, coordinate grids.

Convolutions use BatchNorm (as published) so that inference can fold it into the conv.
Coordinates everywhere are in [-1, 1] with grid_sample's align_corners=True convention:
-1 is the centre of the first pixel, +1 the centre of the last; (x, y) order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_coordinate_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """An (H, W, 2) grid of (x, y) coordinates in [-1, 1]."""
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


def warp(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample `image` (B,C,H,W) at `grid` (B,h,w,2) coordinates."""
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def resize(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize, always in fp32 (bf16 antialias is not supported on CPU)."""
    if isinstance(size, int):
        size = (size, size)
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False, antialias=True).to(image.dtype)


def inverse_2x2(m: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Closed-form inverse of (..., 2, 2) matrices; the determinant is kept away from 0."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    det = torch.where(det.abs() < eps, torch.full_like(det, eps) * torch.sign(det + 1e-12), det)
    inv = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
    return inv / det[..., None, None]


class SameBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
        self.norm = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


class DownBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.block = SameBlock(in_ch, out_ch)

    def forward(self, x):
        return F.avg_pool2d(self.block(x), 2)


class UpBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.block = SameBlock(in_ch, out_ch)

    def forward(self, x):
        return self.block(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResBlock(nn.Module):
    """Pre-activation residual block."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(ch)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return x + out


class Hourglass(nn.Module):
    """U-Net style encoder/decoder; output has `expansion + in_ch` channels at input resolution."""

    def __init__(self, in_ch: int, expansion: int, max_features: int, num_blocks: int):
        super().__init__()

        def width(i: int) -> int:
            return min(max_features, expansion * 2 ** i)

        self.down = nn.ModuleList(
            DownBlock(in_ch if i == 0 else width(i), width(i + 1)) for i in range(num_blocks)
        )
        ups = []
        for i in reversed(range(num_blocks)):
            up_in = (1 if i == num_blocks - 1 else 2) * width(i + 1)
            ups.append(UpBlock(up_in, width(i)))
        self.up = nn.ModuleList(ups)
        self.out_channels = expansion + in_ch

    def forward(self, x):
        skips = [x]
        for block in self.down:
            skips.append(block(skips[-1]))
        out = skips.pop()
        for block in self.up:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return out

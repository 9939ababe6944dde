"""An adversarial and feature-matching term against the generator's blur (FOMM's recipe, sized
for a CPU).

FOMM trains its generator with a multi-scale patch discriminator (LSGAN) and a feature-matching
loss: L1 between the discriminator's intermediate features of the real and the generated frame.
Pixel losses (L1, SSIM) reward the mean of the plausible frames, which is blurred; the
discriminator penalises what no real frame looks like. Here: one scale per entry of `scales`,
four 4x4 conv blocks each (spectral norm, instance norm after the first, LeakyReLU 0.2, average
pool), narrower than FOMM's (16-128 channels against 64-512) so a step stays within ~2x the plain
one on one CPU thread. No keypoint heatmaps as input (FOMM's VoxCeleb config has none either).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kpcodec.models.blocks import resize


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, norm: bool, pool: bool):
        super().__init__()
        self.conv = nn.utils.spectral_norm(nn.Conv2d(c_in, c_out, 4))
        self.norm = nn.InstanceNorm2d(c_out, affine=True) if norm else None
        self.pool = pool

    def forward(self, x):
        out = self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        return F.avg_pool2d(out, 2) if self.pool else out


class PatchDiscriminator(nn.Module):
    """One scale: returns (feature maps of each block, the patch prediction map)."""

    def __init__(self, expansion: int = 16, max_features: int = 128, blocks: int = 4):
        super().__init__()
        widths = [3] + [min(max_features, expansion * 2 ** i) for i in range(blocks)]
        self.blocks = nn.ModuleList(_Block(widths[i], widths[i + 1], norm=i > 0, pool=i < blocks - 1)
                                    for i in range(blocks))
        self.out = nn.utils.spectral_norm(nn.Conv2d(widths[-1], 1, 1))

    def forward(self, x):
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats, self.out(x)


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, scales=(1.0,), **kwargs):
        super().__init__()
        self.scales = tuple(scales)
        self.nets = nn.ModuleList(PatchDiscriminator(**kwargs) for _ in self.scales)

    def forward(self, x):
        size = x.shape[-1]
        return [net(resize(x, max(64, round(size * s)))) for s, net in zip(self.scales, self.nets)]


def generator_terms(disc: MultiScaleDiscriminator, fake: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(LSGAN generator loss, feature matching) for generated frames `fake` against `real`."""
    with torch.no_grad():
        real_out = disc(real)
    fake_out = disc(fake)
    gan = sum(((1 - pred) ** 2).mean() for _, pred in fake_out) / len(fake_out)
    fm = 0.0
    for (ff, _), (rf, _) in zip(fake_out, real_out):
        fm = fm + sum((a - b).abs().mean() for a, b in zip(ff, rf)) / len(ff)
    return gan, fm / len(fake_out)


def discriminator_loss(disc: MultiScaleDiscriminator, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """LSGAN: real patches to 1, generated ones to 0."""
    real_out, fake_out = disc(real), disc(fake.detach())
    return sum(((1 - r) ** 2).mean() + (f ** 2).mean() for (_, r), (_, f) in zip(real_out, fake_out)) / len(real_out)


def detail_ratio(pred, target) -> float:
    """Blur measure: the Laplacian energy of `pred` over that of `target` (numpy (H,W,3) uint8 or
    float frames): 1 as detailed as the target, below 1 blurred, above 1 noisier."""
    import numpy as np

    def energy(img):
        g = np.asarray(img, dtype=np.float32).mean(axis=-1)
        lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
        return float((lap ** 2).mean())

    t = energy(target)
    return energy(pred) / t if t > 0 else float("nan")

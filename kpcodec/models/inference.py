"""Make a trained motion model cheaper to run: the codec's encode and decode use this, training never.

- BatchNorm that directly follows a convolution is folded into the convolution's weights
  (SameBlock's conv->norm; in the pre-activation ResBlock, conv1->norm2). What remains is one
  per-channel affine in front of each ResBlock.
- An up block (nearest 2x upsampling, then a 3x3 convolution) becomes one stride-2 transposed
  convolution with a 4x4 kernel: the same output, computed at the low resolution with 16
  instead of 36 multiply-adds per input pixel and no upsampled copy of the input.
- channels_last memory format: oneDNN's convolutions run without layout reorders. Tensors
  made by warping or concatenation arrive in the default layout; they are converted once at
  the entry of the stacks that consume them, not by every convolution.

Outputs match the unfolded model to float rounding (tests/test_inference.py).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from kpcodec.models.blocks import ResBlock, SameBlock, UpBlock

# Nearest 2x upsampling then a 3x3 kernel tap t (0..2, offsets -1..1) = a stride-2 transposed
# convolution with a 4x4 kernel whose tap k (0..3) sums the 3x3 taps marked in row k: an output
# pixel 2m reads inputs m-1 (tap 0) and m (taps 1, 2); an output pixel 2m+1 reads m (taps 0, 1)
# and m+1 (tap 2). The input rows outside the image are zero, as the upsampled ones were.
_UP_TAPS = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float32)


class _ConvOnly(nn.Module):
    """A SameBlock after folding: conv (with the norm in it) + ReLU."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return torch.relu_(self.conv(x))


class _TransposedUp(nn.Module):
    """An UpBlock after folding: ReLU of one stride-2 transposed convolution (see _UP_TAPS)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        out_ch, in_ch = conv.weight.shape[:2]
        self.deconv = nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1)
        taps = _UP_TAPS.to(conv.weight.dtype)
        with torch.no_grad():
            self.deconv.weight.copy_(torch.einsum("ya,xb,oiab->ioyx", taps, taps, conv.weight))
            self.deconv.bias.copy_(conv.bias)

    def forward(self, x):
        return torch.relu_(self.deconv(x))


class _ChannelsLastInput(nn.Module):
    """Converts its input to channels_last once, for a stack of convolutions behind it."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.contiguous(memory_format=torch.channels_last))


class _FoldedResBlock(nn.Module):
    """A ResBlock whose second norm lives in conv1."""

    def __init__(self, block: ResBlock):
        super().__init__()
        self.norm1 = block.norm1
        self.conv1 = fuse_conv_bn_eval(block.conv1, block.norm2)
        self.conv2 = block.conv2

    def forward(self, x):
        out = self.conv1(torch.relu_(self.norm1(x)))
        return x + self.conv2(torch.relu_(out))


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Replace, in place, every SameBlock, UpBlock and ResBlock under `module` by its folded form."""
    for name, child in module.named_children():
        if isinstance(child, UpBlock):
            setattr(module, name, _TransposedUp(fuse_conv_bn_eval(child.block.conv, child.block.norm)))
        elif isinstance(child, SameBlock):
            setattr(module, name, _ConvOnly(fuse_conv_bn_eval(child.conv, child.norm)))
        elif isinstance(child, ResBlock):
            setattr(module, name, _FoldedResBlock(child))
        else:
            fold_batchnorm(child)
    return module


def prepare_for_inference(net: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode model with folded norms (and channels_last weights); `net` itself is changed."""
    net.eval()
    fold_batchnorm(net)
    if channels_last:
        net.to(memory_format=torch.channels_last)
        # The warped, occlusion-masked features (generator) and the heatmaps + deformed sources
        # (dense motion) are built in the default layout.
        if hasattr(net, "generator"):
            net.generator.bottleneck = _ChannelsLastInput(net.generator.bottleneck)
        if hasattr(net, "dense_motion"):
            net.dense_motion.hourglass = _ChannelsLastInput(net.dense_motion.hourglass)
    for p in net.parameters():
        p.requires_grad_(False)
    net.inference_ready = True
    return net

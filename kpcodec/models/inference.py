"""Make a trained motion model cheaper to run: the codec's encode and decode use this, training never.

- BatchNorm that directly follows a convolution is folded into the convolution's weights
  (SameBlock's conv->norm; in the pre-activation ResBlock, conv1->norm2). What remains is one
  per-channel affine in front of each ResBlock.
- channels_last memory format: oneDNN's convolutions run without layout reorders.

Outputs match the unfolded model to float rounding (tests/test_inference.py).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .blocks import ResBlock, SameBlock


class _ConvOnly(nn.Module):
    """A SameBlock after folding: conv (with the norm in it) + ReLU."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return torch.relu(self.conv(x))


class _FoldedResBlock(nn.Module):
    """A ResBlock whose second norm lives in conv1."""

    def __init__(self, block: ResBlock):
        super().__init__()
        self.norm1 = block.norm1
        self.conv1 = fuse_conv_bn_eval(block.conv1, block.norm2)
        self.conv2 = block.conv2

    def forward(self, x):
        out = self.conv1(torch.relu(self.norm1(x)))
        return x + self.conv2(torch.relu(out))


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Replace, in place, every SameBlock and ResBlock under `module` by its folded form."""
    for name, child in module.named_children():
        if isinstance(child, SameBlock):
            setattr(module, name, _ConvOnly(fuse_conv_bn_eval(child.conv, child.norm)))
        elif isinstance(child, ResBlock):
            setattr(module, name, _FoldedResBlock(child))
        else:
            fold_batchnorm(child)
    return module


def prepare_for_inference(net: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode model with folded norms (and channels_last weights); `net` itself is changed."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    fold_batchnorm(net)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    net.inference_ready = True
    return net

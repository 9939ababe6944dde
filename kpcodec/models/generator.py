"""FOMM occlusion-aware generator: encode the source, warp its features by the dense flow,
multiply by the occlusion map, then residual bottleneck and decoder back to an image.

`encode` is split from `decode` so a decoder computes the source features once per source.

A hybrid config (`base_fusion`) also takes a base-layer frame: the decoded low-resolution AV1
frame, upsampled to the output size and moved to the frame's keypoints (MotionModel.base_image).
A small conv stack adds it to the warped features at the bottleneck, and the output conv sees
it beside the decoder's features. Without a base frame (a keypoint-only file, a lost base packet)
the base input is zeros.

Two later options: `base_skips` also adds the base frame at the decoder's upper scales, where the
bottleneck (a quarter of the output size) cannot see a 96-128 px base frame's finer detail: at half
size after the first up block (the second turns it into features with the warped source's), and at
full size before the output conv. `flow_refine` lets the base frame correct the keypoints' flow: a
small network at the flow's size sees the base frame, the source warped by the flow and the flow's
displacement, and adds a correction before anything is warped (not where the base is zeros). Ten
keypoints move a face only roughly; the misaligned detail they leave is what a generator learns to
blur, and the base frame shows where things really are.

Every base path starts at zero (the last conv of each stack, the output conv's weights on the base
channels), so a hybrid grown from a trained generator starts as that generator.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kpcodec.models.blocks import DownBlock, ResBlock, SameBlock, UpBlock, make_coordinate_grid, resize, warp


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
        self.base_fusion = cfg.base_fusion
        extra = 3 if self.base_fusion else 0
        self.final = nn.Conv2d(e + extra, 4 if self.warp_blend else 3, 7, padding=3)
        if self.base_fusion:
            c = cfg.base_channels
            self.base_in = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1),
                                         nn.ReLU(), nn.Conv2d(c, width(n), 3, padding=1))
            with torch.no_grad():
                self.base_in[-1].weight.zero_()
                self.base_in[-1].bias.zero_()
                self.final.weight[:, e:] = 0
        self.base_skips = nn.ModuleList()
        if self.base_fusion and cfg.base_skips:
            # After each up block but the last that feeds the output conv: (channels, hidden).
            for i in range(n):
                out_ch = width(n - i - 1)
                hidden = 8 if i == n - 1 else max(8, cfg.base_channels // 2)  # full size: slim (decode time)
                stack = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(hidden, out_ch, 3, padding=1))
                with torch.no_grad():
                    stack[-1].weight.zero_()
                    stack[-1].bias.zero_()
                self.base_skips.append(stack)
        self.flow_refine = None
        if self.base_fusion and cfg.flow_refine:
            c = cfg.base_channels
            self.flow_refine = nn.Sequential(nn.Conv2d(8, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1),
                                             nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                                             nn.Conv2d(c, 2, 3, padding=1))
            with torch.no_grad():
                self.flow_refine[-1].weight.zero_()
                self.flow_refine[-1].bias.zero_()
        if self.warp_blend:
            # Start by trusting the warped source (sigmoid(2) = 0.88): sharp from step one.
            with torch.no_grad():
                self.final.bias[3] = 2.0

    def encode(self, source: torch.Tensor) -> torch.Tensor:
        out = self.first(source)
        for block in self.down:
            out = block(out)
        return out

    def refine(self, flow: torch.Tensor, source: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """The flow (B,h,w,2) corrected by the base frames (B,3,H,W); items whose base is all zeros
        (none: a lost base packet, training's dropout) keep their flow."""
        size = flow.shape[1:3]
        small_base = resize(base, size).float()
        small_source = resize(source[:1] if source.shape[0] != flow.shape[0] else source, size).float()
        if small_source.shape[0] != flow.shape[0]:
            small_source = small_source.expand(flow.shape[0], -1, -1, -1)
        warped = warp(small_source, flow.float())
        # The flow as a displacement (a convolution does not know where it is in the frame).
        moved = flow.float() - make_coordinate_grid(*size, device=flow.device)
        x = torch.cat([small_base, warped, moved.permute(0, 3, 1, 2)], 1)
        delta = self.flow_refine(x.to(next(self.flow_refine.parameters()).dtype)).float().permute(0, 2, 3, 1)
        present = (base.flatten(1).amax(1) > 0).to(delta.dtype).view(-1, 1, 1, 1)
        return (flow.float() + delta * present).to(flow.dtype)

    def decode(self, features: torch.Tensor, flow: torch.Tensor, occlusion: torch.Tensor,
               source: torch.Tensor | None = None, base: torch.Tensor | None = None) -> torch.Tensor:
        """`base` (B,3,H,W) in [0,1] at the output size, hybrid configs only (None: no base frame)."""
        b = flow.shape[0]
        if self.flow_refine is not None and base is not None:
            flow = self.refine(flow, source, base)
        full_flow = flow
        if features.shape[0] != b:
            features = features.expand(b, -1, -1, -1)
        h, w = features.shape[-2:]
        if flow.shape[1:3] != (h, w):
            flow = F.interpolate(flow.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=True)
            flow = flow.permute(0, 2, 3, 1)
            occlusion = F.interpolate(occlusion, size=(h, w), mode="bilinear", align_corners=True)
        out = warp(features, flow.to(features.dtype)) * occlusion.to(features.dtype)
        if self.base_fusion:
            # No base frame: zeros, as in training's base dropout; the stack's answer to zeros is
            # the same for every item, so it runs once.
            small = resize(base, (h, w)) if base is not None else out.new_zeros(1, 3, h, w)
            out = out + self.base_in(small.to(out.dtype))
        out = self.bottleneck(out)
        for i, block in enumerate(self.up):
            out = block(out)
            if self.base_skips and base is not None:
                out = out + self.base_skips[i](resize(base, out.shape[-2:]).to(out.dtype))
        if self.base_fusion:
            # The output conv over [features, base] as two convs (the same sum): the features'
            # channel count keeps its fast kernel, and a zero base adds nothing.
            e = out.shape[1]
            w_main, w_base = self.final.weight[:, :e], self.final.weight[:, e:]
            final = F.conv2d(out, w_main, self.final.bias, padding=self.final.padding)
            if base is not None:
                final = final + F.conv2d(base.to(out.dtype), w_base, None, padding=self.final.padding)
            out = final.float()
        else:
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

"""FOMM keypoint detector: K keypoints from softmax heatmaps, each with a 2x2 Jacobian.

Runs on a downscaled frame (`kp_scale`, 64x64 for 256x256 input). Keypoints are in [-1, 1]
(x, y); Jacobians are the local affine motion around each keypoint, identity at init.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kpcodec.models.blocks import Hourglass, make_coordinate_grid, resize


class KeypointDetector(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.num_kp = cfg.num_keypoints
        self.temperature = cfg.kp_temperature
        self.input_size = round(cfg.image_size * cfg.kp_scale)
        self.hourglass = Hourglass(3, cfg.kp_expansion, cfg.kp_max_features, cfg.kp_num_blocks)
        ch = self.hourglass.out_channels
        self.heatmap = nn.Conv2d(ch, self.num_kp, 7, padding=3)
        self.jacobian = nn.Conv2d(ch, 4 * self.num_kp, 7, padding=3)
        # Start from identity Jacobians: no local deformation until the data asks for it.
        nn.init.zeros_(self.jacobian.weight)
        with torch.no_grad():
            self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]).repeat(self.num_kp))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B,3,H,W) in [0,1] -> keypoints (B,K,2), jacobians (B,K,2,2)."""
        x = resize(frames, self.input_size)
        features = self.hourglass(x)
        logits = self.heatmap(features)
        b, k, h, w = logits.shape
        heat = F.softmax(logits.float().view(b, k, -1) / self.temperature, dim=-1).view(b, k, h, w)
        grid = make_coordinate_grid(h, w, device=frames.device)
        value = (heat.unsqueeze(-1) * grid).sum(dim=(2, 3))
        jac_map = self.jacobian(features).float().view(b, k, 4, h, w)
        jac = (jac_map * heat.unsqueeze(2)).sum(dim=(3, 4)).view(b, k, 2, 2)
        return value, jac

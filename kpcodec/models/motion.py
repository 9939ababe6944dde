"""FOMM dense motion network: from source and driving keypoints to a dense backward flow.

Each keypoint gives a first-order (affine) motion around it; an hourglass sees the source
deformed by every one of them plus keypoint heatmaps, and predicts softmax masks over the
K motions and a background identity; their mix is the flow. It also predicts an occlusion
map for the generator. Works at `kp_scale` resolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kpcodec.models.blocks import Hourglass, inverse_2x2, make_coordinate_grid, resize, warp


def keypoint_heatmaps(kp: torch.Tensor, height: int, width: int, variance: float) -> torch.Tensor:
    """Gaussians (B,K,H,W) centred on keypoints (B,K,2)."""
    grid = make_coordinate_grid(height, width, device=kp.device, dtype=kp.dtype)
    diff = grid[None, None] - kp[:, :, None, None, :]
    return torch.exp(-0.5 * (diff ** 2).sum(-1) / variance)


class DenseMotion(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.num_kp = cfg.num_keypoints
        self.size = round(cfg.image_size * cfg.kp_scale)
        self.variance = cfg.kp_variance
        k1 = self.num_kp + 1
        self.hourglass = Hourglass(k1 * 4, cfg.dm_expansion, cfg.dm_max_features, cfg.dm_num_blocks)
        ch = self.hourglass.out_channels
        self.mask = nn.Conv2d(ch, k1, 7, padding=3)
        self.occlusion = nn.Conv2d(ch, 1, 7, padding=3)

    def small_source(self, source: torch.Tensor) -> torch.Tensor:
        """The downscaled source this network works on (cacheable per source frame)."""
        return resize(source, self.size)

    def sparse_motions(self, kp_src, jac_src, kp_drv, jac_drv) -> torch.Tensor:
        """(B, K+1, H, W, 2): where each driving pixel comes from under each keypoint's motion."""
        b, k, _ = kp_drv.shape
        grid = make_coordinate_grid(self.size, self.size, device=kp_drv.device, dtype=kp_drv.dtype)
        rel = grid[None, None] - kp_drv[:, :, None, None, :]
        affine = jac_src @ inverse_2x2(jac_drv)
        moved = torch.einsum("bkij,bkhwj->bkhwi", affine, rel) + kp_src[:, :, None, None, :]
        identity = grid[None, None].expand(b, 1, -1, -1, -1)
        return torch.cat([identity, moved], dim=1)

    def forward(self, small_source, kp_src, jac_src, kp_drv, jac_drv) -> dict:
        b = kp_drv.shape[0]
        if small_source.shape[0] != b:
            small_source = small_source.expand(b, -1, -1, -1)
        k1, s = self.num_kp + 1, self.size
        motions = self.sparse_motions(kp_src, jac_src, kp_drv, jac_drv)
        heat = keypoint_heatmaps(kp_drv, s, s, self.variance) - keypoint_heatmaps(kp_src, s, s, self.variance)
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1)
        repeated = small_source.unsqueeze(1).expand(-1, k1, -1, -1, -1).reshape(b * k1, 3, s, s)
        deformed = warp(repeated, motions.reshape(b * k1, s, s, 2)).view(b, k1 * 3, s, s)
        features = self.hourglass(torch.cat([heat, deformed], dim=1))
        mask = F.softmax(self.mask(features).float(), dim=1)
        flow = (motions * mask.unsqueeze(-1)).sum(dim=1)
        occlusion = torch.sigmoid(self.occlusion(features).float())
        return {"flow": flow, "occlusion": occlusion, "mask": mask}

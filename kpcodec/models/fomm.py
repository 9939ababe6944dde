"""The whole FOMM motion model: detector + dense motion + generator, with the two entry
points a codec needs (`detect` for the sender, `prepare_source`/`render` for the receiver)
and `forward` for training."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import warp
from .generator import Generator
from .keypoints import KeypointDetector
from .motion import DenseMotion


@dataclass
class SourceState:
    """What the receiver computes once per source frame and reuses for every output frame."""

    features: torch.Tensor  # generator encoder output (1,C,h,w)
    small: torch.Tensor  # downscaled source for the dense motion network (1,3,s,s)
    kp: torch.Tensor  # (1,K,2)
    jac: torch.Tensor  # (1,K,2,2)
    image: torch.Tensor  # the source itself (1,3,H,W), for the warp-blend path


class MotionModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.detector = KeypointDetector(cfg)
        self.dense_motion = DenseMotion(cfg)
        self.generator = Generator(cfg)

    def detect(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B,3,H,W) in [0,1] -> keypoints (B,K,2) in [-1,1], Jacobians (B,K,2,2)."""
        return self.detector(frames)

    def prepare_source(self, source: torch.Tensor, kp=None, jac=None) -> SourceState:
        if kp is None:
            kp, jac = self.detect(source)
        return SourceState(self.generator.encode(source), self.dense_motion.small_source(source), kp, jac, source)

    def render(self, state: SourceState, kp: torch.Tensor, jac: torch.Tensor,
               base: torch.Tensor | None = None) -> torch.Tensor:
        """Frames (B,3,H,W) in [0,1] for driving keypoints (B,K,2) and Jacobians (B,K,2,2);
        `base`: base-layer frames from `base_image` (hybrid configs)."""
        b = kp.shape[0]
        motion = self.dense_motion(
            state.small, state.kp.expand(b, -1, -1), state.jac.expand(b, -1, -1, -1), kp, jac
        )
        return self.generator.decode(state.features, motion["flow"], motion["occlusion"], state.image, base)

    def base_image(self, small: torch.Tensor, kp_from: torch.Tensor | None = None, jac_from=None,
                   kp_to: torch.Tensor | None = None, jac_to=None) -> torch.Tensor:
        """Decoded base-layer frames (B,3,s,s) in [0,1], any size s, as the generator takes them:
        bicubic-upsampled to the model size and, given the keypoints of the base frame
        (`kp_from`) and of the frame to render (`kp_to`), moved by the dense motion between
        them (a base frame is older than the frame it serves when the base layer runs at a
        fraction of the frame rate)."""
        size = self.cfg.image_size
        up = small.float()
        if up.shape[-1] != size:
            up = F.interpolate(up, size=(size, size), mode="bicubic", align_corners=False).clamp_(0, 1)
        if kp_from is None:
            return up
        motion = self.dense_motion(self.dense_motion.small_source(up), kp_from, jac_from, kp_to, jac_to)
        flow = motion["flow"]
        if flow.shape[1] != size:
            flow = F.interpolate(flow.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                                 align_corners=True).permute(0, 2, 3, 1)
        return warp(up, flow)

    def forward(self, source: torch.Tensor, driving: torch.Tensor) -> dict:
        kp_s, jac_s = self.detect(source)
        kp_d, jac_d = self.detect(driving)
        motion = self.dense_motion(self.dense_motion.small_source(source), kp_s, jac_s, kp_d, jac_d)
        image = self.generator.decode(self.generator.encode(source), motion["flow"], motion["occlusion"], source)
        return {"image": image, "kp_source": kp_s, "jac_source": jac_s, "kp_driving": kp_d,
                "jac_driving": jac_d, **motion}

"""The whole FOMM motion model: detector + dense motion + generator, with the two entry
points a codec needs (`detect` for the sender, `prepare_source`/`render` for the receiver)
and `forward` for training."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kpcodec.models.between import BetweenRefiner
from kpcodec.models.blocks import warp
from kpcodec.models.generator import Generator
from kpcodec.models.keypoints import KeypointDetector
from kpcodec.models.motion import DenseMotion
from kpcodec.models.restorer import BaseRestorer, bicubic


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
        self.restorer = BaseRestorer(cfg.base_restorer, cfg.restorer_depth, frames=cfg.restorer_frames) \
            if cfg.base_restorer else None
        self.refiner = BetweenRefiner(cfg.between_refiner, cfg.between_depth, cfg.between_unshuffle) \
            if cfg.between_refiner else None

    def detect(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B,3,H,W) in [0,1] -> keypoints (B,K,2) in [-1,1], Jacobians (B,K,2,2)."""
        return self.detector(frames)

    def prepare_source(self, source: torch.Tensor, kp=None, jac=None) -> SourceState:
        if kp is None:
            kp, jac = self.detect(source)
        return SourceState(self.generator.encode(source), self.dense_motion.small_source(source), kp, jac, source)

    def render(self, state: SourceState, kp: torch.Tensor, jac: torch.Tensor, base: torch.Tensor | None = None,
               base_kp: torch.Tensor | None = None, base_jac: torch.Tensor | None = None,
               mix: torch.Tensor | None = None) -> torch.Tensor:
        """Frames (B,3,H,W) in [0,1] for driving keypoints (B,K,2) and Jacobians (B,K,2,2).

        Hybrid configs: `base` (B,3,s,s) are the decoded base-layer frames (zeros where none), any
        size s, and `base_kp`/`base_jac` the keypoints of the frames they show (None: this frame's);
        see `move_base`. `mix` (B,) in [0,1]: each frame is moved base + mix * (rendering - moved
        base) (the encoder's choice, format 2.1; 1 where a frame has no base frame); None: 1."""
        if mix is not None and base is not None and not bool(mix.any()):
            # The base alone (every frame has one: a frame without has mix 1): no generator.
            motion = self._motion(state, kp, jac)
            return self.move_base(base, motion["mask"], base_kp, base_jac, kp, jac)
        image, moved = self.render_parts(state, kp, jac, base, base_kp, base_jac)
        if mix is None or moved is None:
            return image
        return torch.lerp(moved, image, mix.to(image.dtype).view(-1, 1, 1, 1))

    def _motion(self, state: SourceState, kp: torch.Tensor, jac: torch.Tensor) -> dict:
        b = kp.shape[0]
        return self.dense_motion(state.small, state.kp.expand(b, -1, -1), state.jac.expand(b, -1, -1, -1), kp, jac)

    def render_parts(self, state: SourceState, kp: torch.Tensor, jac: torch.Tensor, base: torch.Tensor | None = None,
                     base_kp: torch.Tensor | None = None, base_jac: torch.Tensor | None = None):
        """(the generator's rendering, the moved and upsampled base frames or None): what `render`
        mixes, for an encoder choosing the mix."""
        motion = self._motion(state, kp, jac)
        if base is not None:
            base = self.move_base(base, motion["mask"], base_kp, base_jac, kp, jac)
        return self.generator.decode(state.features, motion["flow"], motion["occlusion"], state.image, base), base

    def base_image(self, small: torch.Tensor, restore: bool = False, before: torch.Tensor | None = None,
                   after: torch.Tensor | None = None) -> torch.Tensor:
        """Base-layer frames (B,3,s,s) in [0,1], any size s, bicubic-upsampled to the model size;
        `restore` (a stream of the base layer alone): then through the restorer, where the model
        restores frames of that size (`restores`). A restorer of 3 frames sees the base frames `before`
        and `after` each (B,3,s,s); without them, `small` is consecutive base frames of one stream,
        each the others' neighbours (the ends their own)."""
        size = self.cfg.image_size
        up = bicubic(small.float(), size)
        if restore and self.restores(small.shape[-1]):
            if self.restorer.frames == 1:
                return self.restorer(up)
            before = bicubic(before.float(), size) if before is not None else torch.cat([up[:1], up[:-1]])
            after = bicubic(after.float(), size) if after is not None else torch.cat([up[1:], up[-1:]])
            up = self.restorer(up, before, after)
        return up

    def restores(self, size: int) -> bool:
        """Whether base frames of a stream of the base layer alone, `size` px, go through the restorer:
        where the model has one and they are upsampled, or at the model size too (cfg.restore_full)."""
        return self.restorer is not None and (size != self.cfg.image_size or self.cfg.restore_full)

    def move_base(self, small: torch.Tensor, mask: torch.Tensor, kp_from: torch.Tensor | None, jac_from,
                  kp_to: torch.Tensor, jac_to) -> torch.Tensor:
        """Base frames as the generator takes them: upsampled (base_image) and moved from the
        keypoints of the frame they show (`kp_from`) to those of the frame being rendered
        (`kp_to`): a base frame serves the frames after it when the base layer runs at a fraction
        of the frame rate. The move is FOMM's flow between the two keypoint sets, mixed by the
        masks the dense motion network already made for this frame (which part of the frame
        follows which keypoint, or stays): no second dense-motion pass. With kp_from = kp_to
        (or None) every motion is the identity and the frame is not moved."""
        up = self.base_image(small)
        if kp_from is None:
            return up
        sparse = self.dense_motion.sparse_motions(kp_from, jac_from, kp_to, jac_to)  # B,K+1,h,w,2
        return _warp_full(up, (sparse * mask.unsqueeze(-1)).sum(dim=1))

    def between(self, up_a: torch.Tensor, kp_a: torch.Tensor, jac_a: torch.Tensor, up_b: torch.Tensor,
                kp_b: torch.Tensor, jac_b: torch.Tensor, a: torch.Tensor, outer=None, knots=None,
                offset: torch.Tensor | None = None) -> torch.Tensor:
        """Frames between two base frames of a stream of the base layer alone (format 2.3): each of
        the upsampled base frames (B,3,H,W) moved, by the dense motion network with it as the source,
        to the keypoints a fraction `a` (B,) of the way from a's keypoints to b's, and the two blended
        by `a`. The keypoints are the detector's on the base frames themselves: no bits are sent.
        `outer` (format 2.4's cubic path): the keypoints and Jacobians of the base frames before a and
        after b, (kp_p, jac_p, kp_q, jac_q); the path is then the Catmull-Rom curve through all four.
        `knots` (format 2.5's placed base frames, with `outer`): (B,4) the video frames of the base
        frames before a, a, b and after b; the curve is then the non-uniform one (`hermite`).
        `offset` (format 2.6, (B,K,2)): added to the path's keypoints (the encoder's MOTION packets).
        A model with a between refiner (kpcodec.models.between) blends the two moved frames with it."""
        moved_a, moved_b = self.between_parts(up_a, kp_a, jac_a, up_b, kp_b, jac_b, a, outer, knots, offset)
        if self.refiner is not None:
            return self.refiner(moved_a, moved_b, a)
        return torch.lerp(moved_a, moved_b, a.view(-1, 1, 1, 1)).clamp_(0, 1)

    def between_parts(self, up_a: torch.Tensor, kp_a: torch.Tensor, jac_a: torch.Tensor, up_b: torch.Tensor,
                      kp_b: torch.Tensor, jac_b: torch.Tensor, a: torch.Tensor, outer=None, knots=None, offset=None):
        """The two base frames of `between`, each moved to the frame (B,3,H,W): what it blends."""
        kp, jac = keypoint_path(kp_a, jac_a, kp_b, jac_b, a, outer, knots)
        if offset is not None:
            kp = kp + offset

        def moved(up, kp_from, jac_from):
            return _warp_full(up, self.dense_motion(self.dense_motion.small_source(up), kp_from, jac_from, kp, jac)["flow"])

        return moved(up_a, kp_a, jac_a), moved(up_b, kp_b, jac_b)

    def forward(self, source: torch.Tensor, driving: torch.Tensor) -> dict:
        kp_s, jac_s = self.detect(source)
        kp_d, jac_d = self.detect(driving)
        motion = self.dense_motion(self.dense_motion.small_source(source), kp_s, jac_s, kp_d, jac_d)
        image = self.generator.decode(self.generator.encode(source), motion["flow"], motion["occlusion"], source)
        return {"image": image, "kp_source": kp_s, "jac_source": jac_s, "kp_driving": kp_d,
                "jac_driving": jac_d, **motion}


def keypoint_path(kp_a, jac_a, kp_b, jac_b, a: torch.Tensor, outer=None, knots=None):
    """The keypoints (B,K,2) and Jacobians a fraction `a` (B,) of the way from base frame a's to b's:
    on the line (format 2.3), on the Catmull-Rom curve through `outer`'s (kp_p, jac_p, kp_q, jac_q) of
    the base frames before a and after b too (2.4), or, with `knots` (B,4) their video frames, on the
    non-uniform curve (2.5, `hermite`)."""
    if outer is None:
        return torch.lerp(kp_a, kp_b, a.view(-1, 1, 1)), torch.lerp(jac_a, jac_b, a.view(-1, 1, 1, 1))
    kp_p, jac_p, kp_q, jac_q = outer
    if knots is None:
        return (catmull_rom(kp_p, kp_a, kp_b, kp_q, a.view(-1, 1, 1)),
                catmull_rom(jac_p, jac_a, jac_b, jac_q, a.view(-1, 1, 1, 1)))
    return (hermite(kp_p, kp_a, kp_b, kp_q, a.view(-1, 1, 1), knots.view(-1, 4, 1, 1)),
            hermite(jac_p, jac_a, jac_b, jac_q, a.view(-1, 1, 1, 1), knots.view(-1, 4, 1, 1, 1)))


def catmull_rom(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The uniform Catmull-Rom curve through p0..p3 at a fraction `a` of the way from p1 to p2
    (p1 at a = 0, p2 at a = 1; an end's missing neighbour is the end itself)."""
    a2 = a * a
    a3 = a2 * a
    return 0.5 * (2 * p1 + (p2 - p0) * a + (2 * p0 - 5 * p1 + 4 * p2 - p3) * a2 + (3 * (p1 - p2) + p3 - p0) * a3)


def hermite(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor, a: torch.Tensor,
            knots: torch.Tensor) -> torch.Tensor:
    """The Catmull-Rom curve through p0..p3 at knot times knots[:, 0..3] (t0 < t1 < t2 < t3, along
    dim 1), a fraction `a` of the way from p1 (at t1) to p2 (at t2): a cubic Hermite segment whose
    tangents are the finite differences (p2 - p0) / (t2 - t0) and (p3 - p1) / (t3 - t1). On uniform
    knots it is `catmull_rom`. An end's missing neighbour is the end itself, one span further out."""
    t0, t1, t2, t3 = knots.unbind(1)
    h = t2 - t1
    m1 = (p2 - p0) * (h / (t2 - t0))
    m2 = (p3 - p1) * (h / (t3 - t1))
    a2 = a * a
    a3 = a2 * a
    return (2 * a3 - 3 * a2 + 1) * p1 + (a3 - 2 * a2 + a) * m1 + (3 * a2 - 2 * a3) * p2 + (a3 - a2) * m2


def _warp_full(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """`image` (B,3,H,W) warped by a flow (B,h,w,2) of any size, bilinearly upsampled to H first."""
    size = image.shape[-1]
    if flow.shape[1] != size:
        flow = F.interpolate(flow.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                             align_corners=True).permute(0, 2, 3, 1)
    return warp(image, flow)

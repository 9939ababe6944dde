"""Training losses for the motion model.

No pretrained networks can be downloaded here, so there is no VGG perceptual loss:
reconstruction is an image-pyramid L1 plus SSIM. Equivariance under random thin-plate-spline
warps makes keypoints consistent; a separation hinge stops them collapsing onto one point;
face-mesh landmarks, where available, supervise the dense flow directly (mouth and eyes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kpcodec.models.blocks import inverse_2x2, make_coordinate_grid, resize


def pyramid_l1(pred: torch.Tensor, target: torch.Tensor, scales=(1.0, 0.5, 0.25, 0.125)) -> torch.Tensor:
    size = pred.shape[-1]
    total = 0.0
    for s in scales:
        n = max(8, round(size * s))
        total = total + (resize(pred, n) - resize(target, n)).abs().mean()
    return total / len(scales)


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over the batch, Gaussian window 11 / sigma 1.5, images in [0,1]."""
    c = pred.shape[1]
    g = _gaussian_window(device=pred.device)
    kx = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(x):
        return F.conv2d(F.conv2d(x, kx, groups=c), ky, groups=c)

    mu_p, mu_t = blur(pred), blur(target)
    var_p = blur(pred * pred) - mu_p ** 2
    var_t = blur(target * target) - mu_t ** 2
    cov = blur(pred * target) - mu_p * mu_t
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2))
    return s.mean()


def separation(kp: torch.Tensor, min_distance: float) -> torch.Tensor:
    """Hinge on pairwise keypoint distances (B,K,2): pushes apart keypoints closer than `min_distance`."""
    d = torch.cdist(kp, kp)
    k = kp.shape[1]
    off_diag = ~torch.eye(k, dtype=torch.bool, device=kp.device)
    return F.relu(min_distance - d[:, off_diag]).mean()


def flow_at_landmarks(flow: torch.Tensor, lm_driving: torch.Tensor, lm_source: torch.Tensor,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """L1 between where the flow says driving landmarks come from and where they are in the source.

    flow (B,h,w,2) maps driving coordinates to source coordinates; landmarks (B,N,2) in [-1,1];
    weights (N,) per landmark (e.g. more on the lips, whose few points are lost among 478), or
    None for a plain mean.
    """
    valid = torch.isfinite(lm_driving).all(-1) & torch.isfinite(lm_source).all(-1)
    if not valid.any():
        return flow.sum() * 0.0
    grid = torch.nan_to_num(lm_driving).unsqueeze(2)  # B,N,1,2
    sampled = F.grid_sample(flow.permute(0, 3, 1, 2), grid, align_corners=True).squeeze(-1).permute(0, 2, 1)
    err = (sampled - torch.nan_to_num(lm_source)).abs().sum(-1)
    if weights is None:
        return err[valid].mean()
    w = weights.to(err).expand_as(err)[valid]
    return (err[valid] * w).sum() / w.sum()


def landmark_weights(count: int, lips: float, eyes: float) -> torch.Tensor | None:
    """Per-landmark weights of the face-mesh topology (None when every weight is 1)."""
    from kpcodec.eval.landmarks import EYE_CONTOUR, LIP_CONTOUR

    if lips == 1.0 and eyes == 1.0:
        return None
    w = torch.ones(count)
    w[[i for i in LIP_CONTOUR if i < count]] = lips
    w[[i for i in EYE_CONTOUR if i < count]] = eyes
    return w


class RandomTPS:
    """A random affine + thin-plate-spline warp of coordinates and frames (equivariance)."""

    def __init__(self, batch: int, sigma_affine: float = 0.05, sigma_tps: float = 0.005, points: int = 5,
                 generator: torch.Generator | None = None):
        noise = torch.randn(batch, 2, 3, generator=generator) * sigma_affine
        self.theta = noise + torch.eye(2, 3)
        self.control = make_coordinate_grid(points, points).view(1, 1, -1, 2)
        self.params = torch.randn(batch, 1, points * points, generator=generator) * sigma_tps

    def warp_coordinates(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (B,N,2) -> (B,N,2)."""
        theta = self.theta.to(coords)
        out = torch.einsum("bij,bnj->bni", theta[:, :, :2], coords) + theta[:, None, :, 2]
        dist = (coords.unsqueeze(2) - self.control.to(coords)).abs().sum(-1)
        radial = dist ** 2 * torch.log(dist + 1e-6)
        return out + (radial * self.params.to(coords)).sum(-1, keepdim=True)

    def jacobian(self, coords: torch.Tensor) -> torch.Tensor:
        """d warp / d coords at coords (B,N,2) -> (B,N,2,2)."""
        with torch.enable_grad():
            c = coords.detach().requires_grad_(True)
            w = self.warp_coordinates(c)
            gx = torch.autograd.grad(w[..., 0].sum(), c, create_graph=True)[0]
            gy = torch.autograd.grad(w[..., 1].sum(), c, create_graph=True)[0]
        return torch.stack([gx, gy], dim=-2)

    def warp_frames(self, frames: torch.Tensor) -> torch.Tensor:
        b, _, h, w = frames.shape
        grid = make_coordinate_grid(h, w, device=frames.device).view(1, -1, 2).expand(b, -1, -1)
        grid = self.warp_coordinates(grid).view(b, h, w, 2)
        return F.grid_sample(frames, grid, padding_mode="reflection", align_corners=True)


def equivariance(detector, driving, kp_d, jac_d, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints of a warped frame must be the warped keypoints; Jacobians likewise."""
    tps = RandomTPS(driving.shape[0], generator=generator)
    # Warp at the detector's own input size: the same result, 16x fewer points at 256 px.
    kp_t, jac_t = detector(tps.warp_frames(resize(driving, detector.input_size)))
    value_loss = (kp_d - tps.warp_coordinates(kp_t)).abs().mean()
    jac_warped = tps.jacobian(kp_t) @ jac_t
    eye = torch.eye(2, device=driving.device).expand_as(jac_warped)
    jac_loss = (eye - inverse_2x2(jac_d) @ jac_warped).abs().mean()
    return value_loss, jac_loss

"""Frame quality metrics: PSNR, SSIM, MS-SSIM and L1 between original and decoded frames.

Every function takes two uint8 RGB frames of the same shape ``(H, W, 3)`` and returns a
float. ``FrameScores`` collects them over a video and averages per frame.

Only numpy and scikit-image are used (no torch, no mediapipe), so evaluation can run
where the model does not.

Choices, so that numbers stay comparable between runs:

* SSIM is scikit-image's ``structural_similarity`` with its defaults: a 7x7 uniform
  window, sample covariance, K1=0.01, K2=0.03, ``data_range=255``, averaged over the
  three channels (``channel_axis=2``). Papers often use Wang et al.'s 11x11 Gaussian
  window (``gaussian_weights=True``), which gives somewhat different numbers; we keep the
  library default because it is what a plain call gives and matches our MS-SSIM below.
* MS-SSIM (Wang, Simoncelli & Bovik 2003) is implemented here with the same 7x7 uniform
  window, since scikit-image has none. See ``ms_ssim``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from skimage.metrics import structural_similarity

WIN_SIZE = 7  # skimage's default SSIM window, used by ssim and ms_ssim alike
K1, K2 = 0.01, 0.03
DATA_RANGE = 255.0
# Wang et al. 2003 weights for scales 1 (full size) to 5.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both uint8 (H, W, 3) and the same shape, else ValueError."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"frame shapes differ: {a.shape} vs {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {a.dtype} and {b.dtype}")
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected RGB frames shaped (H, W, 3), got {a.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels, peak 255.

    ``10 * log10(255**2 / MSE)``; identical frames give ``inf``.
    """
    a, b = _check_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(DATA_RANGE**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM with scikit-image's defaults (7x7 uniform window), mean over RGB channels."""
    a, b = _check_pair(a, b)
    return float(structural_similarity(a, b, channel_axis=2, data_range=DATA_RANGE))


def l1(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference with pixels scaled to [0, 1]."""
    a, b = _check_pair(a, b)
    return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))) / DATA_RANGE)


def _box_mean(x: np.ndarray, win: int) -> np.ndarray:
    """Mean over every win x win window lying fully inside a 2-D array ("valid" mode).

    An integral image makes this O(H*W) whatever the window. It gives the same values as
    skimage's SSIM, which filters with edge reflection and then crops the (win-1)/2 border
    where the reflection shows.
    """
    c = np.zeros((x.shape[0] + 1, x.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(x, axis=0), axis=1, out=c[1:, 1:])
    total = c[win:, win:] - c[:-win, win:] - c[win:, :-win] + c[:-win, :-win]
    return total / (win * win)


def _ssim_terms(x: np.ndarray, y: np.ndarray, win: int) -> tuple[float, float]:
    """(mean SSIM, mean contrast-structure term) of two 2-D float64 images.

    Same formula as skimage: sample covariance (N/(N-1)), C1=(K1*L)^2, C2=(K2*L)^2.
    """
    ux, uy = _box_mean(x, win), _box_mean(y, win)
    uxx, uyy, uxy = _box_mean(x * x, win), _box_mean(y * y, win), _box_mean(x * y, win)
    n = win * win
    cov_norm = n / (n - 1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (K1 * DATA_RANGE) ** 2
    c2 = (K2 * DATA_RANGE) ** 2
    cs_map = (2.0 * vxy + c2) / (vx + vy + c2)
    luminance = (2.0 * ux * uy + c1) / (ux * ux + uy * uy + c1)
    return float(np.mean(luminance * cs_map)), float(np.mean(cs_map))


def _halve(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling (an odd last row or column is dropped)."""
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x = x[:h, :w]
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def ms_scales(height: int, width: int, win: int = WIN_SIZE) -> int:
    """How many MS-SSIM scales fit: halvings while the smaller side holds a window, at most 5."""
    side = min(height, width)
    scales = 0
    while side >= win and scales < len(MS_SSIM_WEIGHTS):
        scales += 1
        side //= 2
    return scales


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003), mean over RGB channels.

    Per channel, at scales j = 1..M (each half the size of the one before, by 2x2
    averaging), the contrast-structure term cs_j is the mean over 7x7 windows of
    (2*cov + C2) / (var_x + var_y + C2); at the coarsest scale the full SSIM (with the
    luminance term) is taken instead. MS-SSIM = prod_{j<M} cs_j**w_j * SSIM_M**w_M.

    * Window: 7x7 uniform with sample covariance, as in ``ssim``, so that at one scale
      MS-SSIM equals ``ssim``. (Wang et al. use an 11x11 Gaussian.)
    * Scales: up to the standard 5, fewer when the image is too small to hold a 7 px
      window at the coarsest one; at 256x256 all 5 fit (256, 128, 64, 32, 16). The
      standard weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) of the scales used are
      rescaled to sum to 1.
    * Negative terms (strongly anti-correlated content) are clipped to 0 before the
      fractional powers, which would otherwise be NaN; such a pair scores 0.
    * Channels are scored separately and averaged, like ``ssim``.

    Raises ValueError for images smaller than 7x7.
    """
    a, b = _check_pair(a, b)
    scales = ms_scales(a.shape[0], a.shape[1])
    if scales == 0:
        raise ValueError(f"MS-SSIM needs frames of at least {WIN_SIZE}x{WIN_SIZE}, got {a.shape}")
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales], dtype=np.float64)
    weights /= weights.sum()

    per_channel = []
    for ch in range(a.shape[2]):
        x = a[:, :, ch].astype(np.float64)
        y = b[:, :, ch].astype(np.float64)
        score = 1.0
        for j in range(scales):
            full, cs = _ssim_terms(x, y, WIN_SIZE)
            term = full if j == scales - 1 else cs
            score *= max(term, 0.0) ** weights[j]
            if j < scales - 1:
                x, y = _halve(x), _halve(y)
        per_channel.append(score)
    return float(np.mean(per_channel))


class FrameScores:
    """Accumulates per-frame metrics over a video; ``mean()`` averages them per frame.

    Example::

        scores = FrameScores()
        for original, decoded in zip(originals, decodeds):
            scores.add(original, decoded)
        scores.mean()  # {"frames": n, "psnr": ..., "ssim": ..., "ms_ssim": ..., "l1": ...}

    The PSNR mean is the mean of per-frame PSNRs (the usual video-codec report), so one
    lossless frame makes it ``inf``.
    """

    METRICS = {"psnr": psnr, "ssim": ssim, "ms_ssim": ms_ssim, "l1": l1}

    def __init__(self) -> None:
        self._values: dict[str, list[float]] = {name: [] for name in self.METRICS}

    def add(self, original: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
        """Score one frame pair, remember it, and return that frame's scores."""
        original, decoded = _check_pair(original, decoded)
        frame = {name: fn(original, decoded) for name, fn in self.METRICS.items()}
        for name, value in frame.items():
            self._values[name].append(value)
        return frame

    def __len__(self) -> int:
        return len(self._values["psnr"])

    @property
    def per_frame(self) -> dict[str, list[float]]:
        """A copy of every frame's scores, one list per metric."""
        return {name: list(values) for name, values in self._values.items()}

    def mean(self) -> dict[str, Any]:
        """``{"frames": n, "psnr", "ssim", "ms_ssim", "l1"}``; the means are None for n == 0."""
        n = len(self)
        out: dict[str, Any] = {"frames": n}
        for name, values in self._values.items():
            out[name] = float(np.mean(values)) if n else None
        return out

"""Source refresh (`--refresh auto`): send a new source image when the rendering drifts.

The decoder renders every frame from one source image; a head turned away, an occlusion or a
scene cut leave it nothing to warp from. The encoder checks, every `check_every` frames and on
every scene cut, the frame the decoder will render: from the current source image as the
decoder decodes it, with the keypoints the decoder will hold for that frame (the fill
predictor on the dequantised sent keypoints). When that render's SSIM against the input
frame is below `threshold`, the input frame is coded as a new source image (an SRCR chunk,
.kpc 1.2) and made a sent frame, so the decoder holds its exact keypoints.

Only the checked frames are kept in memory (one 256x256 frame per second of video at the
default spacing) and one frame is rendered per check, so the cost stays a small part of the
detector's.
"""
from __future__ import annotations

import numpy as np

from kpcodec.eval import metrics

from kpcodec.codec import predictors as predict

from kpcodec.media import source_image
from kpcodec.bitstream import quantize as q
from kpcodec.bitstream.container import Refresh
from kpcodec.errors import UsageError

MODES = ("auto", "off")
# Off by default (benchmarks/results/refresh.md): on the val clips that drift, refreshes buy
# +0.06..0.16 SSIM for 2.5-3.6x the rate, the checks halve encode speed on every clip, and a
# refreshed file needs a 1.2 decoder.
DEFAULT_MODE = "off"
# SSIM of the check render. Well-rendered val clips check at 0.57 and above; drifting ones at
# 0.30-0.55. 0.5 catches the synthetic cut at the cut (0.4 only a check later, at a worse SSIM)
# and the three drifting clips, and fires on none of the six others.
DEFAULT_THRESHOLD = 0.5
DEFAULT_CHECK_SECONDS = 1.0
# Scene cut: mean absolute difference of 32x32 grey thumbnails of consecutive frames, in grey
# levels. On val clips consecutive frames differ by at most 15 (a fast head turn), the two
# people of the benchmark's synthetic cut by 38. A cut only adds a check (one render), so a
# false one is cheap.
CUT_LEVEL = 20.0
_THUMB = 32


def check_mode(value: str) -> str:
    mode = str(value).strip().lower()
    if mode not in MODES:
        raise UsageError(f"--refresh takes {' or '.join(MODES)} (got {value!r})")
    return mode


def check_threshold(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < 1):
        raise UsageError(f"--refresh-threshold must be an SSIM between 0 and 1 (got {value!r})")
    return float(value)


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """32x32 grey block means of an HxWx3 uint8 frame (float32), for the cut test."""
    h, w = frame.shape[:2]
    bh, bw = max(1, h // _THUMB), max(1, w // _THUMB)
    blocks = frame[:bh * (h // bh), :bw * (w // bw)].reshape(h // bh, bh, w // bw, bw, -1)
    # an integer sum: a float copy of every frame would cost more than the detector's share
    return blocks.sum(axis=(1, 3, 4), dtype=np.uint32).astype(np.float32) / (bh * bw * blocks.shape[-1])


def is_cut(previous: np.ndarray | None, current: np.ndarray) -> bool:
    return previous is not None and previous.shape == current.shape \
        and float(np.abs(previous - current).mean()) > CUT_LEVEL


class CheckFrames:
    """Collects, while the video is read, the input frames the encoder will check."""

    def __init__(self, check_every: int):
        self.check_every = max(1, int(check_every))
        self.frames: dict[int, np.ndarray] = {}
        self.cuts: list[int] = []
        self._thumb = None

    def add(self, index: int, frame: np.ndarray) -> None:
        thumb = thumbnail(frame)
        cut = is_cut(self._thumb, thumb)
        self._thumb = thumb
        if cut:
            self.cuts.append(index)
        if index > 0 and (cut or index % self.check_every == 0):
            self.frames[index] = frame


def check_spacing(fps: float, seconds: float = DEFAULT_CHECK_SECONDS) -> int:
    return max(1, round(fps * seconds))


def _decoder_keypoints(sent, kps, jacs, frame_count, predictor, kp_step, jac_step):
    dec_kp = q.decoder_values(kps, kp_step, q.KP_CLIP)
    dec_jac = q.decoder_values(jacs, jac_step, q.JAC_CLIP)
    return list(predict.fill_keypoints(sent, dec_kp, dec_jac, frame_count, predictor))


def choose_refreshes(net, first_frame: np.ndarray, checks: CheckFrames, sent: np.ndarray,
                     kps: np.ndarray, jacs: np.ndarray, frame_count: int, predictor: str,
                     threshold: float = DEFAULT_THRESHOLD, codec: str = source_image.DEFAULT_CODEC,
                     quality: int = source_image.DEFAULT_QUALITY, first_data: bytes | None = None,
                     kp_step: float = q.DEFAULT_KP_STEP, jac_step: float = q.DEFAULT_JAC_STEP):
    """Walk the checked frames in order; returns (refreshes, sent, kps, jacs, scores).

    A refresh frame that was not sent is detected and inserted among the sent frames.
    `scores` maps each checked frame to the SSIM of its check render.
    """
    from kpcodec.codec.renderer import Detector, Renderer

    renderer, detect = Renderer(net), Detector(net)

    def prepare(data: bytes):
        return renderer.prepare(source_image.decode_image(data, codec))

    if first_data is None:
        first_data = source_image.encode_image(first_frame, codec, quality)
    state = prepare(first_data)
    sent = np.asarray(sent, dtype=np.int64)
    filled = None
    refreshes: list[Refresh] = []
    scores: dict[int, float] = {}
    for t in sorted(checks.frames):
        if filled is None:  # recomputed only after a refresh adds a sent frame
            filled = _decoder_keypoints(sent, kps, jacs, frame_count, predictor, kp_step, jac_step)
        frame = checks.frames[t]
        kp, jac = filled[t]
        rendered = renderer.render(state, kp[None], jac[None])[0]
        scores[t] = metrics.ssim(rendered, frame)
        if scores[t] >= threshold:
            continue
        data = source_image.encode_image(frame, codec, quality)
        refreshes.append(Refresh(t, codec, data))
        state = prepare(data)
        if t not in sent:
            kp_t, jac_t = detect([frame])
            pos = int(np.searchsorted(sent, t))
            sent = np.insert(sent, pos, t)
            kps = np.insert(kps, pos, kp_t[0], axis=0)
            jacs = np.insert(jacs, pos, jac_t[0], axis=0)
            filled = None
    return refreshes, sent, kps, jacs, scores

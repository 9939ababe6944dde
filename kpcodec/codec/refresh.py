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


class RefreshStage:
    """The refresh choice made as sent frames come (`sent(i, kp, jac)` in order, `end(count)` at
    the end): each checked frame is rendered as the decoder will render it as soon as its
    keypoints are settled (at the next sent frame: the only look-ahead), with a mirror of the
    decoder's predictor (kpcodec.codec.predictors.Fill) on the dequantised sent keypoints. Both
    give what goes into the stream in order: ("source", Refresh) before its frame, ("sent", i, kp,
    jac). A refresh frame is a 2.0 keyframe (the predictor restarts there) and is made a sent frame
    (detected with `detect` if it was not one). Checked frames are dropped once checked."""

    def __init__(self, net, checks: CheckFrames, predictor: str, threshold: float = DEFAULT_THRESHOLD,
                 codec: str = source_image.DEFAULT_CODEC, quality: int = source_image.DEFAULT_QUALITY,
                 first_data: bytes | None = None, first_frame: np.ndarray | None = None,
                 kp_step: float = q.DEFAULT_KP_STEP, jac_step: float = q.DEFAULT_JAC_STEP):
        from kpcodec.codec.renderer import Detector, Renderer

        self.renderer, self.detect = Renderer(net), Detector(net)
        self.checks, self.threshold = checks, threshold
        self.codec, self.quality, self.steps = codec, quality, (kp_step, jac_step)
        if first_data is None:
            first_data = source_image.encode_image(first_frame, codec, quality)
        self.state = self._prepare(first_data)
        self.mirror = predict.Fill(predictor)
        self.refreshes: list[Refresh] = []
        self.scores: dict[int, float] = {}

    def _prepare(self, data: bytes):
        return self.renderer.prepare(source_image.decode_image(data, self.codec))

    def _decoded(self, kp, jac):
        return q.decoder_values(kp, self.steps[0], q.KP_CLIP), q.decoder_values(jac, self.steps[1], q.JAC_CLIP)

    def sent(self, i: int, kp: np.ndarray, jac: np.ndarray, restart: bool = False) -> list[tuple]:
        """`restart`: i is a keypoint keyframe (the decoder's predictor restarts there)."""
        return self._advance(int(i), (kp, jac), restart)

    def end(self, frame_count: int) -> list[tuple]:
        return self._advance(frame_count, None)

    def _advance(self, i: int, sent, restart: bool = False) -> list[tuple]:
        """Settle the frames up to sent frame i (or, with `sent` None, up to the end at i), check
        those due, and hand on what goes into the stream."""
        first = self.mirror.next
        before = self.mirror.copy()
        if sent is not None:
            filled = self.mirror.sent(i, *self._decoded(*sent), restart)
        else:
            filled = self.mirror.end(i)
        for t in sorted(f for f in self.checks.frames if first <= f < first + len(filled)):
            frame = self.checks.frames.pop(t)
            kp, jac = filled[t - first]
            rendered = self.renderer.render(self.state, kp[None], jac[None])[0]
            self.scores[t] = metrics.ssim(rendered, frame)
            if self.scores[t] >= self.threshold:
                continue
            data = source_image.encode_image(frame, self.codec, self.quality)
            refresh = Refresh(t, self.codec, data)
            self.refreshes.append(refresh)
            self.state = self._prepare(data)
            self.mirror = before
            if sent is not None and t == i:
                return [("source", refresh)] + self._advance(i, sent, restart=True)
            kp_t, jac_t = self.detect([frame])
            out = [("source", refresh)] + self._advance(t, (kp_t[0], jac_t[0]), restart=True)
            return out + self._advance(i, sent)
        return [("sent", i, *sent)] if sent is not None else []


def choose_refreshes(net, first_frame: np.ndarray, checks: CheckFrames, sent: np.ndarray,
                     kps: np.ndarray, jacs: np.ndarray, frame_count: int, predictor: str,
                     threshold: float = DEFAULT_THRESHOLD, codec: str = source_image.DEFAULT_CODEC,
                     quality: int = source_image.DEFAULT_QUALITY, first_data: bytes | None = None,
                     kp_step: float = q.DEFAULT_KP_STEP, jac_step: float = q.DEFAULT_JAC_STEP):
    """A :class:`RefreshStage` over a whole clip's sent frames; returns (refreshes, sent, kps,
    jacs, scores), with `scores` the SSIM of each checked frame's render."""
    stage = RefreshStage(net, checks, predictor, threshold, codec, quality, first_data, first_frame, kp_step, jac_step)
    items = [x for s, i in enumerate(np.asarray(sent).tolist()) for x in stage.sent(i, kps[s], jacs[s])]
    items += stage.end(frame_count)
    out = [x for x in items if x[0] == "sent"]
    return (stage.refreshes, np.array([x[1] for x in out], np.int64), np.stack([x[2] for x in out]),
            np.stack([x[3] for x in out]), stage.scores)

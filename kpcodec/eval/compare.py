"""Rate-quality comparison of kpcodec against H.264, H.265 and AV1 on one clip.

:func:`compare` reads the clip once, exactly as ``kpcodec encode`` does (centre square or
``crop``, scaled to the model's resolution), and gives those same frames to every codec:

* kpcodec at each keep-every: those frames pushed into the encoder (kpcodec.codec.encoder, what
  ``encode`` runs), the .kpc decoded to MP4 by :func:`kpcodec.api.decode` on temp files, as a user
  would, and that MP4 scored;
* each classic codec over a CRF sweep, coded in memory (:mod:`kpcodec.eval.classic`).

Every decoded frame is scored against its original: PSNR, SSIM, MS-SSIM
(:mod:`kpcodec.eval.metrics`) and, with mediapipe, the face-mesh landmark error in pixels at
256x256 (frames of other sizes are resized to 256 for detection), the share of frames with
a face found in both, and the lip-gap correlation (:mod:`kpcodec.eval.landmarks`).

Rates are kb/s over the clip's duration (frames / fps): ``kbps`` counts every coded byte
(for kpcodec the whole .kpc file, for classic codecs the whole elementary stream, see
:mod:`kpcodec.eval.classic`); ``steady_kbps`` leaves out the first frame's cost (kpcodec: the
SRCF source-image chunk; classic codecs: the first packet, the key frame with headers).

The headline (:func:`headline`) answers "how many times kpcodec's rate would H.264 (AV1,
H.265) need for the same quality?", per keep-every, for SSIM and for landmark error,
BD-rate style: interpolated on the classic codec's curve, log-rate linear in quality. When
the curves do not overlap it says so and where each one ends, instead of extrapolating.

Nothing here prints; the CLI and :mod:`kpcodec.eval.report` render a :class:`CompareResult`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import islice

import av
import numpy as np
from PIL import Image

from kpcodec.eval import classic, metrics

from kpcodec.media import video
from kpcodec.errors import KpcodecError, UsageError, VideoError

__all__ = ["ALL_CODECS", "DEFAULT_KEEP_EVERY", "LANDMARK_SIZE", "Row", "Headline", "CompareResult",
           "compare", "headline", "rate_at_quality", "decoded_frames", "parse_codecs", "parse_ints"]

ALL_CODECS = ("kpcodec", "x264", "x265", "av1")
# Also runnable (--codecs): kpcodec's hybrid mode at several --bitrate targets (its RD curve),
# and the baseline a user picks below a codec's floor: the clip at low resolution, upscaled.
KPCODEC_CODECS = ("kpcodec", "kpcodec-hybrid")
LOW_RES_CODECS = {"av1-low": "av1", "x264-low": "x264"}
KNOWN_CODECS = ALL_CODECS + ("kpcodec-hybrid",) + tuple(LOW_RES_CODECS)
DEFAULT_KEEP_EVERY = (1, 2, 4)
DEFAULT_HYBRID_KBPS = (3.0, 4.0, 6.0, 8.0, 12.0)
DEFAULT_LOW_RES = (classic.LowRes(64, 3), classic.LowRes(96, 3), classic.LowRes(128, 3))
DEFAULT_LOW_CRFS = {"av1-low": (63, 55), "x264-low": (51, 45)}
LANDMARK_SIZE = 256  # landmarks are detected, and their error measured, at this resolution
HEADLINE_METRICS = ("ssim", "landmark_px")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "ms_ssim": True, "landmark_px": False}

Progress = Callable[[int, int | None], None]


@dataclass
class Row:
    """One codec at one setting: rates, mean scores, timings (and per-frame scores)."""

    codec: str  # "kpcodec", "kpcodec-hybrid", "x264", "x265", "av1", "av1-low", "x264-low"
    param: float  # keep-every for kpcodec, target kb/s for its hybrid mode, CRF for classic codecs
    frames: int
    duration_s: float
    bytes: int  # everything coded
    first_bytes: int  # the first (source / key) frame's share of `bytes`
    psnr: float | None = None
    ssim: float | None = None
    ms_ssim: float | None = None
    landmark_px: float | None = None
    face_found: float | None = None  # share of frames with a face in both original and decoded
    lip_corr: float | None = None
    encode_s: float = 0.0
    decode_s: float = 0.0
    per_frame: dict[str, list] = field(default_factory=dict, repr=False)
    # What decoded_frames() needs to rebuild the decoded frames (not serialised).
    payload: object = field(default=None, repr=False)
    variant: str = ""  # what else the setting was: the base layer chosen, the low resolution

    @property
    def setting(self) -> str:
        return setting_label(self.codec, self.param, self.variant)

    @property
    def steady_bytes(self) -> int:
        return self.bytes - self.first_bytes

    @property
    def kbps(self) -> float:
        return self.bytes * 8 / self.duration_s / 1000 if self.duration_s > 0 else 0.0

    @property
    def steady_kbps(self) -> float:
        return self.steady_bytes * 8 / self.duration_s / 1000 if self.duration_s > 0 else 0.0

    @property
    def encode_fps(self) -> float | None:
        return self.frames / self.encode_s if self.encode_s > 0 else None

    @property
    def decode_fps(self) -> float | None:
        return self.frames / self.decode_s if self.decode_s > 0 else None

    def to_dict(self, per_frame: bool = True) -> dict:
        d = {
            "codec": self.codec, "setting": self.setting, "param": self.param, "frames": self.frames,
            "duration_s": self.duration_s, "bytes": self.bytes, "first_bytes": self.first_bytes,
            "steady_bytes": self.steady_bytes, "kbps": self.kbps, "steady_kbps": self.steady_kbps,
            "psnr": self.psnr, "ssim": self.ssim, "ms_ssim": self.ms_ssim, "landmark_px": self.landmark_px,
            "face_found": self.face_found, "lip_corr": self.lip_corr, "encode_s": self.encode_s,
            "decode_s": self.decode_s, "encode_fps": self.encode_fps, "decode_fps": self.decode_fps,
            "variant": self.variant,
        }
        if per_frame:
            d["per_frame"] = self.per_frame
        return _finite(d)


def setting_label(codec: str, param, variant: str = "") -> str:
    """How a row's setting reads: k=2; 6k (96@3:58) or k=2 96@3:63 (hybrid); 96px@3 crf 63."""
    if codec == "kpcodec":
        return f"k={param}"
    if codec == "kpcodec-hybrid":
        if variant.startswith("k="):
            return variant
        return f"{param:g}k" + (f" ({variant})" if variant else "")
    return (f"{variant} " if variant else "") + f"crf {param}"


@dataclass
class Headline:
    """kpcodec at one keep-every against one classic codec, for one metric and rate."""

    metric: str  # "ssim" or "landmark_px"
    rate: str  # "total" or "steady"
    codec: str  # the classic codec
    keep_every: int
    kp_kbps: float
    kp_value: float
    # "ratio": interpolated; "no-overlap": the classic codec cannot go as low in rate and is
    # better at its floor; "classic-wins": a classic point is both cheaper and better;
    # "above-sweep": kpcodec is better than the classic codec's best point in the sweep.
    verdict: str
    ratio: float | None  # classic kb/s at kpcodec's quality / kpcodec's kb/s
    bound: str | None  # None: `ratio` is a value; "<=" / ">=": it is only a bound
    classic_kbps: float  # interpolated rate, or the end point of the classic curve
    classic_value: float | None  # the end point's quality (None when interpolated)
    classic_setting: str | None
    text: str  # the whole sentence
    detail: str = ""  # the sentence without its kpcodec lead-in, for grouped reports
    kp_setting: str = ""  # the kpcodec row's setting ("k=2", "6k (96@3:63)")

    def to_dict(self) -> dict:
        return _finite(dict(self.__dict__))


@dataclass
class CompareResult:
    input: str
    model: str
    size: int
    fps: Fraction
    frames: int
    duration_s: float
    rows: list[Row]
    headline: list[Headline]  # total rates, then steady rates
    notes: list[str]
    landmarks: bool
    seconds: float
    kpcodec: dict = field(default_factory=dict)  # from the .kpc header: model, weights_sha256, predictor
    originals: list[np.ndarray] = field(default_factory=list, repr=False)
    bd_rate: list[dict] = field(default_factory=list)  # bd_rates(rows)

    def rows_for(self, codec: str) -> list[Row]:
        return [r for r in self.rows if r.codec == codec]

    def to_dict(self, per_frame: bool = True) -> dict:
        return {
            "input": self.input, "model": self.model, "size": self.size, "fps": str(self.fps),
            "frames": self.frames, "duration_s": self.duration_s, "landmarks": self.landmarks,
            "landmark_size": LANDMARK_SIZE, "seconds": self.seconds, "notes": list(self.notes),
            "kpcodec": dict(self.kpcodec),
            "rows": [r.to_dict(per_frame) for r in self.rows],
            "headline": [h.to_dict() for h in self.headline],
            "bd_rate": [_finite(dict(b)) for b in self.bd_rate],
        }


def _finite(d: dict) -> dict:
    """inf/NaN -> None, so that the dict is valid JSON (a lossless frame has PSNR inf)."""
    def fix(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return {k: fix(v) for k, v in d.items()}


# --------------------------------------------------------------------------- argument parsing


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """"1,2,4" -> (1, 2, 4); UsageError naming `what` otherwise."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what} takes comma-separated integers (got {text!r})") from None
    if not values:
        raise UsageError(f"{what} is empty")
    return values


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v.strip().lower().rstrip("k")) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what}: expected comma-separated numbers (got {text!r})") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise UsageError(f"{what}: expected positive numbers (got {text!r})")
    return values


def parse_codecs(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
    aliases = {"h264": "x264", "h265": "x265", "hevc": "x265", "svt-av1": "av1", "svtav1": "av1", "kpc": "kpcodec"}
    names = tuple(dict.fromkeys(aliases.get(n, n) for n in names))
    unknown = [n for n in names if n not in KNOWN_CODECS]
    if unknown or not names:
        raise UsageError(f"--codecs: unknown {', '.join(unknown) or 'empty list'} "
                         f"(choose from {', '.join(KNOWN_CODECS)})")
    return names


def parse_low_res(text: str) -> tuple[classic.LowRes, ...]:
    """'64@3,96@3,128' -> LowRes sizes and frame-rate divisors."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        size, _, div = part.partition("@")
        try:
            low = classic.LowRes(int(size), int(div) if div else 1)
        except ValueError:
            raise UsageError(f"--low-res {part!r}: expected SIZE[@DIV], e.g. 96@3") from None
        if low.size < 16 or low.size % 2 or not 1 <= low.divisor <= 30:
            raise UsageError(f"--low-res {part!r}: size must be even and >= 16, divisor 1..30")
        out.append(low)
    if not out:
        raise UsageError("--low-res: empty list")
    return tuple(out)


# --------------------------------------------------------------------------- scoring


def _at_landmark_size(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if (h, w) == (LANDMARK_SIZE, LANDMARK_SIZE):
        return frame
    img = Image.fromarray(frame).resize((LANDMARK_SIZE, LANDMARK_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(img)


def _detect_all(frames: Sequence[np.ndarray], tick: Callable[[], None],
                near: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray | None]:
    """Face-mesh landmarks of every frame's main face, one tracker per sequence (video mode): the
    largest face, or for decoded frames the one nearest the original's (`near`, frame by frame)."""
    from kpcodec.eval.landmarks import detect_video

    def sized():
        for f in frames:
            yield _at_landmark_size(f)
            tick()

    return detect_video(sized(), near)


def _score(row: Row, originals: Sequence[np.ndarray], decoded: Sequence[np.ndarray],
           original_marks: list | None, tick: Callable[[], None]) -> None:
    """Fill `row`'s scores from decoded frames (same count as originals)."""
    if len(decoded) != len(originals):
        raise VideoError(f"{row.codec} {row.setting}: decoded {len(decoded)} frames, expected {len(originals)}")
    scores = metrics.FrameScores()
    for a, b in zip(originals, decoded):
        scores.add(a, b)
        if original_marks is None:
            tick()
    mean = scores.mean()
    row.psnr, row.ssim, row.ms_ssim = mean["psnr"], mean["ssim"], mean["ms_ssim"]
    per = scores.per_frame
    row.per_frame = {"psnr": per["psnr"], "ssim": per["ssim"], "ms_ssim": per["ms_ssim"]}
    if original_marks is None:
        return
    from kpcodec.eval.landmarks import fidelity_from_landmarks, landmark_error

    marks = _detect_all(decoded, tick, near=original_marks)
    fid = fidelity_from_landmarks(original_marks, marks)
    row.landmark_px, row.face_found, row.lip_corr = (fid["landmark_error_px"], fid["face_found_share"],
                                                     fid["lip_gap_corr"])
    row.per_frame["landmark_px"] = [landmark_error(a, b) if a is not None and b is not None else None
                                    for a, b in zip(original_marks, marks)]


# --------------------------------------------------------------------------- kpcodec rows


def write_lossless(path: str, frames: Sequence[np.ndarray], fps: Fraction) -> None:
    """FFV1 (lossless, always in FFmpeg) in Matroska: read_frames gives these exact frames back."""
    h, w = frames[0].shape[:2]
    try:
        with av.open(path, "w") as c:
            s = c.add_stream("ffv1", rate=fps)
            s.width, s.height, s.pix_fmt = w, h, "bgr0"
            s.codec_context.time_base = 1 / fps
            for i, f in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
                vf.pts, vf.time_base = i, 1 / fps
                for p in s.encode(vf):
                    c.mux(p)
            for p in s.encode(None):
                c.mux(p)
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"cannot write the temp input clip {path}: {e}") from e


def _kpcodec_row(frames: Sequence[np.ndarray], fps: Fraction, k, model: str | None, duration: float, n: int,
                 predictor: str | None = None, bitrate: float | None = None, base_layer: str | None = None):
    """kpcodec at keep-every `k`; in hybrid mode (`model` None: the default hybrid model) at target
    `bitrate` kb/s, or at keep-every `k` with the fixed `base_layer` settings. The frames go
    straight into the encoder (kpcodec.codec.encoder), and the .kpc's bytes through the decoder
    (kpcodec.codec.decoder): its RGB frames are scored, as every other codec's decoder output is.
    (Writing them to an MP4 first, H.264 CRF 18 in 4:2:0, cost 0.005 SSIM on two val clips: a
    second lossy generation the classic codecs' rows did not pay.)
    Returns (row, decoded frames, what the file names)."""
    from kpcodec import bitstream
    from kpcodec.codec.decoder import Decoder
    from kpcodec.codec.encoder import Encoder
    from kpcodec.options import EncodeOptions

    hybrid = bitrate is not None or base_layer is not None
    options = (EncodeOptions(bitrate=f"{bitrate:g}k", model=model, predictor=predictor) if bitrate is not None
               else EncodeOptions(keep_every=k, model=model, predictor=predictor, base_layer=base_layer))
    start = time.perf_counter()
    with Encoder(options, fps, len(frames)) as enc:
        packets = [p for frame in frames for p in enc.push(frame)]
        data = bitstream.packets.join(packets + enc.flush())
    encode_s = time.perf_counter() - start
    base_label = enc.base_stream.label if enc.base_stream else None
    srcf = sum(size for kind, size in bitstream.chunk_table(data) if kind == "SRCF")
    stream = bitstream.loads(data)
    h = stream.header
    start = time.perf_counter()
    decoded = list(Decoder(stream).frames())
    decode_s = time.perf_counter() - start
    variant = "" if not hybrid else (base_label or "keypoints only")
    if bitrate is not None and enc.source_quality is not None:  # the rate control's choice, the source's quality with it
        variant = f"{variant}, source q{enc.source_quality}"
    if base_layer is not None:
        variant = f"k={k} {variant}"
    row = Row("kpcodec-hybrid" if hybrid else "kpcodec", bitrate if bitrate is not None else k, n, duration,
              len(data), srcf, encode_s=encode_s, decode_s=decode_s, payload=("kpc", data),
              variant=variant)
    return row, decoded, {"model": h.model, "weights_sha256": h.weights_sha256, "predictor": h.predictor}


# --------------------------------------------------------------------------- headline


def rate_at_quality(points: Iterable[tuple[float, float]], quality: float, higher_is_better: bool = True):
    """Where `quality` falls on a rate-quality curve.

    ``points`` are (kb/s, quality) pairs. The curve used is their lower-rate frontier:
    sorted by rate, keeping each point that is better than every cheaper one (a CRF sweep is
    nearly monotonic; this drops the odd point that costs more and scores no better).
    Returns ``(where, kbps, index, frontier)``, ``frontier`` being that list of
    (kb/s, quality) and ``index`` the frontier point that ``kbps`` is:

    * ("inside", interpolated kb/s, None, ...): log-rate interpolated linearly in quality
      between the two frontier points around `quality`, as in BD-rate;
    * ("below", floor kb/s, 0, ...): `quality` is worse than the cheapest point's;
    * ("above", top kb/s, last index, ...): `quality` is better than the best point's;
    * (None, None, None, []) for an empty curve.
    """
    sign = 1.0 if higher_is_better else -1.0
    pts = sorted((float(r), float(q)) for r, q in points if r > 0 and q is not None and math.isfinite(q))
    frontier: list[tuple[float, float]] = []
    for r, q in pts:
        if not frontier or sign * q > sign * frontier[-1][1]:
            frontier.append((r, q))
    if not frontier:
        return None, None, None, frontier
    qs = np.array([sign * q for _, q in frontier])
    logr = np.log([r for r, _ in frontier])
    target = sign * quality
    if target < qs[0]:
        return "below", frontier[0][0], 0, frontier
    if target > qs[-1]:
        return "above", frontier[-1][0], len(frontier) - 1, frontier
    return "inside", float(np.exp(np.interp(target, qs, logr))), None, frontier


def format_value(metric: str, v: float) -> str:
    return f"{v:.2f} px" if metric == "landmark_px" else f"{v:.3f}"


def metric_name(metric: str) -> str:
    return {"ssim": "SSIM", "landmark_px": "landmark error", "psnr": "PSNR", "ms_ssim": "MS-SSIM"}[metric]


def format_kb(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _times(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x"


def _headline_item(metric: str, rate: str, codec: str, kp_row, classic_rows) -> Headline | None:
    def rate_of(r):
        return r.kbps if rate == "total" else r.steady_kbps

    kp_value = getattr(kp_row, metric)
    if kp_value is None or not math.isfinite(kp_value):
        return None
    if kp_row.codec not in KPCODEC_CODECS:
        raise ValueError("headline items compare a kpcodec row")
    pts = [(rate_of(r), getattr(r, metric)) for r in classic_rows]
    better = HIGHER_IS_BETTER[metric]
    where, kbps, idx, frontier = rate_at_quality(pts, kp_value, better)
    if where is None:
        return None
    kp_kbps = rate_of(kp_row)
    name, mname = f"kpcodec {kp_row.setting}", metric_name(metric)
    steady = " steady-state" if rate == "steady" else ""
    lead = f"{mname}: {name} reaches {format_value(metric, kp_value)} at {format_kb(kp_kbps)}{steady} kb/s; "
    ratio = kbps / kp_kbps if kp_kbps > 0 else math.inf
    setting = end_value = None
    if where != "inside":
        end_rate, end_value = frontier[idx]
        setting = next(r.setting for r in classic_rows
                       if rate_of(r) == end_rate and getattr(r, metric) == end_value)
    if where == "inside":
        verdict, bound = "ratio", None
        if ratio >= 1:
            text = f"{codec} needs {format_kb(kbps)} kb/s for it: {_times(ratio)} kpcodec's rate"
        else:
            text = f"{codec} needs only {format_kb(kbps)} kb/s for it ({_times(ratio)} kpcodec's rate): {codec} wins"
    elif where == "below":
        bound = "<="
        if kbps <= kp_kbps:
            verdict = "classic-wins"
            text = (f"{codec} wins outright: its {setting} costs {format_kb(kbps)} kb/s, no more than kpcodec, and "
                    f"already has {mname} {format_value(metric, end_value)}, better than kpcodec's")
        else:
            verdict = "no-overlap"
            text = (f"{codec} never gets as low as {format_kb(kp_kbps)} kb/s: its floor is {format_kb(kbps)} kb/s "
                    f"({setting}) at {mname} {format_value(metric, end_value)}, better than kpcodec's "
                    f"{format_value(metric, kp_value)}; the curves do not overlap "
                    f"({codec} at kpcodec's quality would need at most {_times(ratio)} kpcodec's rate)")
    else:
        verdict, bound = "above-sweep", ">="
        text = (f"{codec}'s best point in the sweep ({setting}, {format_kb(kbps)} kb/s) only reaches "
                f"{format_value(metric, end_value)}: {codec} needs more than {format_kb(kbps)} kb/s "
                f"(> {_times(ratio)} kpcodec's rate)")
    return Headline(metric, rate, codec, kp_row.param, kp_kbps, kp_value, verdict,
                    ratio if math.isfinite(ratio) else None, bound, kbps,
                    None if where == "inside" else end_value, setting, lead + text, text, kp_row.setting)


def headline(rows: Sequence, *, metrics_: Sequence[str] = HEADLINE_METRICS,
             rates: Sequence[str] = ("total", "steady")) -> list[Headline]:
    """Headline items for every (rate, metric, classic codec, keep-every) with data.

    ``rows`` are :class:`Row` or anything with the same attributes (codec, param, setting,
    kbps, steady_kbps and the metric), e.g. curves averaged over several clips.
    """
    kp_rows = sorted((r for r in rows if r.codec in KPCODEC_CODECS), key=lambda r: (r.codec, r.param))
    classic_keys = [c for c in KNOWN_CODECS if c not in KPCODEC_CODECS and any(r.codec == c for r in rows)]
    items = []
    for rate in rates:
        for metric in metrics_:
            for kp in kp_rows:
                if metric == "landmark_px" and kp.landmark_px is None and kp.face_found is not None and classic_keys:
                    # Landmarks ran but never found a face in both: say so rather than stay silent.
                    detail = "no face found in its decoded frames, so no landmark error to compare"
                    items.append(Headline(metric, rate, "-", kp.param, kp.kbps if rate == "total" else kp.steady_kbps,
                                          math.nan, "no-face", None, None, math.nan, None, None,
                                          f"landmark error: kpcodec {kp.setting}: {detail}", detail, kp.setting))
                    continue
                for codec in classic_keys:
                    item = _headline_item(metric, rate, codec, kp, [r for r in rows if r.codec == codec])
                    if item is not None:
                        items.append(item)
    return items


def pareto_frontier(points: Iterable[tuple[float, float]], higher_is_better: bool) -> list[tuple[float, float]]:
    """(log rate, quality) of the points no other point beats at a lower rate, by rate."""
    out: list[tuple[float, float]] = []
    for rate, q in sorted(points):
        if rate <= 0 or q is None or not math.isfinite(q):
            continue
        qq = q if higher_is_better else -q
        if not out or qq > out[-1][1]:
            out.append((math.log(rate), qq))
    return out


def bd_rate(test: Iterable[tuple[float, float]], ref: Iterable[tuple[float, float]],
            higher_is_better: bool = True, samples: int = 64) -> dict | None:
    """Bjontegaard delta rate of curve `test` against `ref` ((kb/s, quality) points): the mean
    log-rate difference at equal quality over the qualities both reach, as a percentage of
    `ref`'s rate (-50: `test` needs half the bits). Piecewise-linear on each curve's frontier
    (no cubic fit: a few noisy points make a cubic swing). None when they do not overlap."""
    a, b = pareto_frontier(test, higher_is_better), pareto_frontier(ref, higher_is_better)
    if len(a) < 2 or len(b) < 2:
        return None
    lo, hi = max(a[0][1], b[0][1]), min(a[-1][1], b[-1][1])
    if hi <= lo:
        return None
    qs = np.linspace(lo, hi, samples)
    la = np.interp(qs, [q for _, q in a], [r for r, _ in a])
    lb = np.interp(qs, [q for _, q in b], [r for r, _ in b])
    sign = 1 if higher_is_better else -1
    return {"bd_rate_pct": float((math.exp(float(np.mean(la - lb))) - 1) * 100),
            "quality_range": [float(sign * lo), float(sign * hi)] if higher_is_better else [float(-hi), float(-lo)]}


def bd_rates(rows: Sequence) -> list[dict]:
    """BD-rate of each kpcodec curve (keep-every sweep, hybrid bitrates) against each classic one,
    on SSIM and landmark error; low-resolution rows pooled over their sizes into one curve."""
    out = []
    families = {c: [r for r in rows if r.codec == c] for c in dict.fromkeys(r.codec for r in rows)}
    for kp in KPCODEC_CODECS:
        for ref in KNOWN_CODECS:
            if ref in KPCODEC_CODECS or not families.get(kp) or not families.get(ref):
                continue
            for metric in HEADLINE_METRICS:
                res = bd_rate([(r.kbps, getattr(r, metric)) for r in families[kp]],
                              [(r.kbps, getattr(r, metric)) for r in families[ref]], HIGHER_IS_BETTER[metric])
                out.append({"codec": kp, "reference": ref, "metric": metric,
                            "bd_rate_pct": None if res is None else res["bd_rate_pct"],
                            "quality_range": None if res is None else res["quality_range"]})
    return out


# --------------------------------------------------------------------------- compare


def model_size(model: str | None) -> tuple[str, int]:
    from kpcodec.models.registry import DEFAULT_MODEL, get_config, get_weights

    name = model or DEFAULT_MODEL
    return name, get_config(get_weights(name).config).image_size


def landmarks_available() -> str | None:
    try:
        from kpcodec.eval.landmarks import face_mesh_module

        face_mesh_module()
        return None
    except KpcodecError as e:
        return f"landmark columns empty: {e}"


def compare(path, *, codecs: Sequence[str] = ALL_CODECS, keep_every: Sequence[int] = DEFAULT_KEEP_EVERY,
            crfs: dict[str, Sequence[int]] | None = None, model: str | None = None,
            crop: tuple[int, int, int, int] | None = None, max_frames: int | None = None,
            landmarks: bool = True, threads: int | None = 1, predictor: str | None = None,
            progress: Progress | None = None, hybrid_kbps: Sequence[float] = DEFAULT_HYBRID_KBPS,
            low_res: Sequence[classic.LowRes] = DEFAULT_LOW_RES,
            low_crfs: dict[str, Sequence[int]] | None = None,
            hybrid_settings: Sequence[tuple[int, str]] = ()) -> CompareResult:
    """Compare kpcodec with classic codecs on the video at `path`; see the module docstring.

    codecs: any of "kpcodec", "x264", "x265", "av1" (a classic codec missing from this
    PyAV build is skipped with a note). crfs: per classic codec, its CRF sweep (default
    :data:`kpcodec.eval.classic.CODECS`' ``default_crfs``). model: kpcodec model (default: the
    registry's); its resolution is every codec's. max_frames: only the first N frames.
    landmarks: False skips mediapipe (landmark columns empty). threads: encoder/decoder and
    torch threads for every codec, so that fps are comparable (None: each library's default).
    predictor: the kpcodec files' predictor for unsent frames (default: the decoder's default;
    e.g. "interp", which waits for the next sent frame: keep-every N - 1 frames of latency).
    "kpcodec-hybrid" runs kpcodec's hybrid mode (a base layer) at each of `hybrid_kbps` targets
    with the default hybrid model, and at each fixed (keep-every, base-layer settings) of
    `hybrid_settings`; "av1-low" / "x264-low" code the clip at each `low_res` size and
    frame-rate divisor at each of `low_crfs` (default DEFAULT_LOW_CRFS), upscaled back.
    """
    start = time.perf_counter()
    codecs = tuple(codecs)
    unknown = [c for c in codecs if c not in KNOWN_CODECS]
    if unknown or not codecs:
        raise UsageError(f"unknown codec {', '.join(unknown) or '(none)'} (choose from {', '.join(KNOWN_CODECS)})")
    hybrid_kbps = tuple(dict.fromkeys(float(b) for b in hybrid_kbps)) if "kpcodec-hybrid" in codecs else ()
    hybrid_settings = tuple(hybrid_settings) if "kpcodec-hybrid" in codecs else ()
    if "kpcodec-hybrid" in codecs:
        from kpcodec.media.baselayer import parse_settings
        from kpcodec.codec.ratecontrol import default_hybrid_model, parse_bitrate

        if not hybrid_kbps and not hybrid_settings:
            raise UsageError("--hybrid-bitrates: empty list")
        for k, text in hybrid_settings:
            parse_settings(text)
        for b in hybrid_kbps:
            parse_bitrate(f"{b:g}k")
        default_hybrid_model()  # UsageError now when none is shipped
    low_crfs = {key: tuple(low_crfs.get(key, DEFAULT_LOW_CRFS[key])) if low_crfs else DEFAULT_LOW_CRFS[key]
                for key in LOW_RES_CODECS if key in codecs}
    for key, values in low_crfs.items():
        lo, hi = classic.CODECS[LOW_RES_CODECS[key]].crf_range
        if not values or any(not lo <= v <= hi for v in values):
            raise UsageError(f"{key} CRFs must be in {lo}..{hi} (got {','.join(map(str, values)) or 'none'})")
    keep_every = tuple(dict.fromkeys(int(k) for k in keep_every))
    if "kpcodec" in codecs and (not keep_every or min(keep_every) < 1):
        raise UsageError(f"--keep-every values must be >= 1 (got {','.join(map(str, keep_every))})")
    if max_frames is not None and max_frames < 1:
        raise UsageError(f"--max-frames must be >= 1 (got {max_frames})")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1 (got {threads})")
    if predictor is not None:
        from kpcodec.codec import predictors as predict

        predictor = predict.get_predictor(predictor).name  # UsageError for an unknown name, before any work
    crfs = dict(crfs or {})
    for key, values in crfs.items():
        if key not in classic.CODECS:
            raise UsageError(f"CRFs given for unknown classic codec {key!r}")
        lo, hi = classic.CODECS[key].crf_range
        bad = [v for v in values if not lo <= v <= hi]
        if bad or not values:
            raise UsageError(f"{key} CRFs must be in {lo}..{hi} (got {','.join(map(str, values)) or 'none'})")

    notes: list[str] = []
    run_classic = []
    for key in codecs:
        if key in KPCODEC_CODECS:
            continue
        reason = classic.missing_reason(LOW_RES_CODECS.get(key, key))
        if reason:
            notes.append(reason)
        else:
            run_classic.append(key)
    model_name, size = model_size(model)
    if "kpcodec" in codecs or hybrid_kbps or hybrid_settings:
        from kpcodec.models.registry import load_model

        load_model(model_name)  # load (and sha256-check) once, before anything is timed
        if hybrid_kbps:
            load_model(default_hybrid_model())

    info = video.probe(path)
    fps = info.fps
    originals = list(islice(video.read_frames(path, size=size, crop=crop), max_frames))
    if not originals:
        raise VideoError(f"{path}: no frames decoded")
    n = len(originals)
    duration = n / float(fps)

    if landmarks:
        missing = landmarks_available()
        if missing:
            notes.append(missing)
            landmarks = False

    sweeps = {key: tuple(crfs.get(key, classic.CODECS[key].default_crfs)) for key in run_classic
              if key not in LOW_RES_CODECS}
    sweeps.update({key: tuple((low, crf) for low in low_res for crf in low_crfs[key])
                   for key in run_classic if key in LOW_RES_CODECS})
    n_rows = ((len(keep_every) if "kpcodec" in codecs else 0) + len(hybrid_kbps) + len(hybrid_settings)
              + sum(len(v) for v in sweeps.values()))
    total = n * (n_rows + (1 if landmarks else 0))
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress and (done % 5 == 0 or done == total):
            progress(done, total)

    if progress:
        progress(0, total)
    original_marks = _detect_all(originals, tick) if landmarks else None
    rows: list[Row] = []
    kpcodec_info: dict = {}

    if "kpcodec" in codecs or hybrid_kbps or hybrid_settings:
        torch = None
        old_threads = None
        if threads:
            import torch

            old_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
        try:
            _kpcodec_row(originals[:2], fps, 1, model_name, duration, 2)  # warm-up: first-call costs are not fps
            for k in keep_every if "kpcodec" in codecs else ():
                row, decoded, kpcodec_info = _kpcodec_row(originals, fps, k, model_name, duration, n, predictor)
                _score(row, originals, decoded, original_marks, tick)
                rows.append(row)
            hybrid_runs = [(2, b, None) for b in hybrid_kbps] + [(k, None, t) for k, t in hybrid_settings]
            for k, b, settings in hybrid_runs:
                row, decoded, info_h = _kpcodec_row(originals, fps, k, None, duration, n, predictor,
                                                    bitrate=b, base_layer=settings)
                kpcodec_info.setdefault("hybrid_model", info_h["model"])
                _score(row, originals, decoded, original_marks, tick)
                rows.append(row)
        finally:
            if torch is not None and old_threads:
                torch.set_num_threads(old_threads)

    for key in run_classic:
        for setting in sweeps[key]:
            if key in LOW_RES_CODECS:
                low, crf = setting
                coded, decoded, dec_s = classic.encode_low_res(originals, fps, LOW_RES_CODECS[key], crf, low,
                                                               threads=threads)
                payload, variant = ("frames", decoded), str(low)
            else:
                crf = setting
                coded = classic.encode_frames(originals, fps, key, crf, threads=threads)
                decoded, dec_s = classic.decode_packets(coded.packets, key, threads=threads)
                payload, variant = ("packets", coded.packets), ""
            row = Row(key, crf, n, duration, coded.bytes, coded.first_bytes, encode_s=coded.seconds,
                      decode_s=dec_s, payload=payload, variant=variant)
            _score(row, originals, decoded, original_marks, tick)
            rows.append(row)

    return CompareResult(str(path), model_name, size, fps, n, duration, rows, headline(rows), notes,
                         bool(landmarks), time.perf_counter() - start, kpcodec_info, originals, bd_rates(rows))


def decoded_frames(result: CompareResult, row: Row) -> list[np.ndarray]:
    """Rebuild a row's decoded frames (for side-by-side videos) from what the row kept."""
    kind, data = row.payload
    if kind == "frames":
        return list(data)
    if kind == "packets":
        frames, _ = classic.decode_packets(data, row.codec)
        return frames
    from kpcodec import bitstream
    from kpcodec.codec.decoder import Decoder

    return list(Decoder(bitstream.loads(data)).frames())  # a .kpc: decoded again (the same frames)

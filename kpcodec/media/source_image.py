"""Still-image coding of the one source frame a .kpc file carries.

The decoder animates a single source frame with the coded keypoints, so that
frame's bytes are a fixed cost per video.  This module turns a ``uint8`` RGB
array into bytes and back with Pillow: AVIF (default), WebP, PNG (lossless) or
JPEG.  Undecodable bytes raise :class:`~kpcodec.errors.KpcFormatError` with a
one-line message; an unknown codec or bad quality raises ``UsageError``.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from kpcodec.errors import KpcFormatError, KpcodecError, UsageError

__all__ = ["CODECS", "DEFAULT_CODEC", "DEFAULT_QUALITY", "available_codecs",
           "encode_image", "decode_image"]

CODECS = ("avif", "webp", "png", "jpeg")

# Measured on the first frame of 7 val talking-head clips at 256x256 (dagan,
# dreamtalk, lia_vox, liveportrait, tpsmm, two vox1), Pillow 13 (libavif 1.4.2,
# libwebp 1.6.0); bytes mean (min-max), SSIM mean (min), channel_axis=2, data_range=255:
#   webp q=50 method=6    2555 B (1976-2898)  SSIM 0.958 (0.951)
#   webp q=70 method=6    3132 B (2386-3538)  SSIM 0.967 (0.962)
#   webp q=80 method=6    3907 B (2868-4490)  SSIM 0.974 (0.971)
#   avif q=40 speed=4     2026 B (1651-2368)  SSIM 0.962 (0.958)
#   avif q=50 speed=4     2777 B (2173-3285)  SSIM 0.973 (0.970)   <- default
#   avif q=60 speed=4     3701 B (2832-4397)  SSIM 0.980 (0.977)
#   avif q=50 speed=6     2911 B (2292-3419)  SSIM 0.972 (0.969)
#   jpeg q=50 optimize    4566 B (3843-5084)  SSIM 0.966 (0.960)
#   png (lossless)        ~54 KB
# AVIF gives the same SSIM as WebP at ~30% fewer bytes (avif q50 ~ webp q80+ in
# quality at 2.8 KB vs 3.9 KB).  speed=4 costs ~0.3-0.4 s per encode on a busy
# 2-core box (speed 6: ~0.1 s, +5% bytes): paid once per video, so worth it.
# Decoding is ~5 ms.
# Re-measured with JPEG XL and x264/x265 intra frames, and the rendered video's SSIM per AVIF
# quality, in benchmarks/results/source_image.md: AVIF q50 is still the smallest at its quality.
DEFAULT_CODEC = "avif" if features.check("avif") else "webp"  # a Pillow without AVIF still works
DEFAULT_QUALITY = 50
_AVIF_SPEED = 4

_PIL_FORMAT = {"avif": "AVIF", "webp": "WEBP", "png": "PNG", "jpeg": "JPEG"}
_FEATURE = {"avif": "avif", "webp": "webp", "png": "zlib", "jpeg": "jpg"}
# A source frame is 256x256; anything vastly larger in a header is hostile or broken.
_MAX_PIXELS = 4096 * 4096


def available_codecs() -> dict[str, bool]:
    """Which of :data:`CODECS` this Pillow build can encode and decode."""
    return {c: bool(features.check(_FEATURE[c])) for c in CODECS}


def _check_codec(codec: str) -> str:
    if codec not in _PIL_FORMAT:
        raise UsageError(f"unknown image codec {codec!r} (choose from {', '.join(CODECS)})")
    return codec


def _require(codec: str, exc_type: type[Exception]) -> None:
    if not features.check(_FEATURE[codec]):
        raise exc_type(
            f"this Pillow ({Image.__version__}) cannot handle {codec} images"
            + (" (needs a Pillow built with libavif; recent wheels have it)"
               if codec == "avif" else "")
        )


def encode_image(img: np.ndarray, codec: str = DEFAULT_CODEC,
                 quality: int = DEFAULT_QUALITY) -> bytes:
    """Encode an HxWx3 uint8 RGB array; ``quality`` is 0..100 (ignored for png)."""
    _check_codec(codec)
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {arr.shape} {arr.dtype}")
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) \
            or not 0 <= quality <= 100:
        raise UsageError(f"image quality must be an integer 0..100, got {quality!r}")
    _require(codec, UsageError)
    pil = Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
    buf = io.BytesIO()
    q = int(quality)
    # No metadata (EXIF/ICC/XMP) is written: every byte counts at ~3 KB.
    if codec == "avif":
        pil.save(buf, format="AVIF", quality=q, speed=_AVIF_SPEED, subsampling="4:2:0")
    elif codec == "webp":
        pil.save(buf, format="WEBP", quality=q, method=6)  # method 6: smallest files
    elif codec == "jpeg":
        pil.save(buf, format="JPEG", quality=q, optimize=True)
    else:
        pil.save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def decode_image(data: bytes, codec: str) -> np.ndarray:
    """Decode bytes made by :func:`encode_image` back to an HxWx3 uint8 RGB array.

    Raises KpcFormatError if ``data`` is not a valid ``codec`` image.
    """
    if codec not in _PIL_FORMAT:
        raise KpcFormatError(f"source image: unknown image codec {codec!r}")
    _require(codec, KpcodecError)
    if not data:
        raise KpcFormatError(f"source image: empty {codec} data")
    try:
        # formats=[...] stops Pillow from sniffing other formats: the codec is part
        # of the file format, so e.g. PNG bytes labelled avif are an error.
        with Image.open(io.BytesIO(bytes(data)), formats=[_PIL_FORMAT[codec]]) as pil:
            w, h = pil.size
            if w <= 0 or h <= 0 or w * h > _MAX_PIXELS:
                raise KpcFormatError(f"source image: implausible size {w}x{h}")
            pil.load()
            out = np.asarray(pil.convert("RGB"))
    except KpcFormatError:
        raise
    except UnidentifiedImageError as e:  # its message embeds an object address
        raise KpcFormatError(f"source image: data is not a valid {codec} image") from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad data
        reason = " ".join(str(e).split()) or type(e).__name__
        raise KpcFormatError(f"source image: cannot decode {codec} data ({reason})") from e
    return np.ascontiguousarray(out, dtype=np.uint8)

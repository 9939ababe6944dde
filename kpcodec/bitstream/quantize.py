"""Keypoint quantisation and symbol packing for the .kpc container.

Holds the closed-loop predictive quantiser for FOMM keypoints and their 2x2
Jacobians: format 1.1's (:func:`quantize_closed_loop` / :func:`levels_from_residuals`,
with an integer in-loop predictor per quantity) and format 1.0's plain DPCM
(:func:`quantize_keypoints` / :func:`dequantize_keypoints`), and format 1.0's
lossless packing of integer symbols into bytes (:func:`pack_symbols` /
:func:`unpack_symbols`: zigzag, LEB128 varints, zstd). Format 1.1's entropy
coder is kpcodec.bitstream.entropy.

Only numpy and zstandard are used here: the decoder must run without torch.
"""

from __future__ import annotations

import numpy as np
import zstandard

from kpcodec.errors import KpcFormatError

# Format 1.0's steps (its writer always used these).
V1_0_KP_STEP = 1.0 / 256.0  # in [-1, 1] units: half a pixel at 256 px
V1_0_JAC_STEP = 1.0 / 64.0
# Format 1.1's defaults, chosen by the rendered video's SSIM against unquantised keypoints
# (benchmarks/results/bitrate.md): 1/64 is 2 px at 256 px (error <= 1 px).
DEFAULT_KP_STEP = 1.0 / 64.0
DEFAULT_JAC_STEP = 1.0 / 32.0

# In-loop predictors of format 1.1 (a u8 per quantity in the KPRC chunk). Integer
# arithmetic on the decoder's own levels, so encoder and decoder agree bit for bit.
PREVIOUS = 0  # the last reconstructed level
HALF_VELOCITY = 1  # last + round((last - one before) / 2): damped velocity
PREDICTORS = {PREVIOUS: "previous", HALF_VELOCITY: "half-velocity"}
# The writer's (keypoint, Jacobian) predictors per format, measured on the val split. 1.1 and
# 1.2: positions keep half their last velocity, Jacobians (which barely move coherently) their
# last value. 1.3: both their last value, because coder 1's intra-frame decorrelation already
# codes the motion the keypoints share; 4-5% fewer bits than half velocity with coder 1.
PREDICTORS_1_1 = (HALF_VELOCITY, PREVIOUS)
PREDICTORS_1_3 = (PREVIOUS, PREVIOUS)

KP_CLIP = 2.0  # keypoints live in [-1, 1]; leave room for points just outside
JAC_CLIP = 8.0  # a Jacobian entry beyond this is a model failure, not motion

# Steps below this would make levels too large for float32 reconstruction to
# re-quantise to the same integer (and would overflow varint/int32 ranges).
MIN_STEP = 2.0**-16

ZSTD_LEVEL = 19
_MAX_VARINT_BYTES = 5  # a zigzagged int32 needs at most 5 groups of 7 bits


# --------------------------------------------------------------------------
# Quantisation


def max_level(clip: float, step: float) -> int:
    """Largest |level| format 1.0's quantiser can emit for a clip range and step."""
    return int(np.rint(np.float64(clip) / np.float64(step)))


def max_level_rounded_up(clip: float, step: float) -> int:
    """Largest |level| format 1.1's quantiser (ties rounded up) can emit: floor(C/step + 1/2)."""
    return int(np.floor(np.float64(clip) / np.float64(step) + 0.5))


def _predict_level(previous_levels: np.ndarray | None, shape: tuple) -> np.ndarray:
    """Prediction of the next frame's levels from the decoder's reconstruction.

    Plain DPCM: the previous reconstructed frame (zero for the first frame).
    A better predictor replaces this function on both sides of the codec.
    """
    if previous_levels is None:
        return np.zeros(shape, dtype=np.int64)
    return previous_levels


def _quantize_dpcm(x: np.ndarray, step: float, clip: float) -> np.ndarray:
    """Closed-loop DPCM over axis 0 of ``x``; returns int32 residual symbols."""
    target = np.clip(np.asarray(x, dtype=np.float64), -clip, clip) / np.float64(step)
    residuals = np.empty(target.shape, dtype=np.int64)
    recon = None
    for s in range(target.shape[0]):
        pred = _predict_level(recon, target.shape[1:])
        residuals[s] = np.rint(target[s] - pred).astype(np.int64)
        recon = pred + residuals[s]  # exactly what the decoder will hold
    return residuals.astype(np.int32)


def reconstruct_levels(residuals: np.ndarray) -> np.ndarray:
    """Integer levels the decoder rebuilds from residual symbols (int64)."""
    residuals = np.asarray(residuals, dtype=np.int64)
    levels = np.empty(residuals.shape, dtype=np.int64)
    recon = None
    for s in range(residuals.shape[0]):
        recon = _predict_level(recon, residuals.shape[1:]) + residuals[s]
        levels[s] = recon
    return levels


def levels_to_values(levels: np.ndarray, step: float) -> np.ndarray:
    """Scale integer levels back to float32 values."""
    return (np.asarray(levels, dtype=np.float64) * np.float64(step)).astype(np.float32)


def predict_level(kind: int, last: np.ndarray | None, before: np.ndarray | None, shape: tuple) -> np.ndarray:
    """The in-loop prediction of the next levels from the decoder's last two (int64)."""
    if last is None:
        return np.zeros(shape, dtype=np.int64)
    if kind == PREVIOUS or before is None:
        return last
    if kind == HALF_VELOCITY:
        return last + np.floor_divide(last - before + 1, 2)  # half velocity, ties up
    raise ValueError(f"unknown in-loop predictor {kind}")


def quantize_closed_loop(x: np.ndarray, step: float, clip: float, kind: int) -> np.ndarray:
    """Residuals (int64, shaped like x) of closed-loop prediction over axis 0 of ``x``.

    ``x`` is clipped to [-clip, clip]; frame s is coded against ``predict_level`` of the
    decoder's reconstructed levels of frames s-1 and s-2, so each value is within step/2
    of its clipped input and errors never accumulate. The level is floor(x / step + 1/2)
    whatever the prediction (rounded first, then the integer prediction subtracted:
    subtracting in floating point could round a near-tie the other way).
    """
    target = np.clip(np.asarray(x, dtype=np.float64), -clip, clip) / np.float64(step)
    residuals = np.empty(target.shape, dtype=np.int64)
    last = before = None
    for s in range(target.shape[0]):
        pred = predict_level(kind, last, before, target.shape[1:])
        residuals[s] = np.floor(target[s] + 0.5).astype(np.int64) - pred
        last, before = pred + residuals[s], last  # exactly what the decoder will hold
    return residuals


def closed_loop_rows(kp: np.ndarray, jac: np.ndarray, kp_step: float, jac_step: float,
                     predictors: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Residual rows of the KPRC chunk for (S,K,2) keypoints and (S,K,2,2) Jacobians: keypoint
    rows (S, 2K) and Jacobian rows (S, 4K), with the (keypoint, Jacobian) in-loop predictors."""
    s = len(kp)
    return (quantize_closed_loop(kp, kp_step, KP_CLIP, predictors[0]).reshape(s, -1),
            quantize_closed_loop(jac, jac_step, JAC_CLIP, predictors[1]).reshape(s, -1))


def levels_from_residuals(residuals: np.ndarray, kind: int, limit: int, last: np.ndarray | None = None) -> np.ndarray:
    """The decoder's levels from residuals (after the levels `last` of the frame before, if any:
    a .kpc 2.0 packet that continues a keyframe's); ValueError as soon as one exceeds ``limit``.

    Checking frame by frame keeps hostile residuals from growing past int64.
    """
    residuals = np.asarray(residuals, dtype=np.int64)
    levels = np.empty(residuals.shape, dtype=np.int64)
    before = None
    for s in range(residuals.shape[0]):
        levels[s] = predict_level(kind, last, before, residuals.shape[1:]) + residuals[s]
        if levels[s].size and np.abs(levels[s]).max() > limit:
            raise ValueError(f"level beyond the clip range in sent frame {s}")
        last, before = levels[s], last
    return levels


def decoder_values(x: np.ndarray, step: float, clip: float) -> np.ndarray:
    """The float32 values a 1.1 decoder rebuilds for ``x`` (closed loop: the nearest levels)."""
    target = np.clip(np.asarray(x, dtype=np.float64), -clip, clip) / np.float64(step)
    return levels_to_values(np.floor(target + 0.5), step)


def _check_step(name: str, step: float) -> None:
    if not (isinstance(step, (int, float, np.floating)) and np.isfinite(step)
            and step >= MIN_STEP):
        raise ValueError(f"{name} must be finite and >= 2**-16, got {step!r}")


def check_keypoints(values, jacobians, kp_step: float, jac_step: float) -> tuple[np.ndarray, np.ndarray]:
    """Shapes (S,K,2) and (S,K,2,2), finite values, valid steps; ValueError otherwise."""
    values = np.asarray(values)
    jacobians = np.asarray(jacobians)
    if values.ndim != 3 or values.shape[2] != 2:
        raise ValueError(f"keypoints must have shape (S, K, 2), got {values.shape}")
    if jacobians.shape != values.shape + (2,):
        raise ValueError(
            f"jacobians must have shape {values.shape + (2,)}, got {jacobians.shape}"
        )
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(jacobians))):
        raise ValueError("keypoints or jacobians contain NaN or infinity")
    _check_step("kp_step", kp_step)
    _check_step("jac_step", jac_step)
    return values, jacobians


def quantize_keypoints(
    values: np.ndarray,
    jacobians: np.ndarray,
    kp_step: float = V1_0_KP_STEP,
    jac_step: float = V1_0_JAC_STEP,
) -> tuple[np.ndarray, np.ndarray]:
    """Format 1.0: quantise (S,K,2) keypoints and (S,K,2,2) Jacobians to residual symbols.

    Values are clipped to [-2, 2] and Jacobians to [-8, 8] first. Frame 0 is
    quantised directly; frame s is coded against the decoder's reconstruction
    of frame s-1, so the error stays within step/2 and never drifts.
    Returns int32 arrays shaped like the inputs.
    """
    values, jacobians = check_keypoints(values, jacobians, kp_step, jac_step)
    return _quantize_dpcm(values, kp_step, KP_CLIP), _quantize_dpcm(jacobians, jac_step, JAC_CLIP)


def dequantize_keypoints(
    q_values: np.ndarray,
    q_jac: np.ndarray,
    kp_step: float = V1_0_KP_STEP,
    jac_step: float = V1_0_JAC_STEP,
) -> tuple[np.ndarray, np.ndarray]:
    """Format 1.0: rebuild float32 keypoints and Jacobians from residual symbols."""
    values = levels_to_values(reconstruct_levels(q_values), kp_step)
    jacobians = levels_to_values(reconstruct_levels(q_jac), jac_step)
    return values, jacobians


# --------------------------------------------------------------------------
# Symbol packing


def _zigzag(v: np.ndarray) -> np.ndarray:
    """Map signed to unsigned so small magnitudes get small codes: 0,-1,1,-2.."""
    v = v.astype(np.int64)
    return ((v << 1) ^ (v >> 63)).astype(np.uint64)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    return (z >> np.uint64(1)).astype(np.int64) ^ -(z & np.uint64(1)).astype(np.int64)


def _varint_encode(z: np.ndarray) -> bytes:
    """LEB128: 7 bits per byte, low group first, high bit set on all but last."""
    nbytes = np.ones(z.shape, dtype=np.int64)
    for k in range(1, _MAX_VARINT_BYTES):
        nbytes += z >= np.uint64(1 << (7 * k))
    pos = np.arange(_MAX_VARINT_BYTES)
    groups = (z[:, None] >> (np.uint64(7) * pos.astype(np.uint64))) & np.uint64(0x7F)
    more = pos[None, :] < (nbytes[:, None] - 1)
    table = (groups | (more.astype(np.uint64) << np.uint64(7))).astype(np.uint8)
    return table[pos[None, :] < nbytes[:, None]].tobytes()


def _varint_decode(raw: bytes, count: int) -> np.ndarray:
    """Inverse of :func:`_varint_encode`; rejects anything it would not emit."""
    b = np.frombuffer(raw, dtype=np.uint8)
    last = b < 0x80
    ends = np.flatnonzero(last)
    if len(ends) != count or (count and ends[-1] != len(b) - 1):
        raise KpcFormatError(f"symbol stream holds the wrong number of symbols (want {count})")
    if count == 0:
        if len(b):
            raise KpcFormatError("symbol stream has trailing bytes")
        return np.zeros(0, dtype=np.uint64)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _MAX_VARINT_BYTES:
        raise KpcFormatError("symbol varint longer than 5 bytes")
    if np.any((lengths > 1) & (b[ends] == 0)):
        raise KpcFormatError("symbol varint is not minimally encoded")
    if np.any((lengths == _MAX_VARINT_BYTES) & (b[ends] > 0x0F)):
        raise KpcFormatError("symbol varint exceeds 32 bits")
    shift = (np.arange(len(b)) - np.repeat(starts, lengths)) * 7
    contrib = (b & 0x7F).astype(np.uint64) << shift.astype(np.uint64)
    return np.add.reduceat(contrib, starts)


def pack_symbols(arr: np.ndarray) -> bytes:
    """Pack int32-range integers: zigzag, LEB128 varints, then one zstd frame."""
    flat = np.asarray(arr).reshape(-1)
    if flat.size and (flat.min() < -(2**31) or flat.max() > 2**31 - 1):
        raise ValueError("symbols must fit in int32")
    raw = _varint_encode(_zigzag(flat))
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    return cctx.compress(raw)


def _decompress(data: bytes, limit: int) -> bytes:
    """Decompress one zstd frame of at most ``limit`` bytes, nothing after it."""
    try:
        size = zstandard.frame_content_size(data)
        if size > limit:  # refuse before allocating: a tiny frame can claim gigabytes
            raise KpcFormatError("packed symbols claim more bytes than possible")
        dctx = zstandard.ZstdDecompressor()
        return dctx.decompress(data, max_output_size=max(limit, 1), allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise KpcFormatError(f"packed symbols are not valid zstd ({exc})") from None


def unpack_symbols(data: bytes, count: int) -> np.ndarray:
    """Inverse of :func:`pack_symbols`; returns ``count`` int32 symbols.

    Any malformed input raises KpcFormatError.
    """
    raw = _decompress(bytes(data), count * _MAX_VARINT_BYTES)
    return _unzigzag(_varint_decode(raw, count)).astype(np.int32)

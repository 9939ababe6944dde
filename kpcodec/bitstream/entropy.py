"""Adaptive entropy coding of integer residuals (the KPRC chunk of .kpc format 1.1).

The residuals of the closed-loop quantiser (kpcodec.bitstream.quantize) go through one range coder
(the `constriction` package), frame by frame: for every frame, each stream's row of
residuals in order. Each residual v is zigzag mapped to z (0, -1, 1, -2, ... -> 0, 1, 2,
3, ...); z < ESCAPE is one symbol of an adaptive categorical model, larger z are the
ESCAPE symbol followed by the exponent e of (z - ESCAPE + 1) (its own adaptive model) and
its e low bits (uniform).

The model of a symbol is picked by its context: the stream, the magnitude of the same
scalar's residual in the previous frame, and the mean magnitude of the residuals already
coded in this frame's row (keypoints move together). Frame 0 has its own models (its
residuals are absolute levels). Every model is a table of integer counts, updated after
each symbol: deterministic on any machine, as encoder and decoder must be. The counts
start from a learned prior, one per KPRC coder id (entropy_prior.json for coder 0 and
entropy_prior_1.json for coder 1, whose symbols are kpcodec.bitstream.decorrelate's; both made from the
train split's residuals by kpcodec.train.entropy_prior), so short clips do not pay for
learning them.

Only numpy and constriction are used: no torch.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np

from kpcodec.errors import KpcFormatError

ESCAPE = 17  # zigzag values 0..16 are coded directly
EXPONENT_SIZE = 33  # escaped values need fewer than 2**33 (frame-index deltas < 2**32)
MAX_ABS = 2**32 - 1  # largest |residual| the coder carries
_BITS_PER_CALL = 16  # uniform low bits go in pieces: constriction's models hold < 2**24
INCREMENT = 16  # added to a symbol's count after it is coded (measured: 16 beats 24, 32)
COUNT_LIMIT = 1 << 13  # counts are halved when their sum passes this: recent data weighs more
PREV_CLASSES = 4  # |residual of the same scalar one frame back|: 0, 1, 2, 3+
ROW_CLASSES = 6  # 2 x mean |residual| so far in the row: 0..4+, and "first in the row"


def _constriction():
    import constriction

    return constriction


class _Counts:
    """One adaptive categorical model: integer counts, halved when they grow too large."""

    __slots__ = ("counts", "total", "seen")

    def __init__(self, size: int, initial=None, record: bool = False):
        self.counts = np.ones(size, dtype=np.int64) if initial is None else np.array(initial, dtype=np.int64)
        if self.counts.shape != (size,) or self.counts.min() < 1:
            raise ValueError("initial counts must be positive, one per symbol")
        self.total = int(self.counts.sum())
        self.seen = np.zeros(size, dtype=np.int64) if record else None  # for learning a prior

    def model(self):
        # Counts are exact in float64; constriction turns them into fixed-point
        # probabilities with integer arithmetic on those exact values.
        return _constriction().stream.model.Categorical(self.counts.astype(np.float64), perfect=False)

    def update(self, symbol: int) -> None:
        if self.seen is not None:
            self.seen[symbol] += 1
        self.counts[symbol] += INCREMENT
        self.total += INCREMENT
        if self.total > COUNT_LIMIT:
            self.counts = (self.counts + 1) // 2
            self.total = int(self.counts.sum())


PRIOR_FILES = {0: "entropy_prior.json", 1: "entropy_prior_1.json"}  # per KPRC coder id
_CONTEXTS = PREV_CLASSES * ROW_CLASSES


@lru_cache(maxsize=None)
def prior(coder: int = 0) -> list[dict]:
    """Initial counts per stream (frame-index deltas, keypoints, Jacobians), or [] if none."""
    path = resources.files("kpcodec.bitstream") / PRIOR_FILES[coder]
    if not path.is_file():
        return []
    return json.loads(path.read_text())["streams"]


class _StreamModels:
    """The models of one stream (e.g. keypoint residuals): per context, and for escapes."""

    def __init__(self, init: dict | None = None, record: bool = False):
        init = init or {}
        contexts = init.get("contexts") or [None] * _CONTEXTS
        self.first = _Counts(ESCAPE + 1, init.get("first"), record)
        self.contexts = [_Counts(ESCAPE + 1, c, record) for c in contexts]
        self.first_exponent = _Counts(EXPONENT_SIZE, init.get("first_exponent"), record)
        self.exponent = _Counts(EXPONENT_SIZE, init.get("exponent"), record)

    def statistics(self) -> dict:
        """Symbol counts seen while recording, in the layout of a prior's stream entry."""
        return {"first": self.first.seen.tolist(), "contexts": [c.seen.tolist() for c in self.contexts],
                "first_exponent": self.first_exponent.seen.tolist(), "exponent": self.exponent.seen.tolist()}

    def pick(self, frame: int, previous: int, row_sum: int, position: int) -> tuple[_Counts, _Counts]:
        if frame == 0:
            return self.first, self.first_exponent
        row = ROW_CLASSES - 1 if position == 0 else min(2 * row_sum // position, ROW_CLASSES - 2)
        return self.contexts[min(previous, PREV_CLASSES - 1) * ROW_CLASSES + row], self.exponent


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(z: int) -> int:
    return z >> 1 if z % 2 == 0 else -(z >> 1) - 1


class _Encoder:
    def __init__(self):
        self.coder = _constriction().stream.queue.RangeEncoder()

    def symbol(self, counts: _Counts, value: int) -> int:
        self.coder.encode(int(value), counts.model())
        return value

    def bits(self, n: int, value: int) -> int:
        for shift in range(0, n, _BITS_PER_CALL):
            width = min(_BITS_PER_CALL, n - shift)
            piece = (value >> shift) & ((1 << width) - 1)
            self.coder.encode(piece, _constriction().stream.model.Uniform(1 << width))
        return value


class _Decoder:
    def __init__(self, data: bytes):
        if len(data) % 4:
            raise KpcFormatError("range-coded data is not a whole number of 32-bit words")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self.coder = _constriction().stream.queue.RangeDecoder(words)

    def symbol(self, counts: _Counts, value=None) -> int:
        return int(self.coder.decode(counts.model()))

    def bits(self, n: int, value=None) -> int:
        out = 0
        for shift in range(0, n, _BITS_PER_CALL):
            width = min(_BITS_PER_CALL, n - shift)
            out |= int(self.coder.decode(_constriction().stream.model.Uniform(1 << width))) << shift
        return out


def _code_value(io, counts: _Counts, exponent: _Counts, value: int | None) -> int:
    """Code one residual (value is None when decoding); returns it."""
    z = None if value is None else _zigzag(value)
    s = io.symbol(counts, None if z is None else min(z, ESCAPE))
    counts.update(s)
    if s < ESCAPE:
        return _unzigzag(s)
    excess = None if z is None else z - ESCAPE + 1  # >= 1
    e = io.symbol(exponent, None if excess is None else excess.bit_length() - 1)
    exponent.update(e)
    low = io.bits(e, None if excess is None else excess - (1 << e)) if e else 0
    return _unzigzag((1 << e) + low + ESCAPE - 1)


class Context:
    """The adaptive models and each stream's last coded row: what carries from one coded group of
    frames to the next (a .kpc 2.0 keypoint packet to the next, until a keyframe restarts it).
    The first row coded in a context is a "first" row (absolute levels, their own models)."""

    def __init__(self, widths: list[int], coder: int = 0, models: list[_StreamModels] | None = None):
        if models is None:
            table = prior(coder)
            models = [_StreamModels(table[k] if k < len(table) else None) for k in range(len(widths))]
        self.widths, self.models, self.coder = list(widths), models, coder
        self.last: list[list[int]] | None = None  # the last row of each stream

    def walk(self, io, frames: int, streams: list[np.ndarray] | None) -> list[np.ndarray]:
        """Code (or, with streams None, decode) `frames` rows of every stream, frame by frame."""
        widths, models = self.widths, self.models
        given = [None if streams is None else streams[k].tolist() for k in range(len(widths))]
        out: list[list[list[int]]] = [[] for _ in widths]
        for s in range(frames):
            first = self.last is None
            for k, width in enumerate(widths):
                last = [0] * width if first else self.last[k]
                row, row_sum = [], 0
                for j in range(width):
                    counts, exponent = models[k].pick(0 if first else 1, abs(last[j]), row_sum, j)
                    v = _code_value(io, counts, exponent, None if given[k] is None else given[k][s][j])
                    row.append(v)
                    row_sum += abs(v)
                out[k].append(row)
            self.last = [rows[-1] for rows in out]
        return [np.array(rows, dtype=np.int64).reshape(frames, width) for rows, width in zip(out, widths)]


def _check_streams(streams: list[np.ndarray]) -> list[np.ndarray]:
    streams = [np.asarray(a, dtype=np.int64) for a in streams]
    frames = streams[0].shape[0]
    if any(a.ndim != 2 or a.shape[0] != frames for a in streams):
        raise ValueError("every stream must be shaped (frames, width)")
    if any(a.size and np.abs(a).max() > MAX_ABS for a in streams):
        raise ValueError(f"residuals must be within +-{MAX_ABS}")
    return streams


def encode_group(context: Context, streams: list[np.ndarray]) -> bytes:
    """Range-code integer arrays shaped (S, width_i), interleaved frame by frame, with `context`'s
    models (which learn from them); the coder is flushed at the end (whole 32-bit words)."""
    streams = _check_streams(streams)
    if [a.shape[1] for a in streams] != context.widths:
        raise ValueError(f"stream widths {[a.shape[1] for a in streams]} are not the context's {context.widths}")
    io = _Encoder()
    context.walk(io, streams[0].shape[0], streams)
    return io.coder.get_compressed().astype("<u4").tobytes()


def decode_group(context: Context, data: bytes, frames: int) -> list[np.ndarray]:
    """Inverse of :func:`encode_group`; malformed data raises KpcFormatError (the context is then
    spent: only a restart makes the next group decodable)."""
    try:
        io = _Decoder(bytes(data))
        out = context.walk(io, frames, None)
        exhausted = io.coder.maybe_exhausted()
    except KpcFormatError:
        raise
    except Exception as exc:  # constriction reports bad data as ValueError, AssertionError, ...
        raise KpcFormatError(f"range-coded data is invalid ({exc})") from None
    if not exhausted:
        raise KpcFormatError("range-coded data has trailing words")
    return out


def encode(streams: list[np.ndarray], coder: int = 0) -> bytes:
    """Range-code integer arrays shaped (S, width_i) in one group, with the models starting from
    KPRC coder ``coder``'s prior (a 1.x KPRC chunk)."""
    streams = _check_streams(streams)
    return encode_group(Context([a.shape[1] for a in streams], coder), streams)


def symbol_statistics(streams: list[np.ndarray]) -> list[dict]:
    """How often each model saw each symbol while coding ``streams`` (flat start, as if no
    prior): what kpcodec.train.entropy_prior sums over the train split."""
    streams = [np.asarray(a, dtype=np.int64) for a in streams]
    context = Context([a.shape[1] for a in streams], models=[_StreamModels(record=True) for _ in streams])
    context.walk(_Encoder(), streams[0].shape[0], streams)
    return [m.statistics() for m in context.models]


def decode(data: bytes, frames: int, widths: list[int], coder: int = 0) -> list[np.ndarray]:
    """Inverse of :func:`encode`; malformed data raises KpcFormatError."""
    return decode_group(Context(widths, coder), data, frames)

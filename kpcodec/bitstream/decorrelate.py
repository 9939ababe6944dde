"""Intra-frame decorrelation of keypoint residuals (KPRC coder 1, .kpc format 1.3).

The closed-loop residuals of one sent frame (kpcodec.bitstream.quantize: 2K keypoint values, then 4K
Jacobian entries) are far from independent: a head that moves carries every keypoint with
it, and a Jacobian changes with its keypoint. Coder 1 codes each residual minus a linear
prediction from the residuals of the same frame coded before it:

    symbol[j] = r[j] - floor((sum_{i<j} W[g][j, i] * r[i] + 2**(shift-1)) / 2**shift)

W[g] is a fixed lower-triangular table of integers for the frame's gap class g (the frame
index delta from the previous sent frame: 1, 2, 3 or more, since residuals over longer gaps
are larger and more of them is shared motion), learned by least squares on the train split
(kpcodec.train.decorrelation) and shipped as entropy_decorrelation.json. Integer arithmetic
only, so encoder and decoder agree bit for bit on any machine. The transform is lossless:
the quantised levels, and so the decoded video, are exactly those of coder 0; only the bits
change. Frame 0 (absolute levels, not residuals) is left as it is.

Only numpy and the standard library are used: no torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

TABLE_FILE = "entropy_decorrelation.json"
MAX_WEIGHT = 2**15  # |W| bound checked on load: keeps every sum far inside int64
MAX_RESIDUAL = 2**32 - 1  # larger reconstructed residuals only come from malformed data


GAP_CLASSES = 3  # frame index delta 1, 2, and 3 or more


@dataclass(frozen=True)
class Table:
    keypoints: int
    shift: int
    weights: np.ndarray  # (GAP_CLASSES, 6K, 6K) int64, each strictly lower-triangular

    @property
    def width(self) -> int:
        return self.weights.shape[1]


def gap_class(deltas: np.ndarray) -> np.ndarray:
    """Gap class of each sent frame from its frame index delta: 0, 1, 2 for 1, 2, >= 3."""
    return np.clip(np.asarray(deltas, dtype=np.int64), 1, GAP_CLASSES) - 1


def table_from_dict(d: dict) -> Table:
    """Validate a table's JSON form; ValueError names what is wrong."""
    k, shift = int(d["keypoints"]), int(d["shift"])
    w = np.asarray(d["weights"], dtype=np.int64)
    if k < 1 or not 1 <= shift <= 24 or w.shape != (GAP_CLASSES, 6 * k, 6 * k):
        raise ValueError(f"decorrelation weights must be ({GAP_CLASSES}, 6K, 6K) with a shift in 1..24, "
                         f"got {w.shape}, {shift}")
    if np.any(np.triu(w) != 0) or np.abs(w).max(initial=0) > MAX_WEIGHT:
        raise ValueError("decorrelation weights must be strictly lower-triangular and within 2**15")
    return Table(k, shift, w)


@lru_cache(maxsize=1)
def shipped_table() -> Table | None:
    """The table of coder 1, or None if the package has none."""
    path = resources.files("kpcodec.bitstream") / TABLE_FILE
    if not path.is_file():
        return None
    return table_from_dict(json.loads(path.read_text()))


def _prediction(r: np.ndarray, weights: np.ndarray, shift: int, j: int) -> np.ndarray:
    return np.floor_divide(r[:, :j] @ weights[j, :j] + (1 << (shift - 1)), 1 << shift)


def _groups(shape: tuple, deltas: np.ndarray, table: Table, first: bool = True):
    """Rows of each gap class, with that class's weights: frames 1..S-1, or with `first` False
    (a group that continues a keyframe's, .kpc 2.0) every frame."""
    if len(shape) != 2 or shape[1] != table.width:
        raise ValueError(f"rows must be shaped (S, {table.width}), got {shape}")
    deltas = np.asarray(deltas).reshape(-1)
    if len(deltas) != shape[0]:
        raise ValueError(f"one frame index delta per row: {len(deltas)} for {shape[0]} rows")
    classes = gap_class(deltas)
    for g in range(GAP_CLASSES):
        rows = np.flatnonzero(classes == g)
        if first:
            rows = rows[rows > 0]
        if len(rows):
            yield rows, table.weights[g]


def forward(residuals: np.ndarray, deltas: np.ndarray, table: Table, first: bool = True) -> np.ndarray:
    """Symbols to code for residuals shaped (S, 6K) of sent frames whose index deltas are
    ``deltas``: row 0 untouched when it is a `first` row (absolute levels), the others decorrelated."""
    r = np.asarray(residuals, dtype=np.int64)
    out = r.copy()
    for rows, weights in _groups(r.shape, deltas, table, first):
        part = r[rows]
        for j in range(1, table.width):
            out[rows, j] = part[:, j] - _prediction(part, weights, table.shift, j)
    return out


def forward_streams(r_kp: np.ndarray, r_jac: np.ndarray, deltas: np.ndarray,
                    table: Table, first: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """:func:`forward` of a KPRC chunk's keypoint (S, 2K) and Jacobian (S, 4K) rows, split back."""
    symbols = forward(np.concatenate([r_kp, r_jac], 1), deltas, table, first)
    return symbols[:, :r_kp.shape[1]], symbols[:, r_kp.shape[1]:]


def inverse(symbols: np.ndarray, deltas: np.ndarray, table: Table, first: bool = True) -> np.ndarray:
    """Residuals from decoded symbols; ValueError as soon as one leaves +-MAX_RESIDUAL."""
    s = np.asarray(symbols, dtype=np.int64)
    r = s.copy()
    for rows, weights in _groups(s.shape, deltas, table, first):
        part = s[rows]  # a copy, filled column by column, each from the ones before it
        for j in range(table.width):
            if j:
                part[:, j] += _prediction(part, weights, table.shift, j)
            if np.abs(part[:, j]).max() > MAX_RESIDUAL:
                raise ValueError("decorrelated residuals grow out of range")
        r[rows] = part
    return r

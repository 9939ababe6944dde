"""Intra-frame decorrelation of KPRC coder 1 (kpcodec.bitstream.decorrelate) and its frozen tables."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from kpcodec.bitstream import decorrelate, entropy

ROOT = Path(__file__).resolve().parents[1]


def test_tables_are_frozen():
    """Coder 1's decorrelation table and entropy prior are part of format 1.3: never change them."""
    digests = {decorrelate.TABLE_FILE: "b9cfea52874f8d3da81b46b57d37bff787a4b65466176220634f11c360c75c64", entropy.PRIOR_FILES[1]: "1970136b6c5ee836f4d820a07efedbba037010ab91db7944f11d01dccffd07e6"}
    for name, digest in digests.items():
        assert hashlib.sha256((ROOT / "kpcodec" / "bitstream" / name).read_bytes()).hexdigest() == digest, name
    table = decorrelate.shipped_table()
    assert table.keypoints == 10 and table.width == 60 and table.shift == 8
    assert len(entropy.prior(1)) == 3


def test_round_trip_is_exact():
    table = decorrelate.shipped_table()
    rng = np.random.default_rng(0)
    for r in (rng.integers(-300, 300, (40, 60)), rng.integers(-(2**31), 2**31, (5, 60)),
              np.zeros((1, 60), dtype=np.int64), np.zeros((0, 60), dtype=np.int64)):
        deltas = rng.integers(1, 6, len(r))
        symbols = decorrelate.forward(r, deltas, table)
        assert np.array_equal(symbols[:1], r[:1])  # frame 0 (absolute levels) is left alone
        assert np.array_equal(decorrelate.inverse(symbols, deltas, table), r)


def test_each_gap_class_has_its_weights():
    table = decorrelate.shipped_table()
    assert decorrelate.gap_class(np.array([0, 1, 2, 3, 13])).tolist() == [0, 0, 1, 2, 2]
    r = np.random.default_rng(2).integers(-20, 20, (2, 60))
    out = {d: decorrelate.forward(r, [0, d], table)[1].tolist() for d in (1, 2, 3, 4)}
    assert out[3] == out[4] and len({tuple(v) for v in out.values()}) == 3


def test_a_shared_motion_leaves_small_symbols():
    """Residuals that move together (a head shift) are mostly predicted from the ones before."""
    table = decorrelate.shipped_table()
    rng = np.random.default_rng(1)
    shift = rng.integers(-6, 7, (200, 1, 2))
    r = np.concatenate([np.broadcast_to(shift, (200, 10, 2)).reshape(200, 20),
                        np.zeros((200, 40), dtype=np.int64)], 1)
    symbols = decorrelate.forward(r, np.full(200, 2), table)
    assert np.abs(symbols[1:, 2:20]).mean() < 0.5 * np.abs(r[1:, 2:20]).mean()


def test_inverse_stops_growing_residuals():
    table = decorrelate.shipped_table()
    with pytest.raises(ValueError, match="out of range"):
        decorrelate.inverse(np.full((3, 60), 2**32 - 1), [0, 1, 1], table)
    with pytest.raises(ValueError, match="shaped"):
        decorrelate.forward(np.zeros((3, 59)), [0, 1, 1], table)
    with pytest.raises(ValueError, match="one frame index delta per row"):
        decorrelate.forward(np.zeros((3, 60)), [0, 1], table)


def test_table_validation():
    lower = np.stack([np.tril(np.ones((6, 6)), -1)] * 3).astype(int)
    good = {"keypoints": 1, "shift": 8, "weights": lower.tolist()}
    assert decorrelate.table_from_dict(good).width == 6
    for bad in ({**good, "weights": np.ones((3, 6, 6), int).tolist()},  # not strictly lower-triangular
                {**good, "weights": lower[:2].tolist()},  # a gap class missing
                {**good, "keypoints": 2},  # wrong size
                {**good, "shift": 0},
                {**good, "weights": (lower * 2**16).tolist()}):
        with pytest.raises(ValueError):
            decorrelate.table_from_dict(bad)

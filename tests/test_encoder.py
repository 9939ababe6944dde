"""The frame-by-frame encoder (kpcodec.codec.encoder.Encoder) that encode and compare run."""
from __future__ import annotations

import numpy as np
import pytest

from kpcodec import api, bitstream
from kpcodec.codec.encoder import Encoder
from kpcodec.codec.parallel import OrderedPool
from kpcodec.errors import UsageError
from kpcodec.media.video import probe, read_frames
from kpcodec.options import EncodeOptions


@pytest.mark.parametrize("fields", [{"keep_every": 2}, {"keep_every": "auto"}, {"keep_every": 3, "threads": 2},
                                    {"keep_pattern": "2:3", "batch": 3}])
def test_pushed_frames_make_the_file_encode_writes(clip, tmp_path, fields):
    options = EncodeOptions(model="tiny", **fields)
    api.encode(clip, tmp_path / "a.kpc", options)
    info = probe(clip)
    with Encoder(options, info.fps, info.frame_count) as enc:
        pushed = [enc.push(f) for f in read_frames(clip, size=enc.size)]
        data = bitstream.packets.join([p for ps in pushed for p in ps] + enc.flush())
    assert data == (tmp_path / "a.kpc").read_bytes()
    assert [p.kind for p in pushed[0]] == ["H", "S"]  # HEAD and SOURCE as soon as frame 0 is in
    assert bitstream.loads(data).header.frame_count == enc.frames == info.frame_count


def test_wrong_frames_and_no_frames_are_usage_errors():
    with Encoder(EncodeOptions(model="tiny"), 25) as enc:
        with pytest.raises(UsageError, match="uint8"):
            enc.push(np.zeros((enc.size + 1, enc.size, 3), np.uint8))
        with pytest.raises(UsageError, match="no frames"):
            enc.flush()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_ordered_pool_keeps_order_and_bounds_what_is_in_flight(workers):
    seen = []
    with OrderedPool(lambda x: x * x, workers) as pool:
        for i in range(20):
            seen += pool.submit(i)
            assert len(pool.pending) < 2 * max(workers, 1)
        seen += pool.drain()
    assert seen == [i * i for i in range(20)]


@pytest.mark.parametrize("threads", [None, 2])
def test_decoder_frames_are_what_decode_writes(clip, tmp_path, threads):
    from kpcodec.codec.decoder import Decoder
    from kpcodec.options import DecodeOptions

    api.encode(clip, tmp_path / "a.kpc", model="tiny", keep_every=3)
    api.decode(tmp_path / "a.kpc", tmp_path / "a.y4m", threads=threads)
    dec = Decoder(bitstream.read_file(tmp_path / "a.kpc"), DecodeOptions(threads=threads))
    written = list(read_frames(tmp_path / "a.y4m", size=dec.header.width))
    frames = list(dec.frames())
    assert dec.done == len(frames) == len(written) == 12
    # y4m holds 4:2:0, so the written frames are the decoder's up to chroma subsampling
    diffs = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, written)]
    assert max(diffs) < 4, diffs
    assert all(np.array_equal(a, b) for a, b in zip(frames, Decoder(bitstream.read_file(tmp_path / "a.kpc")).frames()))

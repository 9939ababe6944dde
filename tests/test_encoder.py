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



def test_late_frames_are_repeated_and_the_render_estimate_cannot_freeze_the_picture(clip, tmp_path):
    """Decoder.late repeats a late frame (counting the run); the first render (torch warming up) is
    left out of render_ms; live mode's policy (kpcodec.live.udp.late) renders a frame within the
    budget after MAX_REPEAT_RUN repeats whatever the render estimate says, never one late already."""
    from kpcodec.codec.decoder import Decoder
    from kpcodec.live.udp import MAX_REPEAT_RUN, late
    from kpcodec.options import DecodeOptions

    api.encode(clip, tmp_path / "a.kpc", model="tiny", keep_every=1)
    dec = Decoder(bitstream.read_file(tmp_path / "a.kpc"), DecodeOptions(threads=1, batch=1))
    dec.late = lambda t: late(50.0, 1000.0, dec.repeat_run, 120.0)  # an estimate far too high
    frames = list(dec.frames())
    assert len(frames) == 12
    rendered = [t for t in range(12) if t % (MAX_REPEAT_RUN + 1) == 0]  # 0 (nothing to repeat yet), 7
    assert dec.repeated == 12 - len(rendered)
    assert all(not np.array_equal(frames[t], frames[t - 1]) for t in rendered[1:])
    assert dec.render_ms is not None  # from the second render on
    assert late(130.0, 0.0, 100, 120.0) and not late(50.0, 60.0, 0, 120.0) and late(50.0, 80.0, 0, 120.0)
    one = Decoder(bitstream.read_file(tmp_path / "a.kpc"), DecodeOptions(threads=1, batch=1))
    one.late = lambda t: t > 0
    next(iter(one.frames()))
    assert one.render_ms is None  # one render: the warm-up, not counted

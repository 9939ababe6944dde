"""EncodeOptions / DecodeOptions: checked once, in one place, for the CLI and the library alike."""
from __future__ import annotations

import pytest

from kpcodec import api
from kpcodec.errors import UsageError
from kpcodec.options import DecodeOptions, EncodeOptions, parse_crop


def test_checked_fills_defaults_and_is_idempotent():
    o = EncodeOptions(keep_every="4", crop="1,2,30,40").checked()
    assert o.keep_every == 4 and o.crop == (1, 2, 30, 40) and o.refresh == "off" and o.predictor
    assert o.checked() == o
    auto = EncodeOptions(keep_every="auto", refresh="auto").checked()
    assert auto.max_error is not None and auto.refresh_threshold is not None and auto.checked() == auto


@pytest.mark.parametrize("fields, match", [
    ({"keep_every": "0"}, "--keep-every"),
    ({"keep_every": "auto", "keep_pattern": "2:2"}, "exclude"),
    ({"max_error": 2.0}, "--max-error needs"),
    ({"refresh_threshold": 0.4}, "--refresh-threshold needs"),
    ({"predictor": "nope"}, "unknown predictor"),
    ({"audio_bitrate": 1.0}, "--audio-bitrate"),
    ({"crop": "1,2,3"}, "--crop"),
    ({"threads": 0}, "--threads"),
    ({"keep_pattern": "x"}, "pattern"),
    ({"bitrate": "fast"}, "bitrate"),
])
def test_bad_options_are_usage_errors(fields, match):
    with pytest.raises(UsageError, match=match):
        EncodeOptions(**fields).checked()


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="keepevery"):
        EncodeOptions.of(keepevery=2)
    with pytest.raises(TypeError, match="bogus"):
        DecodeOptions.of(bogus=1)
    with pytest.raises(UsageError, match="--threads"):
        DecodeOptions(threads=999).checked()


def test_parse_crop_takes_text_or_tuple():
    assert parse_crop("0,0,8,8") == parse_crop((0, 0, 8, 8)) == (0, 0, 8, 8)
    assert parse_crop(None) is None


def test_options_object_and_keywords_encode_the_same(clip, tmp_path):
    a, b = tmp_path / "a.kpc", tmp_path / "b.kpc"
    api.encode(clip, a, EncodeOptions(keep_every=3, model="tiny"))
    api.encode(clip, b, model="tiny", keep_every=3)
    assert a.read_bytes() == b.read_bytes()
    api.decode(a, tmp_path / "a.y4m", DecodeOptions(predictor="hold"))
    api.decode(b, tmp_path / "b.y4m", predictor="hold")
    assert (tmp_path / "a.y4m").read_bytes() == (tmp_path / "b.y4m").read_bytes()

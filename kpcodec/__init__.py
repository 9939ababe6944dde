"""kpcodec: a keypoint video codec for talking-head and motion video.

Library API: `kpcodec.encode(input, output, options_or_fields)`, `kpcodec.decode(...)`,
`kpcodec.info(input)`, with `EncodeOptions` / `DecodeOptions` (kpcodec.options). torch is
imported only when a model is needed.
"""
from kpcodec.options import DecodeOptions, EncodeOptions

__version__ = "0.1.0"


def encode(*args, **kwargs):
    from kpcodec.api import encode as _encode

    return _encode(*args, **kwargs)


def decode(*args, **kwargs):
    from kpcodec.api import decode as _decode

    return _decode(*args, **kwargs)


def info(*args, **kwargs):
    from kpcodec.api import info as _info

    return _info(*args, **kwargs)


__all__ = ["encode", "decode", "info", "EncodeOptions", "DecodeOptions", "__version__"]

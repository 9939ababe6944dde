"""kpcodec: a keypoint video codec for talking-head and motion video.

Library API: `kpcodec.encode(input, output, options_or_fields)`, `kpcodec.decode(...)`,
`kpcodec.info(input)`, with `EncodeOptions` / `DecodeOptions` (kpcodec.options); the streaming
core as `kpcodec.Encoder` (frames in, packets out) and `kpcodec.Decoder` (packets in, frames out).
torch is imported only when a model is needed.
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


def __getattr__(name: str):
    """Encoder and Decoder load their module (and torch) only when first named."""
    if name == "Encoder":
        from kpcodec.codec.encoder import Encoder

        return Encoder
    if name == "Decoder":
        from kpcodec.codec.decoder import Decoder

        return Decoder
    raise AttributeError(f"module 'kpcodec' has no attribute {name!r}")


__all__ = ["encode", "decode", "info", "EncodeOptions", "DecodeOptions", "Encoder", "Decoder", "__version__"]

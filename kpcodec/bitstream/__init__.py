"""The .kpc bitstream, torch-free and PyAV-free: usable on its own to read, write or check a file.

container    format 1.x: magic, typed chunks with CRC, header, source image, keypoints, base layer
quantize     closed-loop keypoint quantiser and the zstd/varint symbol packing of KPTS
entropy      the adaptive context range coder of KPRC
decorrelate  the intra-frame decorrelation of KPRC coder 1
opus         Opus packets of the audio chunk

The names of `container` are re-exported here: `bitstream.loads(data)`, `bitstream.Header`.
"""
from kpcodec.bitstream.container import *  # noqa: F401,F403

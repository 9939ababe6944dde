"""The .kpc bitstream, torch-free and PyAV-free: usable on its own to read, write or check a file.

container    the in-memory stream, format 1.x (typed chunks with CRC), loads/dumps of every version, file I/O
packets      format 2.0: self-delimiting packets, written and read one at a time (PacketWriter, PacketReader)
quantize     closed-loop keypoint quantiser and the zstd/varint symbol packing of KPTS
entropy      the adaptive context range coder of KPRC
decorrelate  the intra-frame decorrelation of KPRC coder 1
opus         Opus packets of the audio chunk

The names of `container` are re-exported here: `bitstream.loads(data)`, `bitstream.Header`.
"""
from kpcodec.bitstream.container import *  # noqa: F401,F403
from kpcodec.bitstream import packets  # noqa: F401,E402

"""Live mode over UDP: `kpcodec send SOURCE udp://HOST:PORT` and `kpcodec receive udp://:PORT -o out.mp4`.

The sender plays its input at the input's own frame rate through the streaming Encoder (one sent
frame per keypoint packet) and sends each packet as it is made, in datagrams of at most 1,200
bytes (kpcodec.live.datagram), each keypoint datagram repeating the keypoint packet before it; it
repeats the HEAD every second and answers the receiver's feedback: a RESTART request makes the
next sent frame a keypoint keyframe, a KEYFRAME request also sends a new source image. The
receiver puts packets back in order, declares a packet lost when later ones keep coming without it
(GAP_PACKETS of them, or GAP_S seconds), then drops keypoint packets it cannot decode until a
restart comes, asking for one (at most every FEEDBACK_S); the Decoder fills the frames in between
with its causal predictor, so every frame is in the output. END datagrams (sent several times) or
--idle-timeout seconds of silence end it; the output file is finished either way.
"""
from __future__ import annotations

import math
import random
import select
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from kpcodec.bitstream import packets as pk
from kpcodec.bitstream.container import Header
from kpcodec.errors import KpcFormatError, KpcodecError, UsageError
from kpcodec.live import datagram as dg

GAP_PACKETS = 3  # later packets that declare a missing one lost
GAP_S = 0.2  # or this long without it
FEEDBACK_S = 0.1  # the most often a receiver asks for the same thing
HEAD_EVERY_S = 1.0  # the sender repeats the HEAD this often
HEAD_START_REPEATS = 2  # and with the first frames after it
END_REPEATS = 4  # 0.1 s apart: a 200-ms outage cannot take them all
END_SPACING_S = 0.1
END_GRACE_S = 0.5  # after END, how long a receiver waits for the packets still missing
MAX_LATE_MS = 120.0  # a frame later than this (capture to out, render included) is the last one again
MAX_REPEAT_RUN = 6  # but one within it is rendered after this many repeats in a row (see late())
# (receive - send) times of at least one datagram in this range, ms: the sender's clock is this
# machine's (or kept in step with it); otherwise latency is counted from the fastest datagram's
SAME_CLOCK_MS = (-50, 2000)
WAIT_S = 0.05  # the longest the receiver waits on its socket between looks at the clock
JOIN_S = 0.3  # a receiver with no HEAD or source image this long after the first datagram asks for a keyframe


def parse_url(url: str, listen: bool = False, scheme: str = "udp") -> tuple[str, int]:
    """(host, port) of SCHEME://HOST:PORT (SCHEME://:PORT to listen on every address)."""
    parts = urlsplit(url)
    if parts.scheme != scheme:
        raise UsageError(f"{url!r} is not a {scheme}://HOST:PORT address" +
                         (" (or webrtc://HOST:PORT)" if scheme == "udp" else ""))
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None or not 0 < port < 65536:
        raise UsageError(f"{url!r} has no port ({scheme}://HOST:PORT)")
    host = parts.hostname or ("" if listen else None)
    if host is None:
        raise UsageError(f"{url!r} has no host ({scheme}://HOST:PORT)")
    return host, port


def _now_ms() -> int:
    return int(time.monotonic() * 1000) & 0xFFFFFFFF


def _signed_ms(diff: int) -> int:
    """A difference of two 32-bit millisecond times, as a signed number."""
    diff &= 0xFFFFFFFF
    return diff if diff < 0x80000000 else diff - 0x100000000


@dataclass
class SendSummary:
    frames: int = 0
    seconds: float = 0.0
    datagrams: int = 0
    bytes: int = 0  # UDP payload bytes, datagram headers included
    restarts: int = 0  # keyframes sent on request
    keyframes: int = 0
    bad_feedback: int = 0

    @property
    def kbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1000 if self.seconds else 0.0


class Sender:
    """Packets of one stream to one UDP address (see the module's docstring)."""

    def __init__(self, url: str, redundancy: bool = True, sock=None):
        """`sock`: a connected datagram socket to use (tests hand in their own)."""
        if sock is None:
            host, port = parse_url(url)
            try:
                info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(info[0], socket.SOCK_DGRAM)
                sock.connect(info[4])
            except OSError as exc:
                raise KpcodecError(f"cannot send to {url}: {exc.strerror or exc}") from None
            sock.setblocking(False)
        self.sock = sock
        self.url, self.redundancy = url, redundancy
        self.stream = random.getrandbits(32)
        self.dseq = 0
        self.head: bytes | None = None
        self.last_head = 0.0
        self.heads_at_start = HEAD_START_REPEATS
        self.previous_k: pk.Packet | None = None
        self.capture_ms: int | None = None  # when the frame being sent was read
        self.summary = SendSummary()

    def _send(self, kind: int, body: bytes) -> None:
        # The time is when the frame the datagram is about was read (capture time): what a
        # receiver measures glass-to-glass latency against.
        raw = bytes(dg.Datagram(kind, self.stream, self.dseq, self.capture_ms or _now_ms(), body))
        self.dseq += 1
        try:
            self.sock.send(raw)
        except (ConnectionRefusedError, BlockingIOError):
            pass  # nobody listening yet, or a full buffer: UDP loses it, the receiver recovers
        except OSError as exc:
            raise KpcodecError(f"cannot send to {self.url}: {exc.strerror or exc}") from None
        self.summary.datagrams += 1
        self.summary.bytes += len(raw)

    def packets(self, packets: list[pk.Packet]) -> None:
        for p in packets:
            raw = bytes(p)
            if p.kind == "H":
                self.head = raw
                self.send_head()
                continue
            frags = dg.fragments(p.seq, raw)
            if p.kind == "K" and self.redundancy and self.previous_k is not None:
                extra = dg.encode_fragment(dg.fragments(self.previous_k.seq, bytes(self.previous_k))[0])
            else:
                extra = b""
            for f in frags:
                body = dg.encode_fragment(f)
                if extra and len(body) + len(extra) <= dg.MAX_DATAGRAM - dg.OVERHEAD:
                    body, extra = body + extra, b""
                self._send(dg.DATA, body)
                if p.kind == "S":  # a source image is too costly to lose: each fragment twice
                    self._send(dg.DATA, dg.encode_fragment(f))
            if p.kind == "K":
                self.previous_k = p
        if self.head is not None and (self.heads_at_start > 0 or time.monotonic() - self.last_head > HEAD_EVERY_S):
            self.heads_at_start -= 1
            self.send_head()

    def send_head(self) -> None:
        if self.head is not None:
            self._send(dg.HEAD, self.head)
            self.last_head = time.monotonic()

    def feedback(self) -> list[int]:
        """The requests the receiver has sent since the last call (RESTART, KEYFRAME)."""
        out = []
        while True:
            try:
                raw = self.sock.recv(dg.MAX_DATAGRAM + 1)
            except (BlockingIOError, ConnectionRefusedError):
                return out
            except OSError:
                return out
            try:
                d = dg.parse(raw)
                if d.kind != dg.FEEDBACK or d.stream != self.stream:
                    raise KpcFormatError("not feedback for this stream")
                out.append(dg.parse_feedback(d.body)[0])
            except KpcFormatError:
                self.summary.bad_feedback += 1

    def audio(self, body: bytes) -> None:
        self._send(dg.AUDIO, body)

    def end(self, last_seq: int, frame_count: int) -> None:
        for n in range(END_REPEATS):
            if n:
                time.sleep(END_SPACING_S)
            self._send(dg.END, dg.end_body(last_seq, frame_count))

    def close(self) -> None:
        self.sock.close()


class LiveAudio:
    """A file's Opus packets handed out when their time comes (`due(until_s, loop_s)`: the packets
    of the loop that began at `loop_s` starting before `until_s`), a few to a datagram."""

    def __init__(self, track):
        from kpcodec.bitstream.opus import CLOCK

        self.track, self.clock = track, CLOCK
        self.durations = track.durations()
        self.next, self.loop_s = 0, 0.0

    def due(self, until_s: float, loop_s: float) -> list[bytes]:
        if loop_s != self.loop_s:
            self.next, self.loop_s = 0, loop_s
        t = self.track
        offset = round(loop_s * self.clock)
        packets = []
        while self.next < len(t.packets) and t.pts[self.next] < until_s * self.clock - offset:
            packets.append((int(t.pts[self.next]) + offset, int(self.durations[self.next]),
                            t.packets[self.next]))
            self.next += 1
        out, group, size = [], [], 0
        for p in packets:  # a few to a datagram
            if group and size + len(p[2]) + 12 > dg.MAX_DATAGRAM - dg.OVERHEAD - 8:
                out.append(dg.audio_body(t.sample_rate, t.channels, t.pre_skip, group))
                group, size = [], 0
            group.append(p)
            size += len(p[2]) + 12
        if group:
            out.append(dg.audio_body(t.sample_rate, t.channels, t.pre_skip, group))
        return out


def send(source, url: str, options, *, loop: bool = False, realtime: bool = True, redundancy: bool = True,
         max_frames: int | None = None, camera: str | None = None, progress=None, warn=None) -> SendSummary:
    """Play `source` (a video file) at its frame rate into `url` (udp:// or webrtc://; see the
    module's docstring). `camera`: `source` is a capture device of that PyAV format ("v4l2",
    "avfoundation", "dshow"; "" for the platform's), read as it delivers frames."""
    from dataclasses import replace

    from kpcodec.codec.encoder import Encoder
    from kpcodec.media import video
    from kpcodec.options import EncodeOptions

    asked = EncodeOptions.of(options)
    o = replace(asked, packet_frames=1, batch=1, audio=False).checked()
    if o.plan.target_kbps is not None or o.plan.wants_base or o.refresh == "auto":
        raise UsageError("live mode sends as it encodes: --bitrate, --base-layer and --refresh auto "
                         "need the whole clip")
    from kpcodec.codec import predictors as predict

    if predict.get_predictor(o.predictor).mode != "causal":
        raise UsageError(f"live mode needs a causal predictor ({o.predictor!r} waits for later frames)")
    cam = None
    if camera is not None:
        from kpcodec.media.camera import Camera

        if loop:
            raise UsageError("--loop plays a file again; a camera goes on by itself")
        cam = Camera(source, camera or None)
        info, realtime = cam.info, False  # the device sets the pace
    else:
        info = video.probe(source)
    with_sound = asked.audio and cam is None and info.has_audio
    sound = None
    if url.startswith("webrtc:"):
        from kpcodec.live import webrtc

        # the sound as a WebRTC audio track (aiortc codes it), not in datagrams
        sender = Sender(url, redundancy, sock=webrtc.offer(url, audio_from=source if with_sound else None))
    else:
        if with_sound:
            from kpcodec.media import audio as audio_codec

            sound = audio_codec.encode_audio(source, info.duration_s, audio_codec.check_bitrate(asked.audio_bitrate))
        sender = Sender(url, redundancy)
    start = time.monotonic()
    count = 0
    audio = LiveAudio(sound) if sound is not None else None
    try:
        with Encoder(o, info.fps, None) as enc:
            while True:
                loop_start = count
                frames = cam.frames(enc.size, o.crop) if cam else video.read_frames(source, size=enc.size, crop=o.crop)
                for frame in frames:
                    due = start + count / float(info.fps)
                    if realtime and due > time.monotonic():
                        time.sleep(due - time.monotonic())
                    sender.capture_ms = _now_ms()
                    for request in sender.feedback():
                        enc.request_keyframe(source=request == dg.KEYFRAME)
                        sender.summary.restarts += 1
                        if request == dg.KEYFRAME:
                            sender.send_head()
                    pushed = enc.push(frame)
                    sender.packets([p for p in pushed if p.kind != "K"])  # HEAD and source first,
                    if audio is not None:  # then the sound up to this frame's end, then its keypoints
                        for body in audio.due((count + 1) / float(info.fps), loop_start / float(info.fps)):
                            sender.audio(body)
                    sender.packets([p for p in pushed if p.kind == "K"])
                    count += 1
                    if progress:
                        progress(count, None if loop else info.frame_count)
                    if max_frames is not None and count >= max_frames:
                        break
                if not loop or (max_frames is not None and count >= max_frames):
                    break
            last = enc.flush()
            sender.packets(last)
            sender.summary.keyframes = enc.keyframes
            sender.end(last[-1].seq, enc.frames)
    finally:
        sender.close()
    sender.summary.frames = count
    sender.summary.seconds = time.monotonic() - start
    return sender.summary


@dataclass
class ReceiveSummary:
    frames: int = 0
    seconds: float = 0.0
    output: str = ""
    datagrams: int = 0
    bytes: int = 0
    bad_datagrams: int = 0  # malformed, damaged or of another stream: dropped
    lost_packets: int = 0
    dropped_packets: int = 0  # whole packets that could not be decoded (their keyframe was lost)
    requests: int = 0
    ended: bool = False  # an END came (else the idle timeout ended it)
    repeated: int = 0  # frames due too late to render: the last frame again in their place
    joined_at: int = 0  # the first frame decoded (its start lost: the frames before it are its copies)
    latency_ms: list = field(default_factory=list, repr=False)  # capture to rendered, per rendered frame
    # (monotonic time it was decoded, monotonic time its last frame was captured) per keypoint packet
    # decoded: how soon after a loss ends the receiver follows the sender again
    keypoints_decoded: list = field(default_factory=list, repr=False)

    def latency(self, q: float) -> float | None:
        import statistics

        if not self.latency_ms:
            return None
        return statistics.quantiles(self.latency_ms, n=100)[int(q) - 1] if len(self.latency_ms) > 1 \
            else self.latency_ms[0]


class Receiver:
    """Datagrams in (`datagram(raw)`), content items in stream order out; `requests()` says what to
    ask the sender for. No socket here: `receive` owns it, tests feed datagrams directly."""

    def __init__(self):
        self.stream: int | None = None
        self.header = None
        self.base = None
        self.reader: pk.PacketReader | None = None
        self.assembly = dg.Reassembly()
        self.waiting: dict[int, bytes] = {}  # packet seq -> bytes, not yet in order
        self.next_seq: int | None = None
        self.gap_since: float | None = None
        self.broken = False  # the keypoint context is lost: waiting for a restart
        self.has_source = False
        self.end: tuple[int, int] | None = None
        self.end_at = 0.0
        self.last_request = 0.0
        self.first_seen: float | None = None
        self.origin_ms: int | None = None
        self.gap_ms: int | None = None  # the smallest (receive - send) time seen, on the two machines' clocks
        self._head_pending = False  # a HEAD came and is not yet handed on
        self.audio_head: tuple[int, int, int] | None = None  # (sample rate, channels, pre-skip)
        self.audio_inbox: list[tuple[int, int, bytes]] = []  # Opus packets not yet handed to the writer
        self.summary = ReceiveSummary()

    def datagram(self, raw: bytes, now: float | None = None) -> list:
        now = time.monotonic() if now is None else now
        self.summary.datagrams += 1
        self.summary.bytes += len(raw)
        try:
            d = dg.parse(raw)
            if self.stream is None and d.kind in (dg.HEAD, dg.DATA):
                self.stream = d.stream
            if d.stream != self.stream:
                raise KpcFormatError("a datagram of another stream")
            self.first_seen = now if self.first_seen is None else self.first_seen
            if d.kind == dg.HEAD:
                self._head(d.body)
                return self.poll(now)
            if d.kind == dg.END:
                self.end, self.end_at = dg.parse_end(d.body), now
                return self.poll(now)
            if d.kind == dg.AUDIO:
                self.audio_head, packets = dg.parse_audio(d.body)
                self.audio_inbox += packets
                return self.poll(now)
            if d.kind != dg.DATA:
                raise KpcFormatError("feedback sent to a receiver")
            for n, f in enumerate(dg.decode_fragments(d.body)):
                whole = self.assembly.add(f)
                if whole is not None and (self.next_seq is None or f.seq >= self.next_seq):
                    self.waiting.setdefault(f.seq, whole)
                if whole is not None and n == 0 and whole[:1] == b"K" and self.header is not None:
                    self._clock(d.time_ms, whole)
        except KpcFormatError:
            self.summary.bad_datagrams += 1
            return []
        return self.poll(now)

    def _clock(self, time_ms: int, raw: bytes) -> None:
        """The sender's capture clock at frame 0, from a datagram's time and its keypoint packet's
        frame (the earliest estimate: the one least delayed)."""
        try:
            packet, _ = pk.split_packet(raw)
        except KpcFormatError:
            return
        if packet is None:
            return
        origin = (time_ms - round(packet.frame * 1000 / float(self.header.fps))) & 0xFFFFFFFF
        if self.origin_ms is None or ((origin - self.origin_ms) & 0xFFFFFFFF) > 0x80000000:
            self.origin_ms = origin
        gap = _signed_ms(_now_ms() - time_ms)
        self.gap_ms = gap if self.gap_ms is None else min(self.gap_ms, gap)

    @property
    def offset_ms(self) -> int:
        """The sender's clock against this machine's: 0 where they agree (the same machine, or clocks
        kept in step: every datagram seems to take SAME_CLOCK_MS or less); else the smallest
        receive - send time seen, so that latency counts the delay beyond the fastest datagram's
        (two machines' monotonic clocks have nothing in common)."""
        if self.gap_ms is None or SAME_CLOCK_MS[0] <= self.gap_ms <= SAME_CLOCK_MS[1]:
            return 0
        return self.gap_ms

    def latency(self, frame: int) -> float | None:
        """Milliseconds from the capture of `frame` at the sender to now (the same machine's clock)."""
        if self.origin_ms is None:
            return None
        capture = (self.origin_ms + round(frame * 1000 / float(self.header.fps)) + self.offset_ms) & 0xFFFFFFFF
        return float(_signed_ms(_now_ms() - capture))

    def due_frame(self) -> int:
        """The last frame whose capture time at the sender has passed (-1: none, or no clock yet)."""
        since = self.latency(0)
        return -1 if since is None else math.floor(since * float(self.header.fps) / 1000)

    def wait_s(self, dec) -> float:
        """How long the socket may wait: until the slot of the next frame `dec` renders ahead."""
        if dec is None or dec.unsent is None or self.origin_ms is None or not dec.unsent(dec.fill.next):
            return WAIT_S
        return min(WAIT_S, max(0.0, -self.latency(dec.fill.next) / 1000))

    def _head(self, raw: bytes) -> None:
        if self.header is not None:
            return
        packet, _ = pk.split_packet(raw)
        if packet is None or packet.kind != "H":
            raise KpcFormatError("a HEAD datagram without a HEAD packet")
        self.header, self.base = pk.decode_head(packet.payload)
        self.reader = pk.PacketReader.after_head(self.header, self.base)
        self._head_pending = True

    def poll(self, now: float) -> list:
        """Packets in order (declaring lost the ones that do not come), as content items."""
        out = []
        if self.reader is None:
            return out
        if self._head_pending:
            self._head_pending = False
            out += [self.header] + ([self.base] if self.base is not None else [])
        while self.waiting:
            if self.next_seq is None:  # the first packet after joining: any, from a restart on
                self.next_seq = min(s for s in self.waiting if s > 0) if any(s > 0 for s in self.waiting) else 1
            if self.next_seq in self.waiting:
                self.gap_since = None
                out += self._packet(self.waiting.pop(self.next_seq))
                self.next_seq += 1
                continue
            later = sum(1 for s in self.waiting if s > self.next_seq)
            self.gap_since = self.gap_since or now
            ended = self.end is not None and now - self.end_at > END_GRACE_S
            if later >= GAP_PACKETS or now - self.gap_since > GAP_S or ended:
                self.summary.lost_packets += 1
                self.next_seq += 1
                self.broken = True
                self.reader.jump(0)
                continue
            break
        for s in [s for s in self.waiting if self.next_seq is not None and s < self.next_seq]:
            del self.waiting[s]
        return out

    def _packet(self, raw: bytes) -> list:
        try:
            items = self.reader.feed(raw)
        except KpcFormatError:
            # a keypoint packet whose keyframe was lost (or damaged data): drop it, ask for a restart
            self.summary.dropped_packets += 1
            self.broken = True
            self.reader.jump(0)
            return []
        for item in items:
            if isinstance(item, pk.SourceImage):
                self.has_source = True
            elif isinstance(item, pk.SentFrames):
                if item.restart:
                    self.broken = False
                if not self.has_source:
                    return []  # keypoints before any source image: nothing to render them with
                since = self.latency(int(item.indices[-1])) if len(item.indices) else None
                if since is not None:
                    now = time.monotonic()
                    self.summary.keypoints_decoded.append((now, now - since / 1000))
        return items

    def requests(self, now: float | None = None) -> int | None:
        """What to ask the sender for now (RESTART, KEYFRAME), or None."""
        now = time.monotonic() if now is None else now
        if now - self.last_request < FEEDBACK_S or self.end is not None:
            return None
        joined = self.first_seen is not None and now - self.first_seen > JOIN_S
        need = dg.KEYFRAME if (self.header is None or not self.has_source) and joined else \
            dg.RESTART if self.broken else None
        if need is not None:
            self.last_request = now
            self.summary.requests += 1
        return need

    def finished(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if self.end is None:
            return False
        last, _ = self.end
        return (self.next_seq is not None and self.next_seq > last and not self.waiting) or \
            now - self.end_at > END_GRACE_S


class UdpListener:
    """The receiver's UDP socket: `wait(timeout)` for a datagram (None: none came), `reply(raw)`
    to whoever sent the last one (the feedback path)."""

    def __init__(self, url: str):
        host, port = parse_url(url, listen=True)
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise KpcodecError(f"cannot listen on {url}: {exc.strerror or exc}") from None
        self.peer = None

    def wait(self, timeout: float) -> bytes | None:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        raw, self.peer = self.sock.recvfrom(65536)
        return raw

    def reply(self, raw: bytes) -> None:
        if self.peer is not None:
            try:
                self.sock.sendto(raw, self.peer)
            except OSError:
                pass  # the sender has gone: nothing to ask any more

    def close(self) -> None:
        self.sock.close()


def _open_writer(output, dec, first, rx: Receiver, audio: bool, container, warn, url, recoder=None):
    """The output, opened at the first frame `first` with the audio if it came by then. A stream
    joined late (its start lost): `first` stands in for the frames before it, so every frame keeps
    its time and the sound stays in step."""
    from kpcodec.bitstream.opus import opus_head_of
    from kpcodec.media import video

    h = dec.header
    writer = video.VideoWriter(output, h.fps, (h.width, h.height)).__enter__()
    if audio and (rx.audio_head is not None or recoder is not None):
        if container.audio:
            rate, channels, pre_skip = rx.audio_head or (48000, 1, recoder.pre_skip)
            writer.open_audio(channels, opus_head_of(channels, pre_skip, rate))
        elif warn:
            warn(f"{output}: a {container.format} file cannot hold audio; the audio of {url} is left out")
    for _ in range(dec.frame_index):
        writer.write(first)
    rx.summary.joined_at = dec.frame_index
    return writer


def _hand_audio(writer, rx: Receiver, link=None, recoder=None) -> None:
    """The Opus packets that came (in datagrams, or a WebRTC audio track's frames coded again), to
    the writer (in time order; a late one is dropped)."""
    if recoder is not None:
        rx.audio_inbox += [(pts, duration, data) for data, pts, duration in recoder.push(link.audio_frames())]
    if rx.audio_inbox and writer.audio_open:
        for pts, duration, data in sorted(rx.audio_inbox):
            writer.queue_audio(data, pts, duration)
    rx.audio_inbox.clear()


def late(latency_ms: float, render_ms: float | None, repeats: int, budget_ms: float) -> bool:
    """Is a frame `latency_ms` after its capture too late to render (it is the last frame again)?
    When it would be out later than `budget_ms` once rendered; but a frame still within the budget
    is rendered after MAX_REPEAT_RUN repeats in a row, whatever the render time's estimate says, so
    an estimate too high (one slow render) cannot freeze the picture: each render updates it."""
    if latency_ms > budget_ms:
        return True  # late already (a loss, a burst): rendering it would only delay the next ones
    return latency_ms + (render_ms or 0.0) > budget_ms and repeats < MAX_REPEAT_RUN


def receive(url: str, output, options=None, *, idle_timeout: float = 10.0, max_late_ms: float | None = MAX_LATE_MS,
            force: bool = False, progress=None, warn=None) -> ReceiveSummary:
    """Receive one stream on udp `url` and decode it into the video `output` (see the module's
    docstring). Ends at the sender's END or after `idle_timeout` seconds without a datagram. A frame
    due more than `max_late_ms` after its capture is not rendered: the last frame is repeated in its
    place, so a receiver slower than the stream stays in time (None or 0: render every frame)."""
    from kpcodec.api import check_output
    from kpcodec.codec.decoder import Decoder
    from kpcodec.media import video
    from kpcodec.options import DecodeOptions

    o = DecodeOptions.of(options, batch=1).checked()  # a frame out as soon as it can be: latency
    if max_late_ms is not None and not (max_late_ms >= 0):
        raise UsageError(f"--max-latency must be a number of milliseconds >= 0 (got {max_late_ms!r})")
    if not (idle_timeout > 0):
        raise UsageError(f"--idle-timeout must be a positive number of seconds (got {idle_timeout!r})")
    check_output(output, force)
    container, _ = video.container_for(output)
    if url.startswith("webrtc:"):
        from kpcodec.live import webrtc

        link = webrtc.Answerer(url)
    else:
        link = UdpListener(url)
    recoder = None  # a WebRTC audio track's frames, coded as Opus again (made when the track shows)
    rx = Receiver()
    start = time.monotonic()
    last_heard = start
    dec = writer = None
    def emit(frames) -> None:
        nonlocal writer
        for frame in frames:
            if writer is None:  # opened at the first frame, with the audio if it came by then
                writer = _open_writer(output, dec, frame, rx, o.audio, container, warn, url, recoder)
            _hand_audio(writer, rx, link, recoder)
            writer.write(frame)
            ms = rx.latency(dec.frame_index)
            if ms is not None and not dec.frame_repeated:
                rx.summary.latency_ms.append(ms)
            if progress:
                progress(dec.done, None)

    try:
        while not rx.finished():
            raw = link.wait(rx.wait_s(dec))
            now = time.monotonic()
            items = []
            if raw is not None:
                last_heard = now
                items = rx.datagram(raw, now)
            else:
                items = rx.poll(now)
            for item in items:
                if dec is None:
                    if not isinstance(item, Header):
                        continue
                    dec = Decoder(item, o, url)
                    if not item.adaptive and item.keep_every > 1:  # the frames between sent ones, in their slots
                        dec.unsent = lambda t, k=item.keep_every: t % k != 0
                    if o.audio and getattr(link, "audio_track", False):
                        from kpcodec.live.webrtc import OpusRecoder

                        recoder = OpusRecoder()
                    if max_late_ms:
                        dec.late = lambda t: late(rx.latency(t) or 0.0, dec.render_ms, dec.repeat_run, max_late_ms)
                    continue
                emit(dec.pushing(item))
            if dec is not None and rx.origin_ms is not None:
                emit(dec.aheading(rx.due_frame()))
            request = rx.requests(now)
            if request is not None:
                link.reply(bytes(dg.Datagram(dg.FEEDBACK, rx.stream or 0, 0, _now_ms(),
                                             dg.feedback_body(request, (rx.next_seq or 1) - 1))))
            if now - last_heard > idle_timeout:
                if warn:
                    warn(f"{url}: nothing for {idle_timeout:g} s: finishing the output")
                break
        rx.summary.ended = rx.end is not None
        if dec is None:
            raise KpcFormatError(f"{url}: no stream arrived" + ("" if rx.summary.datagrams == 0 else
                                 f" ({rx.summary.datagrams} datagrams, none usable)"))
        tail = dec.pushing(pk.End(rx.end[1])) if rx.end is not None and dec.frame_count is None else iter(())
        emit([*tail, *dec.flushing()])
        if writer is None:
            raise KpcFormatError(f"{url}: no frame could be decoded")
        past = dec.fill.next - rx.end[1] if rx.end is not None else 0
        if past > 0 and warn:  # rendered in their slots before a late END said the stream had ended
            warn(f"{url}: {past} frame(s) after the stream's last were rendered before its END came")
        _hand_audio(writer, rx, link, recoder)
        dec.close()
        writer.__exit__(None, None, None)
        writer = None
    finally:
        link.close()
        if writer is not None:
            writer.abort()
    rx.summary.frames = dec.done + rx.summary.joined_at
    rx.summary.repeated = dec.repeated
    rx.summary.seconds = time.monotonic() - start
    rx.summary.output = str(output)
    return rx.summary

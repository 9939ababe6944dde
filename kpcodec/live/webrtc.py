"""Live mode over WebRTC (the optional extra `live`: aiortc): the live datagrams
(kpcodec.live.datagram) on a data channel, unordered and without retransmits, so a lost datagram is
lost as on UDP and the same recovery applies. aiortc has no plug-in video codec API, hence a data
channel rather than a video track.

The sound is a normal WebRTC audio track (aiortc codes it as Opus in RTP): the sender plays the
input's audio into it at its own pace; the receiver codes what arrives as Opus again for the output
file, placed from the start of the video.

Offer and answer go through a small HTTP endpoint that the receiver runs: `kpcodec receive
webrtc://:8080 ...` listens for `POST /offer` (JSON {"sdp", "type"}) and answers with its own;
`kpcodec send talk.mp4 webrtc://HOST:8080` posts the offer. aiortc runs on an asyncio loop in a
background thread; each end is a socket-like object for the sender and receiver of kpcodec.live.udp.
"""
from __future__ import annotations

import asyncio
import fractions
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kpcodec.errors import KpcodecError, UsageError

OPEN_TIMEOUT_S = 20.0
CHANNEL = "kpcodec"


def _aiortc():
    try:
        import aiortc
    except ImportError:
        raise UsageError("webrtc:// needs the optional extra: pip install 'kpcodec[live]' (aiortc)") from None
    return aiortc


def parse_url(url: str, listen: bool = False) -> tuple[str, int]:
    """(host, port) of webrtc://HOST:PORT, the receiver's signalling endpoint (webrtc://:PORT to listen
    on every address)."""
    from kpcodec.live.udp import parse_url as parse

    return parse(url, listen, scheme="webrtc")


class _Loop:
    """An asyncio loop in a daemon thread; `run(coro)` waits for a coroutine's result."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="kpcodec-webrtc")
        self.thread.start()

    def run(self, coro, timeout: float = OPEN_TIMEOUT_S):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class ChannelEnd:
    """One end of the data channel, as the live sender and receiver use a datagram socket:
    `send(raw)`, non-blocking `recv(n)` (BlockingIOError when nothing came), `wait(timeout)`."""

    def __init__(self, url: str):
        self.url = url
        self.rtc = _aiortc()
        self.loop = _Loop()
        self.pc = None
        self.channel = None
        self.inbox: queue.Queue = queue.Queue()
        self.opened = threading.Event()
        self.closed = False

    def _attach(self, channel) -> None:
        self.channel = channel

        @channel.on("message")
        def on_message(message):
            if isinstance(message, (bytes, bytearray)):
                self.inbox.put(bytes(message))

        @channel.on("open")
        def on_open():
            self.opened.set()

        if channel.readyState == "open":
            self.opened.set()

    def send(self, raw: bytes) -> None:
        if self.channel is not None and self.opened.is_set() and not self.closed:
            self.loop.call(self._send_now, raw)

    def _send_now(self, raw: bytes) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(raw)

    def recv(self, n: int = 0) -> bytes:
        try:
            return self.inbox.get_nowait()
        except queue.Empty:
            raise BlockingIOError from None

    reply = send  # the receiver's feedback goes back on the same channel

    def wait(self, timeout: float) -> bytes | None:
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        if self.closed:
            return
        if self.opened.is_set():
            time.sleep(0.3)  # let the channel's last messages (the END datagrams) go out first
        self.closed = True
        if self.pc is not None:
            try:
                self.loop.run(self.pc.close(), timeout=5)
            except Exception:  # noqa: BLE001  (closing a connection that failed)
                pass
        self.loop.stop()


class FileAudio:
    """An aiortc audio track of a file's sound: 20-ms mono 48-kHz frames, each handed out when its
    time comes (from the first call on, which is the video's start)."""

    RATE, SAMPLES = 48000, 960

    def __init__(self, path: str, rtc):
        import av
        import numpy as np

        from kpcodec.media import video

        pcm = []
        try:
            with av.open(path) as c:
                resampler = av.AudioResampler(format="s16", layout="mono", rate=self.RATE)
                for frame in c.decode(audio=0):
                    for out in resampler.resample(frame):
                        pcm.append(out.to_ndarray().reshape(-1))
                for out in resampler.resample(None):
                    pcm.append(out.to_ndarray().reshape(-1))
        except (av.FFmpegError, OSError) as exc:
            raise KpcodecError(f"{path}: cannot read its audio ({video.reason(exc)})") from None
        self.pcm = np.concatenate(pcm) if pcm else np.zeros(0, np.int16)
        end = self

        class Track(rtc.MediaStreamTrack):
            kind = "audio"

            async def recv(self):
                return await end.next_frame()

        self.track = Track()
        self.n = 0
        self.start = None

    async def next_frame(self):
        import av
        import numpy as np

        if self.start is None:
            self.start = time.time()
        due = self.start + self.n * self.SAMPLES / self.RATE
        await asyncio.sleep(max(0.0, due - time.time()))
        chunk = self.pcm[self.n * self.SAMPLES:(self.n + 1) * self.SAMPLES]
        chunk = np.pad(chunk, (0, self.SAMPLES - len(chunk)))  # silence after the end
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = self.RATE, self.n * self.SAMPLES
        frame.time_base = fractions.Fraction(1, self.RATE)
        self.n += 1
        return frame


def offer(url: str, audio_from: str | None = None) -> ChannelEnd:
    """The sender's end: connect to the receiver's signalling endpoint at webrtc://HOST:PORT;
    with `audio_from`, that file's sound as an audio track."""
    host, port = parse_url(url)
    end = ChannelEnd(url)
    rtc = end.rtc
    end.audio = FileAudio(audio_from, rtc) if audio_from else None

    async def make_offer():
        end.pc = rtc.RTCPeerConnection()
        end._attach(end.pc.createDataChannel(CHANNEL, ordered=False, maxRetransmits=0))
        if end.audio is not None:
            end.pc.addTrack(end.audio.track)
        await end.pc.setLocalDescription(await end.pc.createOffer())
        return {"sdp": end.pc.localDescription.sdp, "type": end.pc.localDescription.type}

    async def take_answer(answer):
        await end.pc.setRemoteDescription(rtc.RTCSessionDescription(answer["sdp"], answer["type"]))

    try:
        body = json.dumps(end.loop.run(make_offer())).encode()
        request = urllib.request.Request(f"http://{host}:{port}/offer", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=OPEN_TIMEOUT_S) as r:
            answer = json.loads(r.read())
        end.loop.run(take_answer(answer))
    except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
        end.close()
        raise KpcodecError(f"cannot reach the receiver at {url}: {getattr(exc, 'reason', exc)}") from None
    if not end.opened.wait(OPEN_TIMEOUT_S):
        end.close()
        raise KpcodecError(f"{url}: the data channel did not open within {OPEN_TIMEOUT_S:g} s")
    return end


class Answerer(ChannelEnd):
    """The receiver's end: an HTTP endpoint for one offer, then the data channel it opens."""

    def __init__(self, url: str):
        host, port = parse_url(url, listen=True)
        super().__init__(url)
        self.audio_track = False  # the offer had an audio track
        self.audio_inbox: queue.Queue = queue.Queue()
        end = self
        rtc = self.rtc

        async def answer(offer_json):
            end.pc = rtc.RTCPeerConnection()
            end.pc.on("datachannel", end._attach)
            end.pc.on("track", end._track)
            await end.pc.setRemoteDescription(rtc.RTCSessionDescription(offer_json["sdp"], offer_json["type"]))
            await end.pc.setLocalDescription(await end.pc.createAnswer())
            return {"sdp": end.pc.localDescription.sdp, "type": end.pc.localDescription.type}

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802  (http.server's name)
                try:
                    if self.path != "/offer" or end.pc is not None:
                        raise ValueError("one offer, to /offer")
                    length = min(int(self.headers.get("Content-Length", 0)), 1 << 20)
                    reply = json.dumps(end.loop.run(answer(json.loads(self.rfile.read(length))))).encode()
                    self.send_response(200)
                except Exception as exc:  # noqa: BLE001  (a bad offer is answered, never a crash)
                    reply = json.dumps({"error": str(exc)}).encode()
                    self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):  # quiet: stderr is for kpcodec's own lines
                pass

        try:
            self.http = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            self.loop.stop()
            raise KpcodecError(f"cannot listen on {url}: {exc.strerror or exc}") from None
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def _track(self, track) -> None:
        if track.kind != "audio":
            return
        self.audio_track = True

        async def pull():
            try:
                while True:
                    frame = await track.recv()
                    self.audio_inbox.put(frame)
            except Exception:  # noqa: BLE001  (the track ended: the connection closed)
                return

        asyncio.ensure_future(pull())

    def audio_frames(self) -> list:
        """The decoded audio frames (av.AudioFrame) that came since the last call."""
        out = []
        while True:
            try:
                out.append(self.audio_inbox.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        super().close()


class OpusRecoder:
    """The received audio frames coded as Opus again (mono, 48 kHz) for the output file, placed
    from the start of the video: (packet, pts, duration) in 48-kHz ticks."""

    def __init__(self, kbps: float = 16.0):
        import av

        self.av = av
        self.enc = av.CodecContext.create("libopus", "w")
        self.enc.sample_rate, self.enc.layout, self.enc.format = 48000, "mono", "s16"
        self.enc.bit_rate = int(kbps * 1000)
        self.enc.time_base = fractions.Fraction(1, 48000)
        self.enc.open()
        head = bytes(self.enc.extradata or b"")
        self.pre_skip = int.from_bytes(head[10:12], "little") if len(head) >= 12 else 312
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        self.samples = 0

    def push(self, frames) -> list[tuple[bytes, int, int]]:
        out = []
        for frame in frames:
            for f in self.resampler.resample(frame):
                f.pts = self.samples
                self.samples += f.samples
                for p in self.enc.encode(f):
                    out.append((bytes(p), int(p.pts) - self.pre_skip, int(p.duration or 960)))
        return out

"""Live mode (kpcodec.live): datagrams, the receiver's reordering and loss recovery, send/receive on loopback."""
from __future__ import annotations

import random
import subprocess
import sys
import time

import pytest

from kpcodec.bitstream import Header
from kpcodec.bitstream import packets as pk
from kpcodec.codec.decoder import Decoder
from kpcodec.codec.encoder import Encoder
from kpcodec.errors import KpcFormatError
from kpcodec.live import datagram as dg
from kpcodec.live import udp
from kpcodec.live.proxy import LossyProxy
from kpcodec.media.video import probe, read_frames
from kpcodec.options import DecodeOptions, EncodeOptions

from conftest import make_clip


@pytest.fixture(scope="module")
def clip100(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("live") / "c.mp4", frames=100)


class FakeSock:
    """What a Sender sends, and the feedback it is handed."""

    def __init__(self):
        self.out, self.inbox = [], []

    def send(self, raw):
        self.out.append(raw)

    def recv(self, n):
        if not self.inbox:
            raise BlockingIOError
        return self.inbox.pop(0)

    def close(self):
        pass


def run_link(clip, drop, answer=True, frames=None, log=None):
    """Encode `clip` live into datagrams, dropping those `drop(n)` says, into a Receiver and a Decoder;
    the receiver's feedback goes back to the encoder at once (a zero-delay link). Returns
    (frames decoded, receiver summary, sender summary). `log`, a list: gets (frame being captured,
    datagram number, True if it was dropped, the last frame of the keypoint packets it delivered)."""
    sock = FakeSock()
    sender = udp.Sender("udp://x:1", sock=sock)
    rx, dec, out, sent = udp.Receiver(), None, 0, 0
    o = EncodeOptions(model="tiny", keep_every=2, packet_frames=1, batch=1, audio=False)
    now = 0.0

    def deliver(items):
        nonlocal dec, out
        if log is not None:
            kp = [int(i.indices[-1]) for i in items if isinstance(i, pk.SentFrames) and len(i.indices)]
            log.append((captured, sent, False, max(kp) if kp else None))
        for item in items:
            if dec is None:
                if isinstance(item, Header):
                    dec = Decoder(item, DecodeOptions(threads=1))
                continue
            out += len(dec.push(item))

    captured = 0
    with Encoder(o, 25) as enc:
        for captured, f in enumerate(read_frames(clip, size=enc.size)):
            for request in sender.feedback():  # as udp.send answers them
                enc.request_keyframe(source=request == dg.KEYFRAME)
                if request == dg.KEYFRAME:
                    sender.send_head()
            sender.packets(enc.push(f))
            for raw in sock.out:
                if not drop(sent):
                    deliver(rx.datagram(raw, now))
                elif log is not None:
                    log.append((captured, sent, True, None))
                sent += 1
            sock.out.clear()
            now += 0.04
            deliver(rx.poll(now))
            request = rx.requests(now)
            if request is not None and answer:
                sock.inbox.append(bytes(dg.Datagram(dg.FEEDBACK, rx.stream, 0, 0, dg.feedback_body(request, 0))))
        last = enc.flush()
        sender.packets(last)
        sender.end(last[-1].seq, enc.frames)
    for raw in sock.out:
        if not drop(sent):
            deliver(rx.datagram(raw, now))
        sent += 1
    deliver(rx.poll(now + 1.0))
    if rx.end is not None and dec.frame_count is None:
        out += len(dec.push(pk.End(rx.end[1])))
    out += len(dec.flush())
    return out, rx.summary, sender.summary


# ------------------------------------------------------------------ datagrams


def test_datagrams_round_trip_and_every_damage_is_refused():
    d = dg.Datagram(dg.DATA, 0xDEADBEEF, 7, 123, dg.encode_fragment(dg.Fragment(5, 0, 1, b"packet")))
    raw = bytes(d)
    assert dg.parse(raw) == d and len(raw) == dg.OVERHEAD + len(d.body)
    assert dg.decode_fragments(d.body) == [dg.Fragment(5, 0, 1, b"packet")]
    for n in range(len(raw)):
        with pytest.raises(KpcFormatError):
            dg.parse(raw[:n])
    for byte in range(len(raw)):
        damaged = bytearray(raw)
        damaged[byte] ^= 0x10
        with pytest.raises(KpcFormatError):
            dg.parse(bytes(damaged))
    with pytest.raises(KpcFormatError):
        dg.parse(b"x" * (dg.MAX_DATAGRAM + 1))


def test_big_packets_are_cut_to_fit_a_datagram_and_put_back():
    data = bytes(random.Random(0).getrandbits(8) for _ in range(5000))
    frags = dg.fragments(9, data)
    assert len(frags) == 5 and all(len(bytes(dg.Datagram(0, 1, 0, 0, dg.encode_fragment(f)))) <= dg.MAX_DATAGRAM
                                   for f in frags)
    r = dg.Reassembly()
    assert [r.add(f) for f in reversed(frags)][-1] == data


# ------------------------------------------------------------------ the receiver on a simulated link


def test_every_frame_arrives_without_loss_and_with_single_losses(clip100):
    frames, rx, tx = run_link(clip100, lambda n: False)
    assert frames == 100 and rx.lost_packets == rx.dropped_packets == 0 and rx.bad_datagrams == 0
    # every 7th datagram lost (never two in a row): the next one repeats the lost keypoint packet
    frames, rx, _ = run_link(clip100, lambda n: n > 5 and n % 7 == 0)
    assert frames == 100 and rx.dropped_packets == 0


def test_a_burst_is_recovered_by_a_restart_asked_for(clip100):
    burst = set(range(20, 26))  # six datagrams in a row: the keypoint context is lost
    frames, rx, tx = run_link(clip100, lambda n: n in burst)
    assert frames == 100  # the predictor fills what was lost: every frame is in the output
    assert rx.lost_packets >= 1 and rx.requests >= 1
    stalled, rx2, _ = run_link(clip100, lambda n: n in burst, answer=False)
    assert stalled == 100 and rx2.dropped_packets > rx.dropped_packets  # without the restart it waits longer


@pytest.mark.parametrize("burst", [6, 24])
def test_the_receiver_follows_again_within_a_second_of_the_loss_ending(clip100, burst):
    """After an outage of `burst` datagrams (the keypoint context lost), the receiver decodes keypoints
    of frames captured after the outage within 25 frames (1 s at 25 fps) of its end: a restart is
    asked for and answered, the predictor fills the frames in between."""
    lost = set(range(20, 20 + burst))
    log = []
    frames, rx, _ = run_link(clip100, lambda n: n in lost, log=log)
    assert frames == 100 and rx.requests >= 1
    end = max(captured for captured, _, dropped, _ in log if dropped)  # the frame captured as the loss ended
    back = [captured for captured, _, dropped, last in log if not dropped and last is not None and last > end]
    assert back and back[0] - end <= 25, (end, back[:3])


def test_the_proxy_keeps_a_fixed_outage_and_logs_it():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(0.5)
        with LossyProxy(sink.getsockname(), outages=[(0.2, 300)]) as proxy, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as src:
            host, port = "127.0.0.1", proxy.port
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.8:
                src.sendto(b"x", (host, port))
                time.sleep(0.01)
            time.sleep(0.1)
    assert len(proxy.outage_log) == 1
    start, end = proxy.outage_log[0]
    # scheduled 0.2 s after the first datagram, on the proxy's clock (a loaded machine delays both alike)
    assert t0 <= proxy.started and 0.2 <= start - proxy.started < 0.5 and end - start == pytest.approx(0.3)
    assert 10 <= proxy.dropped and proxy.forwarded >= 20  # ~30 of ~80 datagrams fall in the outage


@pytest.mark.parametrize("skew_ms", [0, 10**6, -(10**6)])
def test_latency_is_right_whether_or_not_the_sender_shares_this_machines_clock(skew_ms):
    """On one machine (skew 0) latency is capture to now on the shared clock; a sender on another
    machine (its monotonic clock far off) is measured from its fastest datagram, not from a clock
    difference of minutes (which made every frame late: the picture froze)."""
    from types import SimpleNamespace

    rx = udp.Receiver()
    rx.header = SimpleNamespace(fps=25)
    now = udp._now_ms()
    sent = (now - 30 + skew_ms) & 0xFFFFFFFF  # frame 10, read 30 ms ago on the sender's clock
    rx._clock(sent, bytes(pk.Packet("K", 5, 10, b"")))
    late = rx.latency(10)
    if skew_ms == 0:
        assert rx.offset_ms == 0 and 29 <= late <= 80
    else:
        assert rx.offset_ms != 0 and 0 <= late <= 50  # the fastest datagram is the zero
    assert 35 <= rx.latency(9) - late <= 60  # frame 9 was due 40 ms earlier (25 fps)


def test_foreign_and_garbage_datagrams_are_dropped_and_counted(clip100):
    rx = udp.Receiver()
    good = bytes(dg.Datagram(dg.HEAD, 1, 0, 0, b"\x00"))
    assert rx.datagram(b"garbage") == [] and rx.summary.bad_datagrams == 1
    assert rx.datagram(good) == [] and rx.summary.bad_datagrams == 2  # a HEAD that is no HEAD packet
    assert rx.datagram(bytes(dg.Datagram(dg.DATA, 2, 0, 0, b""))) == [] and rx.summary.bad_datagrams == 3


# ------------------------------------------------------------------ the commands on loopback


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def receive_process(port, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "kpcodec", "receive", f"udp://127.0.0.1:{port}", "-o", str(out),
                             "--idle-timeout", "30", *extra], stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_send_and_receive_on_loopback(clip100, tmp_path, loss):
    port = free_port()
    out = tmp_path / "rx.mp4"
    rx = receive_process(port, out)
    time.sleep(1.0)
    with LossyProxy(("127.0.0.1", port), loss=loss, seed=3) as proxy:
        tx = subprocess.run([sys.executable, "-m", "kpcodec", "send", str(clip100), proxy.url, "--model", "tiny"],
                            stderr=subprocess.PIPE, text=True, timeout=120)
        assert tx.returncode == 0, tx.stderr
        assert rx.wait(60) == 0, rx.stderr.read()
    log = rx.stderr.read()
    assert "END received" in log and probe(out).frame_count == 100, log
    assert tx.stderr.strip().splitlines()[-1].startswith("sent 100 frames")


def test_receive_errors_are_one_line(tmp_path):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "kpcodec", "receive", f"udp://127.0.0.1:{port}", "-o",
                            str(tmp_path / "x.mp4")], stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot listen" in r.stderr
    r = subprocess.run([sys.executable, "-m", "kpcodec", "receive", "tcp://:5", "-o", str(tmp_path / "x.mp4")],
                       stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 2 and "udp://" in r.stderr
    r = subprocess.run([sys.executable, "-m", "kpcodec", "receive", f"udp://127.0.0.1:{free_port()}", "-o",
                        str(tmp_path / "y.mp4"), "--idle-timeout", "0.5"], stderr=subprocess.PIPE, text=True,
                       timeout=60)
    assert r.returncode == 1 and "no stream arrived" in r.stderr and not list(tmp_path.glob("*y.mp4*"))


def test_send_to_a_bad_address_is_one_line(clip100):
    r = subprocess.run([sys.executable, "-m", "kpcodec", "send", str(clip100), "udp://no-such-host.invalid:5000",
                        "--model", "tiny"], stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot send" in r.stderr


def test_webrtc_peers_on_loopback_in_one_process(clip100, tmp_path):
    """Two aiortc peers in this process: the receiver's signalling endpoint, a data channel
    (unordered, no retransmits) carrying the same datagrams, every frame in the output."""
    pytest.importorskip("aiortc")
    import threading

    from kpcodec.options import EncodeOptions

    port = free_port_tcp()
    box = {}

    def receiver():
        box["rx"] = udp.receive(f"webrtc://127.0.0.1:{port}", tmp_path / "w.mp4", DecodeOptions(threads=1),
                                idle_timeout=10)

    t = threading.Thread(target=receiver)
    t.start()
    time.sleep(0.5)
    sent = udp.send(str(clip100), f"webrtc://127.0.0.1:{port}", EncodeOptions(model="tiny"))
    t.join(60)
    assert sent.frames == 100 and box["rx"].ended and box["rx"].frames == 100
    assert probe(tmp_path / "w.mp4").frame_count == 100


def free_port_tcp() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_missing_camera_is_one_line():
    r = subprocess.run([sys.executable, "-m", "kpcodec", "send", "/dev/no-such-video", "udp://127.0.0.1:5000",
                        "--camera", "--model", "tiny"], stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot open camera" in r.stderr


def test_a_capture_device_is_sent_live(tmp_path):
    """The camera path end to end: a capture device through PyAV (lavfi's test source, paced by
    its realtime filter, stands in for v4l2/avfoundation/dshow: the same av.open(device, format))
    sent with --camera and received."""
    import av

    try:
        av.open("testsrc=size=32x32:rate=25", format="lavfi").close()
    except Exception:  # noqa: BLE001 - a PyAV build without libavdevice's lavfi
        pytest.skip("no lavfi input device in this PyAV")
    port = free_port()
    out = tmp_path / "cam.mp4"
    rx = receive_process(port, out)
    time.sleep(1.0)
    tx = subprocess.run([sys.executable, "-m", "kpcodec", "send", "testsrc=size=320x240:rate=25,realtime",
                         f"udp://127.0.0.1:{port}", "--camera", "--camera-format", "lavfi", "--max-frames", "30",
                         "--model", "tiny"], stderr=subprocess.PIPE, text=True, timeout=120)
    assert tx.returncode == 0, tx.stderr
    assert rx.wait(60) == 0, rx.stderr.read()
    assert "END received" in rx.stderr.read() and probe(out).frame_count == 30
    assert tx.stderr.strip().splitlines()[-1].startswith("sent 30 frames")


def test_the_sound_goes_along(tmp_path):
    import threading

    import av

    from conftest import make_clip_with_audio
    from kpcodec.options import EncodeOptions

    clip = make_clip_with_audio(tmp_path / "a.mp4", seconds=2.0)
    port, box = free_port(), {}

    def receiver():
        box["rx"] = udp.receive(f"udp://127.0.0.1:{port}", tmp_path / "a-rx.mp4", DecodeOptions(threads=1),
                                idle_timeout=10)

    t = threading.Thread(target=receiver)
    t.start()
    time.sleep(0.5)
    udp.send(str(clip), f"udp://127.0.0.1:{port}", EncodeOptions(model="tiny"))
    t.join(60)
    with av.open(str(tmp_path / "a-rx.mp4")) as c:
        kinds = {s.type: s.frames for s in c.streams}
        audio = [f for f in c.decode(audio=0)]
    assert kinds["video"] == 50 and box["rx"].bad_datagrams == 0
    assert sum(f.samples for f in audio) >= 0.9 * 2.0 * audio[0].sample_rate  # ~2 s of sound


def test_a_lost_start_is_recovered_by_a_keyframe_asked_for(clip100):
    frames, rx, _ = run_link(clip100, lambda n: n < 6)  # HEAD and source image lost
    assert rx.requests >= 1 and frames > 50  # joined at the keyframe the sender sent on request


def test_webrtc_sends_the_sound_as_an_opus_track(tmp_path):
    pytest.importorskip("aiortc")
    import collections
    import threading

    import av

    from conftest import make_clip_with_audio
    from kpcodec.options import EncodeOptions

    clip = make_clip_with_audio(tmp_path / "a.mp4", seconds=2.0)
    port, box, kinds = free_port_tcp(), {}, collections.Counter()
    datagram = udp.Receiver.datagram

    def counting(self, raw, now=None):
        kinds[dg.parse(raw).kind] += 1
        return datagram(self, raw, now)

    def receiver():
        box["rx"] = udp.receive(f"webrtc://127.0.0.1:{port}", tmp_path / "w.mp4", DecodeOptions(threads=1),
                                idle_timeout=10)

    udp.Receiver.datagram = counting
    try:
        t = threading.Thread(target=receiver)
        t.start()
        time.sleep(0.5)
        udp.send(str(clip), f"webrtc://127.0.0.1:{port}", EncodeOptions(model="tiny"))
        t.join(60)
    finally:
        udp.Receiver.datagram = datagram
    assert kinds[dg.AUDIO] == 0 and box["rx"].frames == 50  # no audio datagrams: a media track
    with av.open(str(tmp_path / "w.mp4")) as c:
        samples = sum(f.samples for f in c.decode(audio=0))
        rate = c.streams.audio[0].rate
    assert samples >= 0.8 * 2.0 * rate

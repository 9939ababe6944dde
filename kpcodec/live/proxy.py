"""A userspace UDP proxy that loses and delays datagrams, for the live mode's tests and benchmark
(no root, no network tricks): datagrams from a client to `listen` go on to `target`, the answers
back to the client, each dropped with probability `loss` (or inside a `burst_ms` outage that starts
with probability `burst_rate` per datagram, or at the fixed times of `outages`: (seconds after the first
datagram, milliseconds) pairs) and held `delay_ms` first. Seeded: a run repeats. `outage_log` keeps
the (start, end) of every outage on time.monotonic()'s clock, for measuring how fast a receiver
recovers once the loss stops."""
from __future__ import annotations

import heapq
import random
import select
import socket
import threading
import time


class LossyProxy:
    def __init__(self, target: tuple[str, int], loss: float = 0.0, delay_ms: float = 0.0, burst_ms: float = 0.0,
                 burst_rate: float = 0.0, seed: int = 0, host: str = "127.0.0.1", outages=()):
        self.target, self.loss, self.delay = target, loss, delay_ms / 1000
        self.burst, self.burst_rate = burst_ms / 1000, burst_rate
        self.rng = random.Random(seed)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # to the target, so answers come back
        self.port = self.sock.getsockname()[1]
        self.client = None
        self.forwarded = self.dropped = 0
        self._outage_until = 0.0
        self._scheduled = sorted((float(at), float(ms) / 1000) for at, ms in outages)
        self._first: float | None = None
        self.outage_log: list[tuple[float, float]] = []
        self._queue: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def started(self) -> float | None:
        """When the first datagram came in (time.monotonic()): the clock the scheduled outages run on."""
        return self._first

    @property
    def url(self) -> str:
        return f"udp://127.0.0.1:{self.port}"

    def _outage(self, now: float, seconds: float) -> None:
        self._outage_until = now + seconds
        self.outage_log.append((now, self._outage_until))

    def _lost(self, now: float) -> bool:
        self._first = now if self._first is None else self._first
        if now < self._outage_until:
            return True
        if self._scheduled and now - self._first >= self._scheduled[0][0]:
            self._outage(now, self._scheduled.pop(0)[1])
            return True
        if self.burst and self.rng.random() < self.burst_rate:
            self._outage(now, self.burst)
            return True
        return self.rng.random() < self.loss

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            wait = max(0.0, self._queue[0][0] - time.monotonic()) if self._queue else 0.02
            ready, _, _ = select.select([self.sock, self.up], [], [], min(wait, 0.02))
            now = time.monotonic()
            for s in ready:
                raw, addr = s.recvfrom(65536)
                if s is self.sock:
                    self.client = addr
                    dest, out = self.target, self.up
                elif self.client is not None:
                    dest, out = self.client, self.sock
                else:
                    continue
                if self._lost(now):
                    self.dropped += 1
                    continue
                n += 1
                heapq.heappush(self._queue, (now + self.delay, n, out, dest, raw))
            while self._queue and self._queue[0][0] <= time.monotonic():
                _, _, out, dest, raw = heapq.heappop(self._queue)
                try:
                    out.sendto(raw, dest)
                    self.forwarded += 1
                except OSError:
                    pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        self.up.close()

"""Where a stream of the base layer alone puts its base frames (format 2.5: placed base frames).

A decoder makes every frame between two base frames by moving both to it along the keypoints'
path and blending them (kpcodec.models.fomm.MotionModel.between), so a base frame pays most where
the picture between its neighbours is least like their blend: a mouth that opens and closes, a hand,
a turn. The encoder keeps as many base frames as every divisor-th frame would be (plus the last
frame, so no frame is held at the end) and places them by dynamic programming to minimise the
error of the linear blend of each span's two ends against the frames inside it, on 64-px grey
pictures (the proxy: the decoder's moved blend is better than a linear one, most where the motion
is rigid, but the proxy ranks the spans alike). Spans are 1..2 x divisor frames.

It runs as frames come (`Placer`): a window of WINDOW_SPANS mean spacings is planned once it is
full, its first half of the base frames is committed, and the next window starts at the last
committed base frame; so memory stays flat (the window's frames) and base frames come out at most a window late.
On six val clips (250 frames, runs/exp/place.py, 2026-12-07): SSIM +0.001 to +0.006 over uniform
base frames at 256@4:52 and 128@4:55, for -1% to +6% base-layer bits.
"""
from __future__ import annotations

import numpy as np

from kpcodec.bitstream.container import MAX_BASE_GAP

PROXY_SIZE = 64  # the proxy pictures' size
WINDOW_SPANS = 8  # a window is this many mean spacings; half of it is committed at a time
# A tie-break towards the uniform spacing where the proxy sees no difference (a still picture): a
# cost per span of this times (span - divisor)^2, in the proxy's squared grey levels (0-255).
EVEN = 1e-3


def max_gap(divisor: int) -> int:
    return max(1, min(2 * divisor, MAX_BASE_GAP))


def _small(frame: np.ndarray) -> np.ndarray:
    """A frame (H, W, 3) uint8 -> grey PROXY_SIZE-ish picture, float32 (a block mean)."""
    grey = frame.astype(np.float32).mean(axis=2)
    f = max(1, min(grey.shape) // PROXY_SIZE)
    h, w = grey.shape[0] // f * f, grey.shape[1] // f * f
    return grey[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


class Placer:
    """push(i, frame) every video frame in order -> the base frames now placed, [(i, frame)];
    flush() -> the rest, the last video frame among them."""

    def __init__(self, divisor: int):
        self.divisor, self.gap = divisor, max_gap(divisor)
        self.window = WINDOW_SPANS * divisor
        self.start = 0  # the last base frame placed
        self.count = 0  # video frames pushed
        self._small: dict[int, np.ndarray] = {}
        self._frames: dict[int, np.ndarray] = {}
        self._cost: dict[tuple[int, int], float] = {}  # (i, j) -> the span's proxy error
        self.placed: list[int] = []  # every base frame placed so far

    def push(self, i: int, frame: np.ndarray) -> list[tuple[int, np.ndarray]]:
        if i != self.count:
            raise ValueError(f"frame {i} pushed after {self.count} frames")
        self.count += 1
        self._small[i] = _small(frame)
        self._frames[i] = frame
        for span in range(1, self.gap + 1):
            k = i - span
            if k < self.start:
                break
            self._cost[(k, i)] = self._span_cost(k, i)
        if i == 0:
            return self._commit([0])
        if i - self.start < self.window:
            return []
        plan = self._plan(self.start, i)
        return self._commit(plan[1:1 + WINDOW_SPANS // 2])

    def flush(self) -> list[tuple[int, np.ndarray]]:
        last = self.count - 1
        if last <= self.start:
            return []
        return self._commit(self._plan(self.start, last)[1:])

    def _span_cost(self, k: int, j: int) -> float:
        span = j - k
        cost = EVEN * (span - self.divisor) ** 2
        if span < 2:
            return cost
        a = (np.arange(1, span, dtype=np.float32) / span)[:, None, None]
        inside = np.stack([self._small[t] for t in range(k + 1, j)])
        blend = (1 - a) * self._small[k] + a * self._small[j]
        return cost + float(((blend - inside) ** 2).mean(axis=(1, 2)).sum())

    def _plan(self, first: int, last: int) -> list[int]:
        """Base frames first = p0 < ... < pm = last, of the least total span cost: as many as bring
        the count placed up to `last` to what every divisor-th frame would give (last / divisor + 1),
        within what spans of 1..gap allow."""
        length = last - first
        due = round(last / self.divisor + 1 - len(self.placed))
        spans = min(length, max(-(-length // self.gap), due, 1))
        frames = range(first, last + 1)
        best = {first: 0.0}  # frame -> least cost of reaching it with the spans so far
        back: list[dict[int, int]] = []
        for _ in range(spans):
            nxt, arg = {}, {}
            for j in frames:
                for k in range(max(first, j - self.gap), j):
                    if k in best:
                        c = best[k] + self._cost[(k, j)]
                        if j not in nxt or c < nxt[j]:
                            nxt[j], arg[j] = c, k
            best = nxt
            back.append(arg)
        out = [last]
        for arg in reversed(back):
            out.append(arg[out[-1]])
        return out[::-1]

    def _commit(self, frames: list[int]) -> list[tuple[int, np.ndarray]]:
        out = [(p, self._frames[p]) for p in frames]
        self.placed += frames
        self.start = frames[-1]
        for d in (self._small, self._frames):
            for t in [t for t in d if t < self.start]:
                del d[t]
        self._cost = {key: c for key, c in self._cost.items() if key[0] >= self.start}
        return out


def place(frames, divisor: int) -> list[int]:
    """The video frames a Placer puts the base frames of `frames` at (a whole clip)."""
    placer = Placer(divisor)
    for i, frame in enumerate(frames):
        placer.push(i, frame)
    placer.flush()
    return placer.placed

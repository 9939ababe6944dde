"""Which frames the sender codes keypoints for.

`--keep-every N` sends one frame in N (frames 0, N, 2N, ...); `--keep-pattern S:K` is the
block scheme of arXiv 2403.11337: send S consecutive frames, skip the next K, repeat
(12:12 sends frames 0-11, 24-35, ...). Both are a `SendPattern`; keep-every N is N-1 skipped
after each sent frame, i.e. the pattern 1:N-1. Frame 0 is always sent. The .kpc file stores
the sent indices explicitly, so the decoder never needs the pattern itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpcodec.errors import UsageError


@dataclass(frozen=True)
class SendPattern:
    send: int  # consecutive frames sent ...
    skip: int  # ... then this many skipped

    def __post_init__(self):
        if self.send < 1 or self.skip < 0:
            raise UsageError(f"a send pattern needs send >= 1 and skip >= 0 (got {self.send}:{self.skip})")

    @classmethod
    def keep_every(cls, n: int) -> SendPattern:
        if n < 1:
            raise UsageError(f"--keep-every must be >= 1 (got {n})")
        return cls(1, n - 1)

    @classmethod
    def parse(cls, text: str) -> SendPattern:
        """'S:K' (send S, skip K) or 'N' (keep every N-th frame)."""
        try:
            if ":" in text:
                send, skip = (int(v) for v in text.split(":"))
                return cls(send, skip)
            return cls.keep_every(int(text))
        except ValueError:
            raise UsageError(f"--keep-pattern takes SEND:SKIP, e.g. 12:12 (got {text!r})") from None

    @property
    def period(self) -> int:
        return self.send + self.skip

    @property
    def nominal_spacing(self) -> int:
        """The header's keep_every: mean frames per sent frame, rounded (>= 1)."""
        return max(1, round(self.period / self.send))

    def is_sent(self, frame: int) -> bool:
        return frame % self.period < self.send

    def indices(self, frame_count: int, phase: int = 0) -> np.ndarray:
        """Sent frame numbers among 0..frame_count-1; `phase` shifts the cycle (frame 0 stays sent)."""
        t = np.arange(frame_count)
        sent = (t + phase) % self.period < self.send
        sent[:1] = True
        return np.flatnonzero(sent)

    def __str__(self) -> str:
        return f"keep-every {self.period}" if self.send == 1 else f"{self.send}:{self.skip}"

"""Per-step bookkeeping shared by the trainers: CPU time and running means of the logged terms."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


class StepMeter:
    def __init__(self) -> None:
        self._acc: dict[str, list[float]] = {}

    def measure(self, step: Callable[[], dict]) -> tuple[float, float]:
        """Run one training step; keep its terms and wall time; return its CPU and wall seconds."""
        t_wall, t_cpu = time.time(), time.process_time()
        rec = step()
        cpu, wall = time.process_time() - t_cpu, time.time() - t_wall
        for k, v in rec.items():
            self._acc.setdefault(k, []).append(v)
        self._acc.setdefault("s_per_step", []).append(wall)
        return cpu, wall

    def flush(self) -> dict[str, float]:
        """Means since the last flush."""
        mean = {k: float(np.mean(v)) for k, v in self._acc.items()}
        self._acc = {}
        return mean

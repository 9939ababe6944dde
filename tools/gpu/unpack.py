"""Expand `tools/gpu/pack.py`'s landmarks.npz into a landmark cache folder (one npz per clip).

    python tools/gpu/unpack.py .devrun/landmarks.npz /tmp/landmarks
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from kpcodec.eval.landmarks import N_LANDMARKS
from pack import SCALE  # this folder's pack.py: the same fixed point


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    with np.load(src) as z:
        subset, stride = z["subset"].astype(np.int64), int(z["stride"])
        stems = [k for k in z.files if k not in ("subset", "stride") and not k.endswith(".frames")]
        for stem in stems:
            q = np.cumsum(z[stem].astype(np.int32), axis=0)
            pts = q.astype(np.float32) / SCALE
            pts[(q == -int(SCALE)).all(-1)] = np.nan  # packed "no face"
            full = np.full((int(z[f"{stem}.frames"]), N_LANDMARKS, 2), np.nan, np.float32)
            full[::stride][: len(pts), subset] = pts
            np.savez(out / f"{stem}.npz", landmarks=full.astype(np.float16))
    print(f"{len(stems)} landmark files -> {out}")


if __name__ == "__main__":
    main()

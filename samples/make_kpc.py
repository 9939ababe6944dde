#!/usr/bin/env python3
"""Encode every sample clip, samples/<name>.mp4, to samples/<name>.kpc.

Uses the default model (kpcodec --version names it) and keep-every 2, and keeps the
clip's audio if it has any.  Rerun it whenever the default model changes: a .kpc file
names the model and the sha256 of its weights, and decoding refuses any other weights
(tests/test_samples.py decodes every samples/*.kpc).

    python samples/make_kpc.py [--keep-every 2] [--model NAME] [names ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from kpcodec import api  # noqa: E402
from kpcodec.models.registry import DEFAULT_MODEL  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="clip names without .mp4 (default: every samples/*.mp4)")
    parser.add_argument("--keep-every", type=int, default=2)
    parser.add_argument("--model", default=None, help=f"model name (default: {DEFAULT_MODEL})")
    args = parser.parse_args(argv)
    clips = [HERE / f"{n}.mp4" for n in args.names] if args.names else sorted(HERE.glob("*.mp4"))
    if not clips:
        print("no samples/*.mp4 to encode", file=sys.stderr)
        return 1
    for clip in clips:
        out = clip.with_suffix(".kpc")
        s = api.encode(clip, out, keep_every=args.keep_every, model=args.model, force=True)
        print(f"{clip.name} -> {out.name}: {s.frames} frames, {s.bytes} bytes, {s.kbps:.2f} kb/s "
              f"(model {args.model or DEFAULT_MODEL}, keep-every {args.keep_every})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

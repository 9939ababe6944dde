"""Ship a trained checkpoint: fp16 weights into kpcodec/weights/ with their sha256 in index.json.

    python -m kpcodec.train.export runs/fomm-256-quarter/weights-fp16.pt --name fomm-256-quarter \\
        --config fomm-256-quarter [--default]
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import torch

from kpcodec.models.registry import load_checkpoint, sha256_file, weights_dir


def export(checkpoint: Path, name: str, config: str, make_default: bool = False,
           make_default_hybrid: bool = False) -> Path:
    net, _ = load_checkpoint(config, checkpoint)
    fp16 = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    buf = io.BytesIO()
    torch.save(fp16, buf)
    tmp = weights_dir() / f"{name}.tmp"
    tmp.write_bytes(buf.getvalue())
    digest = sha256_file(tmp)
    target = weights_dir() / f"{name}-{digest[:8]}.pt"
    tmp.replace(target)
    index_path = weights_dir() / "index.json"
    index = json.loads(index_path.read_text())
    old = index["models"].get(name)
    if old and old["file"] != target.name:
        (weights_dir() / old["file"]).unlink(missing_ok=True)
    index["models"][name] = {"config": config, "file": target.name, "sha256": digest}
    if make_default:
        index["default"] = name
    if make_default_hybrid:
        index["default_hybrid"] = name
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--default", action="store_true")
    p.add_argument("--default-hybrid", action="store_true", help="the default model of files with a base layer")
    a = p.parse_args()
    print(export(a.checkpoint, a.name, a.config, a.default, a.default_hybrid))


if __name__ == "__main__":
    main()

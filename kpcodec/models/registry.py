"""Named model configs and their shipped weights.

A config is looked up by name, never by position. Weights live in kpcodec/weights/ as
fp16 state dicts named `<config>-<sha256[:8]>.pt`; loading checks the full sha256 so a
decoder never renders with weights other than the ones the encoder named.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

from kpcodec.errors import ModelError


@dataclass(frozen=True)
class ModelConfig:
    name: str
    image_size: int = 256
    num_keypoints: int = 10
    kp_scale: float = 0.25  # detector and dense motion work on image_size * kp_scale
    kp_temperature: float = 0.1
    kp_variance: float = 0.01
    kp_expansion: int = 32
    kp_max_features: int = 1024
    kp_num_blocks: int = 5
    dm_expansion: int = 64
    dm_max_features: int = 1024
    dm_num_blocks: int = 5
    gen_expansion: int = 64
    gen_max_features: int = 512
    gen_num_down: int = 2
    gen_num_bottleneck: int = 6
    # Extension (not in the published FOMM): the generator also predicts a mask that blends
    # its output with the source image warped at full resolution by the same flow. Sharp
    # detail comes straight from the source instead of through a narrow decoder, and the flow
    # gets pixel-sharp gradients. Off for the published-width config.
    warp_blend: bool = False
    # Hybrid mode: the generator also takes a decoded low-resolution base-layer frame (an AV1
    # stream in the .kpc, kpcodec.media.baselayer), upsampled and moved to the frame's keypoints,
    # and fuses it at the bottleneck and at the output (kpcodec.models.generator).
    base_fusion: bool = False
    base_channels: int = 32
    # The base frame also added after each of the generator's up blocks (kpcodec.models.generator).
    base_skips: bool = False
    # The base frame corrects the keypoints' flow before the generator warps (kpcodec.models.generator).
    flow_refine: bool = False
    # A learned upsampler for the frames of a stream of the base layer alone, in place of the bicubic
    # one where a base frame is smaller than the model size (kpcodec.models.restorer): its width in
    # channels (0: none) and its depth in convolutions.
    base_restorer: int = 0
    restorer_depth: int = 6
    # The base frames the restorer sees: 1, or 3 (the one before and the one after too).
    restorer_frames: int = 1
    # The restorer also on base frames at the model size (not upsampled: AV1's artefacts only).
    restore_full: bool = False
    # A learned blend of the two moved base frames between base frames (kpcodec.models.between), in
    # place of the plain blend by distance: its width in channels (0: none), depth and unshuffle.
    between_refiner: int = 0
    between_depth: int = 6
    between_unshuffle: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


_FULL = ModelConfig("fomm-256-full")
_FAST = replace(_FULL, name="fomm-256-fast", kp_expansion=8, kp_max_features=256, dm_expansion=16,
                dm_max_features=256, gen_expansion=8, gen_max_features=64, gen_num_bottleneck=2, warp_blend=True)
_WIDE = replace(_FAST, name="fomm-256-fast-wide", gen_expansion=12, gen_max_features=96)
_TINY = ModelConfig("tiny", image_size=64, num_keypoints=4, kp_scale=0.5, kp_expansion=4, kp_max_features=16,
                    kp_num_blocks=3, dm_expansion=4, dm_max_features=16, dm_num_blocks=3, gen_expansion=4,
                    gen_max_features=16, gen_num_down=2, gen_num_bottleneck=1, warp_blend=True)
CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        _FULL,
        # Published widths halved / quartered: what 2 CPU cores can train and run in real time.
        replace(_FULL, name="fomm-256-half", kp_expansion=16, kp_max_features=512, dm_expansion=32,
                dm_max_features=512, gen_expansion=32, gen_max_features=256, warp_blend=True),
        replace(_FULL, name="fomm-256-quarter", kp_expansion=8, kp_max_features=256, dm_expansion=16,
                dm_max_features=256, gen_expansion=16, gen_max_features=128, warp_blend=True),
        # Real time on 2 cores: the quarter model's detector and dense motion with a generator
        # of half its width and 2 bottleneck blocks (a third of its per-frame compute).
        _FAST,
        # The fast model's generator grown without changing its function (kpcodec.train.grow),
        # to spend the ~20 CPU-ms a frame it leaves of real time: 6 bottleneck blocks, or 1.5x width.
        replace(_FAST, name="fomm-256-fast-deep", gen_num_bottleneck=6),
        _WIDE,
        # fomm-256-fast-wide + base-layer fusion, grown from it (its output without a base layer
        # is fast-wide's at step 0) and trained on frames that went through the AV1 base layer.
        replace(_WIDE, name="fomm-256-hybrid", base_fusion=True),
        # The same with a base-layer restorer (kpcodec.models.restorer) for streams of the base layer
        # alone; hybrid files render as with fomm-256-hybrid (the restorer is not on their path).
        replace(_WIDE, name="fomm-256-hybrid-restore", base_fusion=True, base_restorer=32),
        # The same with a restorer that also sees the base frames before and after.
        replace(_WIDE, name="fomm-256-hybrid-restore3", base_fusion=True, base_restorer=32, restorer_frames=3),
        # fomm-256-hybrid-restore, its restorer also on base frames at the model size (-v5).
        replace(_WIDE, name="fomm-256-hybrid-restore-full", base_fusion=True, base_restorer=32, restore_full=True),
        # fomm-256-hybrid-restore with a learned blend between base frames (kpcodec.models.between);
        # not shipped: trained in session 40, it stayed at the plain blend (+0.0001 SSIM, MODEL_CARD).
        replace(_WIDE, name="fomm-256-hybrid-between", base_fusion=True, base_restorer=32, between_refiner=48),
        # Grown from a trained fomm-256-hybrid (the new paths start at zero): the base frame also
        # corrects the keypoints' flow; and, in -refine, it is also added at the decoder's half and full sizes.
        replace(_WIDE, name="fomm-256-hybrid-flow", base_fusion=True, flow_refine=True),
        replace(_WIDE, name="fomm-256-hybrid-refine", base_fusion=True, base_skips=True, flow_refine=True),
        # For tests: tiny and fast, 64x64 frames, 4 keypoints (and the same with base fusion).
        _TINY,
        replace(_TINY, name="tiny-hybrid", base_fusion=True, base_channels=8),
    ]
}


@dataclass(frozen=True)
class Weights:
    config: str
    file: str
    sha256: str


def weights_dir() -> Path:
    return Path(str(resources.files("kpcodec") / "weights"))


def _read_weights_index() -> tuple[dict[str, Weights], str, str | None]:
    """kpcodec/weights/index.json: {"default": NAME, "default_hybrid": NAME (optional),
    "models": {NAME: {config, file, sha256}}}.

    Kept as data so that exporting a newly trained checkpoint is one script, not a code edit.
    """
    path = weights_dir() / "index.json"
    index = json.loads(path.read_text())
    models = {name: Weights(**entry) for name, entry in index["models"].items()}
    return models, index["default"], index.get("default_hybrid")


# Shipped weights, by model name (what a .kpc header records). The model name may differ
# from the config name so one config can ship several trained versions.
# DEFAULT_HYBRID_MODEL: the model a file with a base layer is made with unless --model says.
WEIGHTS, DEFAULT_MODEL, DEFAULT_HYBRID_MODEL = _read_weights_index()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_sha256(state: dict) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@lru_cache(maxsize=16)
def shipped_detector_fingerprint(file_sha256: str) -> str | None:
    """state_sha256 of the detector tensors in the shipped weights file with this sha256.

    Shipped models can share one detector (the fast ones reuse fomm-256-quarter's): their files
    differ but their keypoints are identical, so any of them renders the others' .kpc files.
    None if no shipped file has this sha256.
    """
    import torch

    for entry in WEIGHTS.values():
        if entry.sha256 == file_sha256:
            state = torch.load(weights_dir() / entry.file, map_location="cpu", weights_only=True)
            return state_sha256({k: v for k, v in state.items() if k.startswith("detector.")})
    return None


def get_config(name: str) -> ModelConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ModelError(f"unknown model config {name!r} (known: {', '.join(sorted(CONFIGS))})") from None


def get_weights(model: str) -> Weights:
    try:
        return WEIGHTS[model]
    except KeyError:
        raise ModelError(f"no shipped weights for model {model!r} (have: {', '.join(sorted(WEIGHTS)) or 'none'})") from None


def build_model(config: str):
    """An untrained model for a config (training, tests)."""
    from kpcodec.models.fomm import MotionModel

    return MotionModel(get_config(config))


def load_checkpoint(config: str, path) -> tuple:
    """(model in eval mode, the raw checkpoint dict) for a training checkpoint or a weights file
    of `config`, in any float dtype; for training, export and benchmarks (no sha256 check)."""
    import torch

    net = build_model(config)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    state = ck.get("model", ck)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net.eval(), ck


@lru_cache(maxsize=4)
def load_model(model: str | None = None, inference: bool = False):
    """The shipped model `model` (default: DEFAULT_MODEL), eval mode, fp32, sha256 checked.

    `inference`: folded norms and channels_last (kpcodec.models.inference), for the codec."""
    import torch

    entry = get_weights(model or DEFAULT_MODEL)
    path = weights_dir() / entry.file
    if not path.is_file():
        raise ModelError(f"weights file missing: {path}")
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise ModelError(f"weights {path.name} fail their sha256 check ({digest[:12]}… != {entry.sha256[:12]}…)")
    net = build_model(entry.config)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() for k, v in state.items()})
    if inference:
        from kpcodec.models.inference import prepare_for_inference

        return prepare_for_inference(net)
    return net.eval()

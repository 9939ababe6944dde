"""Filling in the keypoints of frames that were not sent.

A predictor turns the sent frames' keypoints into one (keypoints, Jacobians) pair for every
frame, streaming, in frame order, carrying its state from frame to frame. Causal predictors
use only frames already received (no added latency); interpolating ones (`interp`) wait for
the next sent frame.

Predictors are named entries of a registry, kpcodec/weights/predictors.json, next to the
motion models' index.json:

    {"default": NAME,
     "predictors": {NAME: {"kind": KIND, "config": {...}, "options": {...},
                           "file": "pred-NAME-<sha256[:8]>.pt", "sha256": "...", ...}}}

Kinds: `hold`, `linear` (damped velocity; config.damping), `interp` (numpy, here) and the
learned `rnn`, `vae`, `vrnn` and interpolating `rnn-interp` (kpcodec.models.predictor_nets; torch is imported only when one is
used, so this module and kpcodec.bitstream.container stay torch-free). Learned weights are small fp16
state dicts whose sha256 is checked on load. `options` tune inference: `sample` (draw the
latent instead of taking the prior mean; `seed`), `hold_jacobians` (predict keypoints only).
Learned predictors share their weights across keypoints, so they work for any K.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from kpcodec.errors import ModelError, UsageError
from kpcodec.models.registry import weights_dir

NUMPY_KINDS = ("hold", "linear", "interp")
LEARNED_KINDS = ("rnn", "vae", "vrnn", "rnn-interp")
INTERPOLATING_KINDS = ("interp", "rnn-interp")
DEFAULT_DAMPING = 0.8


def between(start: np.ndarray, end: np.ndarray, w):
    """Linear interpolation at fraction `w` (a number, or an array broadcast against the values)."""
    return (1 - w) * start + w * end


@dataclass(frozen=True)
class PredictorEntry:
    """One registry entry: a kind, its settings and (learned kinds) its weights file."""

    name: str
    kind: str
    config: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    file: str | None = None
    sha256: str | None = None
    description: str = ""

    @property
    def mode(self) -> str:
        return "interpolating" if self.kind in INTERPOLATING_KINDS else "causal"

    @property
    def learned(self) -> bool:
        return self.kind in LEARNED_KINDS


_BUILTIN = {
    "hold": PredictorEntry("hold", "hold", description="repeat the last sent frame"),
    "linear": PredictorEntry("linear", "linear", {"damping": DEFAULT_DAMPING},
                             description="damped-velocity extrapolation from the last two sent frames"),
    "interp": PredictorEntry("interp", "interp", description="linear interpolation to the next sent frame (latency)"),
}


def registry_path() -> Path:
    """The predictors' index, beside the models' in the one weights folder (models.registry)."""
    return weights_dir() / "predictors.json"


def read_registry(path: Path | None = None) -> tuple[dict[str, PredictorEntry], str]:
    """The built-in numpy predictors overlaid with kpcodec/weights/predictors.json."""
    entries = dict(_BUILTIN)
    default = "linear"
    path = path or registry_path()
    if path.is_file():
        data = json.loads(path.read_text())
        for name, e in data.get("predictors", {}).items():
            entries[name] = PredictorEntry(name, e["kind"], e.get("config", {}), e.get("options", {}),
                                           e.get("file"), e.get("sha256"), e.get("description", ""))
        default = data.get("default", default)
    if default not in entries:
        default = "linear"
    return entries, default


PREDICTORS, DEFAULT_PREDICTOR = read_registry()


def get_predictor(name: str) -> PredictorEntry:
    try:
        return PREDICTORS[name]
    except KeyError:
        raise UsageError(f"unknown predictor {name!r} (known: {', '.join(PREDICTORS)})") from None


def file_predictor(name: str | None) -> str:
    """The predictor to use for a file whose header names `name`: that one if this decoder
    has it, else the default (the container does not interpret the field; it may be empty)."""
    return name if name in PREDICTORS else DEFAULT_PREDICTOR


@lru_cache(maxsize=8)
def load_learned(name: str):
    """The learned predictor `name` in eval mode, fp32, its weights' sha256 checked."""
    import torch

    from kpcodec.models.predictor_nets import build_predictor
    from kpcodec.models.registry import sha256_file

    entry = get_predictor(name)
    if not entry.learned:
        raise UsageError(f"predictor {name!r} has no weights (kind {entry.kind})")
    path = weights_dir() / (entry.file or "")
    if not entry.file or not path.is_file():
        raise ModelError(f"weights file of predictor {name!r} missing: {path}")
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise ModelError(f"predictor weights {path.name} fail their sha256 check "
                         f"({digest[:12]}… != {(entry.sha256 or '')[:12]}…)")
    net = build_predictor({**entry.config, "kind": entry.kind})
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval()


Ahead = tuple  # (keypoints, Jacobians, frame number) of the next sent frame, for interpolating kinds


class Stepper:
    """One predictor run one frame at a time: every fill of unsent keypoints is this loop.

    Made with frame 0's (sent) keypoints; then, for each later frame in order, `predict(ahead)`
    gives that frame's (keypoints, Jacobians) as the decoder fills them, and `commit(sent, ahead)`
    moves on by one frame with the frame's sent values, or with None its prediction. `ahead` is the
    next sent frame after the current one, (kp, jac, frame), or None: only interpolating kinds
    (`interp`, `rnn-interp`) look at it, causal ones never wait for it. `options` override the
    registry entry's (sample, seed, hold_jacobians for learned kinds).
    """

    def __init__(self, predictor: str, kp0: np.ndarray, jac0: np.ndarray, ahead: Ahead | None = None,
                 **options):
        self.entry = entry = get_predictor(predictor)
        if entry.kind not in NUMPY_KINDS + LEARNED_KINDS:
            raise ModelError(f"predictor {predictor!r} has unknown kind {entry.kind!r}")
        self.options = {**entry.options, **options}
        self.t = 1  # the frame predict() is about
        self.sent = [(np.int64(0), kp0, jac0)]  # (frame, kp, jac) of the last two sent frames
        self.damping = float(entry.config.get("damping", DEFAULT_DAMPING))
        self.net = self.state = self._pending = None
        if entry.learned:
            import torch

            self._torch = torch
            self.net = load_learned(predictor)
            sample = bool(self.options.get("sample"))
            self._gen = torch.Generator().manual_seed(int(self.options.get("seed", 0))) if sample else None
            with torch.inference_mode():
                self.state = self.net.init_state(self._tensor(kp0), self._tensor(jac0), self._ahead(ahead, 0))

    def _tensor(self, x):
        return self._torch.from_numpy(np.asarray(x, np.float32))[None]

    def _ahead(self, ahead: Ahead | None, t: int):
        """A learned net's view of the next sent frame, seen from frame t."""
        if ahead is None or not self.net.lookahead:
            return None
        torch = self._torch
        return (self._tensor(ahead[0]), self._tensor(ahead[1]), torch.tensor([int(ahead[2]) - t]),
                torch.ones(1, dtype=torch.bool))

    def predict(self, ahead: Ahead | None = None) -> tuple[np.ndarray, np.ndarray]:
        i, kp, jac = self.sent[-1]
        kind = self.entry.kind
        if kind == "hold" or (kind == "linear" and len(self.sent) == 1):
            return kp, jac
        if kind == "linear":
            j, kp_before, _ = self.sent[-2]
            gap, span, d = np.int64(self.t - i), np.int64(i - j), self.damping
            # Sum of a geometric series: each further frame moves `damping` times the last.
            travel = gap if d == 1 else d * (1 - d ** gap) / (1 - d)
            return kp + (kp - kp_before) / span * travel, jac
        if kind == "interp":
            if ahead is None:
                return kp, jac
            w = np.int64(self.t - i) / (np.int64(ahead[2]) - i)
            return between(kp, ahead[0], w), between(jac, ahead[1], w)
        if self._pending is None:
            torch = self._torch
            with torch.inference_mode():
                pk, pj, state, _ = self.net.step(self.state, None, None, torch.zeros(1, dtype=torch.bool),
                                                 bool(self.options.get("sample")), self._gen,
                                                 self._ahead(ahead, self.t))
            pj = jac if self.options.get("hold_jacobians") else pj[0].numpy()
            self._pending = (pk[0].numpy(), pj, state)
        return self._pending[0], self._pending[1]

    def commit(self, sent: tuple[np.ndarray, np.ndarray] | None = None, ahead: Ahead | None = None) -> None:
        if self.net is not None:
            if sent is None:
                self.predict(ahead)
                self.state = self._pending[2]
            else:
                torch = self._torch
                with torch.inference_mode():
                    _, _, self.state, _ = self.net.step(self.state, self._tensor(sent[0]), self._tensor(sent[1]),
                                                        torch.ones(1, dtype=torch.bool), False, None,
                                                        self._ahead(ahead, self.t))
            self._pending = None
        if sent is not None:
            self.sent = [self.sent[-1], (np.int64(self.t), sent[0], sent[1])]
        self.t += 1


class OnlineFill(Stepper):
    """A causal, deterministic Stepper, for an encoder that decides what to send as it goes: its
    prediction of a frame depends on nothing sent later (adaptive keep; live mode)."""

    def __init__(self, predictor: str, kp0: np.ndarray, jac0: np.ndarray):
        entry = get_predictor(predictor)
        if entry.mode != "causal":
            raise UsageError(f"predictor {predictor!r} cannot run online (it needs later frames)")
        if entry.options.get("sample"):
            raise UsageError(f"predictor {predictor!r} samples: its predictions depend on what is sent later")
        super().__init__(predictor, kp0, jac0)


def _check_inputs(indices, kps, jacs, frame_count) -> np.ndarray:
    indices = np.asarray(indices)
    if len(indices) == 0 or indices[0] != 0:
        raise UsageError("frame 0 must be among the sent frames")
    if np.shape(kps)[0] != len(indices) or np.shape(jacs)[0] != len(indices):
        raise UsageError("one keypoint set per sent frame expected")
    return indices


def fill_keypoints(indices: np.ndarray, kps: np.ndarray, jacs: np.ndarray, frame_count: int,
                   predictor: str = DEFAULT_PREDICTOR, **options) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(keypoints (K,2), Jacobians (K,2,2)) for frames 0..frame_count-1, in order: a Stepper fed
    the sent frames (`indices`, their `kps` and `jacs`) and, for interpolating kinds, the next one.

    `options` override the registry entry's (sample, seed, hold_jacobians for learned kinds).
    """
    indices = _check_inputs(indices, kps, jacs, frame_count)
    interpolates = get_predictor(predictor).mode != "causal"

    def ahead(s: int):
        return (kps[s + 1], jacs[s + 1], indices[s + 1]) if interpolates and s + 1 < len(indices) else None

    stepper = Stepper(predictor, kps[0], jacs[0], ahead(0), **options)  # errors now, not at the first frame
    return _fill(stepper, indices, kps, jacs, frame_count, ahead)


def _fill(stepper: Stepper, indices, kps, jacs, frame_count: int, ahead):
    yield kps[0], jacs[0]
    s = 0
    for t in range(1, frame_count):
        if s + 1 < len(indices) and indices[s + 1] == t:
            s += 1
            stepper.commit((kps[s], jacs[s]), ahead(s))
            yield kps[s], jacs[s]
        else:
            kp, jac = stepper.predict(ahead(s))
            stepper.commit(None, ahead(s))
            yield kp, jac

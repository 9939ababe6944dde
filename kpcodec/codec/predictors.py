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


def _hold(indices, kps, jacs, frame_count) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    s = 0
    for t in range(frame_count):
        while s + 1 < len(indices) and indices[s + 1] <= t:
            s += 1
        yield kps[s], jacs[s]


def _linear(indices, kps, jacs, frame_count, damping: float = DEFAULT_DAMPING) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Damped-velocity extrapolation from the last two sent frames (causal)."""
    s = 0
    for t in range(frame_count):
        while s + 1 < len(indices) and indices[s + 1] <= t:
            s += 1
        gap = t - indices[s]
        if gap == 0 or s == 0:
            yield kps[s], jacs[s]
            continue
        span = indices[s] - indices[s - 1]
        velocity = (kps[s] - kps[s - 1]) / span
        # Sum of a geometric series: each further frame moves `damping` times the last.
        travel = gap if damping == 1 else damping * (1 - damping ** gap) / (1 - damping)
        yield kps[s] + velocity * travel, jacs[s]


def between(start: np.ndarray, end: np.ndarray, w):
    """Linear interpolation at fraction `w` (a number, or an array broadcast against the values)."""
    return (1 - w) * start + w * end


def _interp(indices, kps, jacs, frame_count) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Linear interpolation between the sent frames around each frame (adds latency)."""
    s = 0
    for t in range(frame_count):
        while s + 1 < len(indices) and indices[s + 1] <= t:
            s += 1
        if indices[s] == t or s + 1 == len(indices):
            yield kps[s], jacs[s]
            continue
        a = (t - indices[s]) / (indices[s + 1] - indices[s])
        yield between(kps[s], kps[s + 1], a), between(jacs[s], jacs[s + 1], a)


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


def _learned(net, indices, kps, jacs, frame_count, sample: bool = False, seed: int = 0,
             hold_jacobians: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream a learned predictor: one step per frame, the state carried along. Causal kinds
    see sent frames up to the current one; interpolating kinds also the next sent frame."""
    import torch

    def tensor(x):
        return torch.from_numpy(np.asarray(x, np.float32))[None]

    def ahead(t: int, s: int):
        """The next sent frame after frame t (s: the last sent at or before t)."""
        if not net.lookahead:
            return None
        if s + 1 >= len(indices):
            return None
        nxt = int(indices[s + 1])
        return tensor(kps[s + 1]), tensor(jacs[s + 1]), torch.tensor([nxt - t]), torch.ones(1, dtype=torch.bool)

    gen = torch.Generator().manual_seed(int(seed)) if sample else None
    sent_at = {int(i): s for s, i in enumerate(indices)}
    # Inference mode only around each step, never across a yield: torch's grad mode is
    # thread-local, so a mode entered here would stay on in the consumer's code between
    # frames (and for good in a generator that is dropped half-way).
    with torch.inference_mode():
        state = net.init_state(tensor(kps[0]), tensor(jacs[0]), ahead(0, 0))
    yield kps[0], jacs[0]
    last, last_jac = 0, jacs[0]
    yes, no = torch.ones(1, dtype=torch.bool), torch.zeros(1, dtype=torch.bool)
    for t in range(1, frame_count):
        s = sent_at.get(t)
        if s is None:
            with torch.inference_mode():
                kp, jac, state, _ = net.step(state, None, None, no, sample, gen, ahead(t, last))
            jac_out = last_jac if hold_jacobians else jac[0].numpy()
            yield kp[0].numpy(), jac_out
        else:
            last, last_jac = s, jacs[s]
            with torch.inference_mode():
                _, _, state, _ = net.step(state, tensor(kps[s]), tensor(jacs[s]), yes, False, None, ahead(t, s))
            yield kps[s], jacs[s]


class OnlineFill:
    """A causal predictor run one frame at a time, for an encoder that decides what to send.

    `predict()` gives the next frame's (keypoints, Jacobians) as the decoder would fill
    them; `commit(sent)` moves on by one frame, with that frame's sent values or, with
    None, the prediction. Fed the same sent frames, it yields exactly what
    `fill_keypoints` yields (tests check this); sampling predictors are not supported.
    """

    def __init__(self, predictor: str, kp0: np.ndarray, jac0: np.ndarray):
        self.entry = entry = get_predictor(predictor)
        if entry.mode != "causal" or entry.kind not in ("hold", "linear") + LEARNED_KINDS:
            raise UsageError(f"predictor {predictor!r} cannot run online (it needs later frames)")
        if entry.options.get("sample"):
            raise UsageError(f"predictor {predictor!r} samples: its predictions depend on what is sent later")
        self.t = 1  # the frame predict() is about
        self.sent = [(0, kp0, jac0)]  # (frame, kp, jac) of the last two sent frames
        self.damping = float(entry.config.get("damping", DEFAULT_DAMPING))
        self.net = self.state = self._pending = None
        if entry.learned:
            import torch

            self.net = load_learned(predictor)
            self._torch = torch
            with torch.inference_mode():
                self.state = self.net.init_state(self._tensor(kp0), self._tensor(jac0), None)

    def _tensor(self, x):
        return self._torch.from_numpy(np.asarray(x, np.float32))[None]

    def predict(self) -> tuple[np.ndarray, np.ndarray]:
        i, kp, jac = self.sent[-1]
        if self.entry.kind == "hold" or (self.entry.kind == "linear" and len(self.sent) == 1):
            return kp, jac
        if self.entry.kind == "linear":
            j, kp_before, _ = self.sent[-2]
            # int64 frame numbers, as fill_keypoints has them: the same numpy promotions
            gap, span, d = np.int64(self.t - i), np.int64(i - j), self.damping
            travel = gap if d == 1 else d * (1 - d ** gap) / (1 - d)
            return kp + (kp - kp_before) / span * travel, jac
        if self._pending is None:
            torch = self._torch
            with torch.inference_mode():
                pk, pj, state, _ = self.net.step(self.state, None, None, torch.zeros(1, dtype=torch.bool))
            pj = jac if self.entry.options.get("hold_jacobians") else pj[0].numpy()
            self._pending = (pk[0].numpy(), pj, state)
        return self._pending[0], self._pending[1]

    def commit(self, sent: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        if self.net is not None:
            if sent is None:
                self.predict()
                self.state = self._pending[2]
            else:
                torch = self._torch
                with torch.inference_mode():
                    _, _, self.state, _ = self.net.step(self.state, self._tensor(sent[0]), self._tensor(sent[1]),
                                                        torch.ones(1, dtype=torch.bool))
            self._pending = None
        if sent is not None:
            self.sent = [self.sent[-1], (self.t, sent[0], sent[1])]
        self.t += 1


def _check_inputs(indices, kps, jacs, frame_count) -> np.ndarray:
    indices = np.asarray(indices)
    if len(indices) == 0 or indices[0] != 0:
        raise UsageError("frame 0 must be among the sent frames")
    if np.shape(kps)[0] != len(indices) or np.shape(jacs)[0] != len(indices):
        raise UsageError("one keypoint set per sent frame expected")
    return indices


def fill_keypoints(indices: np.ndarray, kps: np.ndarray, jacs: np.ndarray, frame_count: int,
                   predictor: str = DEFAULT_PREDICTOR, **options) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(keypoints (K,2), Jacobians (K,2,2)) for frames 0..frame_count-1, in order.

    `options` override the registry entry's (sample, seed, hold_jacobians for learned kinds).
    """
    entry = get_predictor(predictor)
    indices = _check_inputs(indices, kps, jacs, frame_count)
    if entry.kind == "hold":
        return _hold(indices, kps, jacs, frame_count)
    if entry.kind == "linear":
        return _linear(indices, kps, jacs, frame_count, float(entry.config.get("damping", DEFAULT_DAMPING)))
    if entry.kind == "interp":
        return _interp(indices, kps, jacs, frame_count)
    if entry.learned:
        net = load_learned(predictor)
        return _learned(net, indices, kps, jacs, frame_count, **{**entry.options, **options})
    raise ModelError(f"predictor {predictor!r} has unknown kind {entry.kind!r}")

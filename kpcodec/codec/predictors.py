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

import copy

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


class Fill:
    """The decoder's keypoints of every frame, in order, from sent frames handed in as they come:
    a Stepper fed the sent frames and, for interpolating kinds, the next one.

    `sent(i, kp, jac)` gives the frames it settles, up to and including i (frames between two sent
    ones wait for the second); `restart=True` starts the predictor afresh at i (a .kpc 2.0
    keyframe: frames from i on decode alike whether the stream is entered there or not); `end(frame_count)` gives the frames after the
    last sent one. `options` override the registry entry's (sample, seed, hold_jacobians).
    """

    def __init__(self, predictor: str = DEFAULT_PREDICTOR, **options):
        self.predictor, self.options = predictor, options
        entry = get_predictor(predictor)
        if entry.learned:
            load_learned(predictor)  # its errors now, not at the second sent frame (it is cached)
        self.interpolates = entry.mode != "causal"
        self.stepper: Stepper | None = None
        self.last: tuple | None = None  # (frame, kp, jac) of the last sent frame, its commit pending
        self.settled = False  # the last sent frame is committed (ahead() predicted past it)
        self.next = 0  # the next frame to hand out

    def copy(self) -> Fill:
        """An independent copy (an encoder trying what the decoder would do). A learned predictor's
        net is shared: its state tensors are replaced at each step, never changed in place."""
        other = copy.copy(self)
        if self.stepper is not None:
            other.stepper = copy.copy(self.stepper)
            other.stepper.sent = list(self.stepper.sent)
        return other

    def _settle(self, ahead) -> None:
        """Commit the pending sent frame, now that the one after it is known (or there is none)."""
        if self.settled:
            return
        self.settled = True
        i, kp, jac = self.last
        ahead = ahead if self.interpolates else None
        if self.stepper is None:
            self.stepper = Stepper(self.predictor, kp, jac, ahead, **self.options)
        else:
            self.stepper.commit((kp, jac), ahead)

    def sent(self, i: int, kp: np.ndarray, jac: np.ndarray, restart: bool = False) -> list[tuple]:
        i = int(i)
        if i < self.next or (self.last is None and i != 0 and not restart):
            raise UsageError(f"sent frame {i} out of order (next frame {self.next}; frame 0 must come first)")
        out = []
        if self.last is not None:
            ahead = (kp, jac, np.int64(i))
            self._settle(ahead)
            out += self._between(i, ahead)
        if restart:
            self.stepper = None
        self.last, self.settled = (i, kp, jac), False
        out.append((kp, jac))
        self.next = i + 1
        return out

    def ahead(self, stop: int) -> list[tuple]:
        """Causal kinds: the frames from `next` up to `stop` (exclusive) predicted now, before the
        next sent frame is known (a live receiver renders a frame that will not be sent in its own
        slot instead of waiting for the next sent one). The same values as `sent` would give later;
        the next sent frame must then be `stop` or after. Interpolating kinds: none."""
        if self.interpolates or self.last is None or stop <= self.next:
            return []
        self._settle(None)
        return self._between(stop, None)

    def _between(self, stop: int, ahead) -> list[tuple]:
        ahead = ahead if self.interpolates else None
        out = []
        for _ in range(self.next, stop):
            kp, jac = self.stepper.predict(ahead)
            self.stepper.commit(None, ahead)
            out.append((kp, jac))
        self.next = max(self.next, stop)
        return out

    def end(self, frame_count: int) -> list[tuple]:
        if self.last is None:
            return []
        self._settle(None)
        self.last = (self.last[0], None, None)
        return self._between(frame_count, None)


def fill_keypoints(indices: np.ndarray, kps: np.ndarray, jacs: np.ndarray, frame_count: int,
                   predictor: str = DEFAULT_PREDICTOR, **options) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(keypoints (K,2), Jacobians (K,2,2)) for frames 0..frame_count-1, in order: a :class:`Fill`
    of the sent frames (`indices`, their `kps` and `jacs`).

    `options` override the registry entry's (sample, seed, hold_jacobians for learned kinds).
    """
    indices = _check_inputs(indices, kps, jacs, frame_count)
    return _fill(Fill(predictor, **options), indices, kps, jacs, frame_count)


def _fill(fill: Fill, indices, kps, jacs, frame_count: int):
    for s, i in enumerate(indices):
        yield from fill.sent(i, kps[s], jacs[s])
    yield from fill.end(frame_count)

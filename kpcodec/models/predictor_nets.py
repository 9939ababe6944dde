"""Learned keypoint predictors: `rnn` (GRU), `vae` (conditional VAE on a window of past
frames) and `vrnn` (Chung et al. 2015), all causal.

All three share one step interface so that training (batched, teacher-forced on sent
frames, free-running on skipped ones) and decoding (one frame at a time, state carried from
frame to frame) run the very same code:

    state = model.init_state(kp0, jac0)                       # frame 0 is always sent
    pred_kp, pred_jac, state, terms = model.step(state, kp, jac, sent)

`step` predicts the next frame from the state, then advances the state with the true
keypoints where `sent` is true and with its own prediction elsewhere. `kp`/`jac` may be None
when nothing is sent (decoding a skipped frame).

Every keypoint runs through the same network (weights shared across keypoints) with the
mean of all keypoints' features as context, so a predictor works for any number of
keypoints K and does not depend on which keypoint a detector put where. Inputs are
normalised relative to the latest frame and the last received frame (velocity, offset from
the last sent frame, position relative to the keypoints' centroid) so they carry over
between people; outputs are the scaled change from the latest frame.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

KINDS = ("rnn", "vae", "vrnn", "rnn-interp")
FEATURES = 20  # per keypoint, see _features
GLOBAL = 6  # mean over keypoints of velocity (2) and Jacobian velocity (4)
AHEAD = 8  # interpolating kinds: offset of the next sent frame (6), whether there is one, how far


@dataclass(frozen=True)
class PredictorConfig:
    kind: str = "rnn"
    hidden: int = 48  # GRU state per keypoint (rnn, vrnn)
    mlp: int = 64  # width of the small MLPs
    layers: int = 1  # their hidden layers
    latent: int = 4  # z per keypoint (vae, vrnn)
    window: int = 8  # past frames seen by the vae
    mix: int = 16  # cross-keypoint context from the mean GRU state
    kp_scale: float = 50.0  # [-1,1] units -> network units (0.02 = 2.55 px at 256 -> 1)
    jac_scale: float = 20.0
    max_gap: float = 24.0  # gap feature is gap / max_gap

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(i: int, h: int, o: int, layers: int = 1) -> nn.Sequential:
    """`layers` hidden layers of width h."""
    parts: list[nn.Module] = []
    for _ in range(layers):
        parts += [nn.Linear(i, h), nn.SiLU()]
        i = h
    return nn.Sequential(*parts, nn.Linear(i, o))


def _zero_last(seq: nn.Sequential) -> None:
    """Start every output at zero: an untrained predictor holds the last frame."""
    nn.init.zeros_(seq[-1].weight)
    nn.init.zeros_(seq[-1].bias)


_EYE = torch.tensor([1.0, 0.0, 0.0, 1.0])


class KeypointPredictor(nn.Module):
    """Common state bookkeeping and input features; subclasses add the networks.

    Kinds ending in `-interp` also see the next sent frame (its keypoints relative to the
    latest frame and how many frames away it is): they interpolate, which adds latency.
    """

    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.cfg = cfg
        self.lookahead = cfg.kind.endswith("-interp")
        self.inputs = FEATURES + GLOBAL + (AHEAD if self.lookahead else 0)

    # -- state ---------------------------------------------------------------------------
    def init_state(self, kp: torch.Tensor, jac: torch.Tensor, ahead=None) -> dict:
        """kp (N,K,2), jac (N,K,2,2) of frame 0 (sent); `ahead` as for `step`."""
        n, k, _ = kp.shape
        j = jac.reshape(n, k, 4)
        sent = torch.ones(n, dtype=torch.bool, device=kp.device)
        state = {"kp": kp, "jac": j, "dkp": torch.zeros_like(kp), "djac": torch.zeros_like(j),
                 "anchor_kp": kp, "anchor_jac": j, "gap": torch.zeros(n, device=kp.device), "sent": sent,
                 "true_kp": kp, "true_jac": j, **self._ahead(ahead, kp, j)}
        return self._init_model_state(state)

    def _ahead(self, ahead, kp: torch.Tensor, jac: torch.Tensor) -> dict:
        """The next sent frame after the current one: (kp (N,K,2), jac (N,K,2,2), frames away (N,),
        exists (N,) bool) or None for none; kept only by interpolating kinds."""
        if not self.lookahead:
            return {}
        n, k, _ = kp.shape
        if ahead is None:
            z = torch.zeros(n, device=kp.device)
            return {"next_kp": kp, "next_jac": jac, "to_next": z, "has_next": z}
        nkp, njac, dist, has = ahead
        return {"next_kp": nkp, "next_jac": njac.reshape(n, k, 4), "to_next": dist.float(), "has_next": has.float()}

    def _advance(self, state: dict, kp: torch.Tensor, jac: torch.Tensor, sent: torch.Tensor, ahead=None,
                 truth=None) -> dict:
        """The bookkeeping part of a state update, with this frame's (N,K,2)/(N,K,4) values;
        `truth` (training: the true values even where not sent) feeds the latent's target."""
        s = sent.view(-1, 1, 1)
        true_kp, true_jac = truth if truth is not None and truth[0] is not None else (kp, jac)
        return {"kp": kp, "jac": jac, "dkp": kp - state["kp"], "djac": jac - state["jac"],
                "anchor_kp": torch.where(s, kp, state["anchor_kp"]),
                "anchor_jac": torch.where(s, jac, state["anchor_jac"]),
                "gap": torch.where(sent, torch.zeros_like(state["gap"]), state["gap"] + 1), "sent": sent,
                "true_kp": true_kp, "true_jac": true_jac, **self._ahead(ahead, kp, jac)}

    def _features(self, st: dict) -> torch.Tensor:
        """(N,K,FEATURES+GLOBAL) inputs describing the latest frame, for predicting the next."""
        c = self.cfg
        kp, jac = st["kp"], st["jac"]
        n, k, _ = kp.shape
        vel = st["dkp"] * c.kp_scale
        jvel = st["djac"] * c.jac_scale
        per = torch.cat([
            vel, (kp - st["anchor_kp"]) * c.kp_scale, jvel, (jac - st["anchor_jac"]) * c.jac_scale,
            (kp - kp.mean(dim=1, keepdim=True)) * 2.0, jac - _EYE.to(jac),
            st["sent"].float().view(n, 1, 1).expand(n, k, 1),
            ((st["gap"] + 1) / c.max_gap).view(n, 1, 1).expand(n, k, 1),
        ], dim=-1)
        glob = torch.cat([vel, jvel], dim=-1).mean(dim=1, keepdim=True).expand(n, k, GLOBAL)
        parts = [per, glob]
        if self.lookahead:
            has = st["has_next"].view(n, 1, 1)
            parts.append(torch.cat([
                (st["next_kp"] - kp) * c.kp_scale * has, (st["next_jac"] - jac) * c.jac_scale * has,
                has.expand(n, k, 1), (st["to_next"] / c.max_gap).view(n, 1, 1).expand(n, k, 1)], -1))
        return torch.cat(parts, dim=-1).clamp(-10.0, 10.0)

    def _apply(self, st: dict, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network output (N,K,6), scaled change from the latest frame -> (kp, jac (N,K,4))."""
        return st["kp"] + out[..., :2] / self.cfg.kp_scale, st["jac"] + out[..., 2:] / self.cfg.jac_scale

    def _target(self, st: dict, kp: torch.Tensor, jac: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
        """What the latent encodes, in network units (N,K,6): for a sent frame its change from
        the latest (maybe predicted) frame, as the decoder sees it; for a predicted frame (in
        training) the true motion since the previous frame, so that the prior models motion,
        not the correction of errors accumulated over a gap (samples stay sensible)."""
        s = sent.view(-1, 1, 1)
        ref_kp = torch.where(s, st["kp"], st["true_kp"])
        ref_jac = torch.where(s, st["jac"], st["true_jac"])
        return torch.cat([(kp - ref_kp) * self.cfg.kp_scale, (jac - ref_jac) * self.cfg.jac_scale], -1)

    # -- the step ------------------------------------------------------------------------
    def step(self, state: dict, kp: torch.Tensor | None, jac: torch.Tensor | None, sent: torch.Tensor,
             sample: bool = False, generator: torch.Generator | None = None, ahead=None):
        """Predict the next frame; advance with the truth where `sent`, the prediction elsewhere.

        kp (N,K,2), jac (N,K,2,2) of the next frame, or None (then `sent` must be all false).
        `ahead` (interpolating kinds): the next sent frame after that one, see `_ahead`.
        Returns predicted kp (N,K,2), jac (N,K,2,2), the new state and a dict of loss terms
        (empty unless the truth was given and the model has a latent).
        """
        n, k, _ = state["kp"].shape
        j = jac.reshape(n, k, 4) if jac is not None else None
        pred_kp, pred_jac, new_state, terms = self._step(state, kp, j, sent, sample, generator, ahead)
        for name in ("rec_jac", "rec_ref_jac"):
            if name in terms:
                terms[name] = terms[name].reshape(n, k, 2, 2)
        return pred_kp, pred_jac.reshape(n, k, 2, 2), new_state, terms

    def _init_model_state(self, state: dict) -> dict:
        raise NotImplementedError

    def _step(self, state, kp, jac, sent, sample, generator, ahead):
        raise NotImplementedError


def _gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(q || p) of diagonal Gaussians, summed over the last dim."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


def _draw(mu, logvar, generator=None) -> torch.Tensor:
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + eps * (0.5 * logvar).exp()


class _Recurrent(KeypointPredictor):
    """A GRU per keypoint (shared weights) with the mean state of all keypoints as context."""

    z_in = 0

    def __init__(self, cfg: PredictorConfig):
        super().__init__(cfg)
        self.mix = nn.Linear(cfg.hidden, cfg.mix)
        self.gru = nn.GRUCell(self.inputs + cfg.mix + self.z_in, cfg.hidden)

    def _recur(self, st: dict, h: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        x = self._features(st)
        n, k, _ = x.shape
        hk = h.view(n, k, -1)
        ctx = self.mix(hk.mean(dim=1, keepdim=True)).expand(n, k, -1)
        parts = [x, ctx] + ([extra] if extra is not None else [])
        return self.gru(torch.cat(parts, -1).reshape(n * k, -1), h)


class RNNPredictor(_Recurrent):
    """GRU: h_t = GRU(features of frame t, h_{t-1}); the next frame's change = MLP(h_t)."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__(cfg)
        self.head = _mlp(cfg.hidden, cfg.mlp, 6, cfg.layers)
        _zero_last(self.head)

    def _init_model_state(self, state: dict) -> dict:
        n, k, _ = state["kp"].shape
        h = torch.zeros(n * k, self.cfg.hidden, device=state["kp"].device)
        return {**state, "h": self._recur(state, h)}

    def _step(self, st, kp, jac, sent, sample, generator, ahead):
        n, k, _ = st["kp"].shape
        pred_kp, pred_jac = self._apply(st, self.head(st["h"]).view(n, k, 6))
        s = sent.view(-1, 1, 1)
        new = self._advance(st, torch.where(s, kp, pred_kp) if kp is not None else pred_kp,
                            torch.where(s, jac, pred_jac) if jac is not None else pred_jac, sent, ahead)
        new["h"] = self._recur(new, st["h"])
        return pred_kp, pred_jac, new, {}


class VRNNPredictor(_Recurrent):
    """VRNN (Chung et al. 2015) per keypoint: prior p(z_t|h_{t-1}), encoder q(z_t|phi_x(x_t),h_{t-1}),
    decoder p(x_t|phi_z(z_t),h_{t-1}) and recurrence h_t = GRU([f_t, phi_z(z_t)], h_{t-1}), where
    the frame features f_t (as for `rnn`) contain x_t, the frame's change from the previous one.

    x_t is in network units; the decoder gives a point estimate, scored by the same distance
    as every prediction (keypoint error in pixels plus Jacobian L1: the negative log-likelihood
    of a fixed-scale density, up to constants). Training adds to reconstruction + KL a
    prediction term through the prior's mean,
    which is what decoding uses. Where a frame is sent
    the state advances with z from the encoder (a sample in training, its mean when
    decoding); where it is predicted, with the prior's mean (or a sample) and the decoded x.
    """

    def __init__(self, cfg: PredictorConfig):
        self.z_in = cfg.mlp // 4
        super().__init__(cfg)
        z, m = cfg.latent, cfg.mlp
        self.phi_z = nn.Sequential(nn.Linear(z, self.z_in), nn.SiLU())
        self.phi_x = nn.Sequential(nn.Linear(6, m // 2), nn.SiLU())
        # All three also see whether the frame is sent (a receiver knows which frames arrived).
        self.prior = _mlp(cfg.hidden + 1, m, 2 * z, cfg.layers)
        self.encoder = _mlp(cfg.hidden + m // 2 + 1, m, 2 * z, cfg.layers)
        self.decoder = _mlp(cfg.hidden + self.z_in + 1, m, 6, cfg.layers)
        _zero_last(self.decoder)
        _zero_last(self.prior)

    def _init_model_state(self, state: dict) -> dict:
        n, k, _ = state["kp"].shape
        h = torch.zeros(n * k, self.cfg.hidden, device=state["kp"].device)
        z = torch.zeros(n, k, self.z_in, device=h.device)
        return {**state, "h": self._recur(state, h, z)}

    def _step(self, st, kp, jac, sent, sample, generator, ahead):
        n, k, _ = st["kp"].shape
        h = st["h"]
        flag = sent.float().repeat_interleave(k).view(-1, 1)
        mu_p, logvar_p = self.prior(torch.cat([h, flag], -1)).chunk(2, dim=-1)
        logvar_p = logvar_p.clamp(-8, 8)
        z_p = _draw(mu_p, logvar_p, generator) if sample else mu_p
        pred_kp, pred_jac = self._apply(st, self.decoder(torch.cat([h, self.phi_z(z_p), flag], -1)).view(n, k, 6))
        terms = {}
        z_used = z_p
        if kp is not None:
            x = self._target(st, kp, jac, sent)
            mu_q, logvar_q = self.encoder(torch.cat([h, self.phi_x(x.reshape(n * k, 6)), flag], -1)).chunk(2, dim=-1)
            logvar_q = logvar_q.clamp(-8, 8)
            z_q = _draw(mu_q, logvar_q, generator) if (self.training or sample) else mu_q
            rec = self.decoder(torch.cat([h, self.phi_z(z_q), flag], -1)).view(n, k, 6)
            rec_kp, rec_jac = self._apply(st, rec)
            ref_kp, ref_jac = self._apply(st, x)
            terms = {"rec_kp": rec_kp, "rec_jac": rec_jac, "rec_ref_kp": ref_kp, "rec_ref_jac": ref_jac,
                     "kl": _gaussian_kl(mu_q, logvar_q, mu_p, logvar_p).view(n, k)}
            z_used = torch.where(flag > 0, z_q, z_p)
        s = sent.view(-1, 1, 1)
        new = self._advance(st, torch.where(s, kp, pred_kp) if kp is not None else pred_kp,
                            torch.where(s, jac, pred_jac) if jac is not None else pred_jac, sent, ahead, (kp, jac))
        new["h"] = self._recur(new, h, self.phi_z(z_used).view(n, k, -1))
        return pred_kp, pred_jac, new, terms


class VAEPredictor(KeypointPredictor):
    """Conditional VAE, no recurrence: the condition is a window of the last `window` frames
    (received or predicted) relative to the latest one, with their sent flags; prior
    p(z|c), encoder q(z|c,x), decoder p(x|c,z); z is drawn afresh for every frame."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__(cfg)
        w, z, m = cfg.window, cfg.latent, cfg.mlp
        self.cond_dim = 7 * w + 2 * w + self.inputs
        self.cond = nn.Sequential(nn.Linear(self.cond_dim, m), nn.SiLU())
        self.prior = _mlp(m + 1, m, 2 * z, cfg.layers)  # + whether the frame is sent, as for vrnn
        self.encoder = _mlp(m + 6 + 1, m, 2 * z, cfg.layers)
        self.decoder = _mlp(m + z + 1, m, 6, cfg.layers)
        _zero_last(self.decoder)
        _zero_last(self.prior)

    def _init_model_state(self, state: dict) -> dict:
        w = self.cfg.window
        return {**state, "win_kp": state["kp"].unsqueeze(2).expand(-1, -1, w, -1),  # (N,K,W,2)
                "win_jac": state["jac"].unsqueeze(2).expand(-1, -1, w, -1),
                "win_sent": state["sent"].float().unsqueeze(1).expand(-1, w)}

    def _condition(self, st: dict) -> torch.Tensor:
        c = self.cfg
        n, k, _ = st["kp"].shape
        rel_kp = ((st["win_kp"] - st["kp"].unsqueeze(2)) * c.kp_scale).reshape(n, k, -1)  # (N,K,W*2)
        rel_jac = ((st["win_jac"] - st["jac"].unsqueeze(2)) * c.jac_scale).reshape(n, k, -1)
        per = torch.cat([rel_kp, rel_jac, st["win_sent"].unsqueeze(1).expand(n, k, -1)], -1).clamp(-10.0, 10.0)
        glob = rel_kp.mean(dim=1, keepdim=True).expand(n, k, -1).clamp(-10.0, 10.0)
        return self.cond(torch.cat([per, glob, self._features(st)], -1))

    def _step(self, st, kp, jac, sent, sample, generator, ahead):
        n, k, _ = st["kp"].shape
        c = self._condition(st)
        flag = sent.float().view(n, 1, 1).expand(n, k, 1)
        mu_p, logvar_p = self.prior(torch.cat([c, flag], -1)).chunk(2, dim=-1)
        logvar_p = logvar_p.clamp(-8, 8)
        z_p = _draw(mu_p, logvar_p, generator) if sample else mu_p
        pred_kp, pred_jac = self._apply(st, self.decoder(torch.cat([c, z_p, flag], -1)))
        terms = {}
        if kp is not None:
            x = self._target(st, kp, jac, sent)
            mu_q, logvar_q = self.encoder(torch.cat([c, x, flag], -1)).chunk(2, dim=-1)
            logvar_q = logvar_q.clamp(-8, 8)
            z_q = _draw(mu_q, logvar_q, generator) if self.training else mu_q
            rec_kp, rec_jac = self._apply(st, self.decoder(torch.cat([c, z_q, flag], -1)))
            ref_kp, ref_jac = self._apply(st, x)
            terms = {"rec_kp": rec_kp, "rec_jac": rec_jac, "rec_ref_kp": ref_kp, "rec_ref_jac": ref_jac,
                     "kl": _gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)}
        s = sent.view(-1, 1, 1)
        new = self._advance(st, torch.where(s, kp, pred_kp) if kp is not None else pred_kp,
                            torch.where(s, jac, pred_jac) if jac is not None else pred_jac, sent, ahead, (kp, jac))
        new["win_kp"] = torch.cat([st["win_kp"][:, :, 1:], new["kp"].unsqueeze(2)], 2)
        new["win_jac"] = torch.cat([st["win_jac"][:, :, 1:], new["jac"].unsqueeze(2)], 2)
        new["win_sent"] = torch.cat([st["win_sent"][:, 1:], sent.float().unsqueeze(1)], 1)
        return pred_kp, pred_jac, new, terms


_CLASSES = {"rnn": RNNPredictor, "vae": VAEPredictor, "vrnn": VRNNPredictor, "rnn-interp": RNNPredictor}


def build_predictor(cfg: PredictorConfig | dict) -> KeypointPredictor:
    if isinstance(cfg, dict):
        cfg = PredictorConfig(**cfg)
    if cfg.kind not in _CLASSES:
        raise ValueError(f"unknown learned predictor kind {cfg.kind!r} (known: {', '.join(_CLASSES)})")
    return _CLASSES[cfg.kind](cfg)


def rollout(model: KeypointPredictor, kp: torch.Tensor, jac: torch.Tensor, sent: torch.Tensor,
            sample: bool = False, generator: torch.Generator | None = None):
    """Run a predictor over whole windows: kp (N,T,K,2), jac (N,T,K,2,2), sent (N,T) bool
    with sent[:, 0] true. Returns predictions for frames 1..T-1 (kp (N,T-1,K,2), jac
    (N,T-1,K,2,2)) and the per-frame loss terms stacked on dim 1."""
    ahead = next_sent(kp, jac, sent) if model.lookahead else None

    def at(t):
        return None if ahead is None else tuple(a[:, t] for a in ahead)

    state = model.init_state(kp[:, 0], jac[:, 0], at(0))
    preds_kp, preds_jac, terms = [], [], {}
    for t in range(1, kp.shape[1]):
        p, j, state, tt = model.step(state, kp[:, t], jac[:, t], sent[:, t], sample, generator, at(t))
        preds_kp.append(p)
        preds_jac.append(j)
        for name, v in tt.items():
            terms.setdefault(name, []).append(v)
    return (torch.stack(preds_kp, 1), torch.stack(preds_jac, 1),
            {name: torch.stack(v, 1) for name, v in terms.items()})


def next_sent(kp: torch.Tensor, jac: torch.Tensor, sent: torch.Tensor):
    """For every frame t of (N,T) windows, the first sent frame after t: its kp (N,T,K,2),
    jac (N,T,K,2,2), distance (N,T) and whether there is one (N,T)."""
    n, t = sent.shape
    pos = torch.arange(t).expand(n, t)
    later = torch.where(sent, pos, t)
    later = torch.cat([later[:, 1:], torch.full((n, 1), t)], 1)  # frames strictly after t
    first = later.flip(1).cummin(1).values.flip(1)
    has = first < t
    idx = first.clamp(max=t - 1)
    nkp = torch.gather(kp, 1, idx.view(n, t, 1, 1).expand_as(kp))
    njac = torch.gather(jac, 1, idx.view(n, t, 1, 1, 1).expand_as(jac))
    return nkp, njac, torch.where(has, first - pos, 0), has


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


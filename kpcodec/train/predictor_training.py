"""Training, validation and shipping of the learned keypoint predictors (rnn, vae, vrnn).

    kpcodec train-predictor --kind vrnn --trajectories runs/cache/trajectories --out runs/pred-vrnn \\
        [--resume] [--steps N]
    python -m kpcodec.train.predictor_training export runs/pred-vrnn --name vrnn [--default]
    python -m kpcodec.train.predictor_training tune-linear --trajectories runs/cache/trajectories

Data: random windows of `window` frames from the train-split trajectories
(kpcodec.train.trajectories), each with a random send pattern (keep-every 2, 3, 4 or the
12:12 block scheme, random phase, first frame sent), mirrored / time-reversed / shifted at
random. The predictor is teacher-forced on sent frames and runs free on the others, exactly
as when decoding. Loss: keypoint error in pixels at 256x256 (weight 1 on predicted frames,
`w_sent` on sent ones, which it also predicts one frame ahead) plus Jacobian L1, and for
vae/vrnn the reconstruction through the encoder's latent and beta x KL(q||p).

Conventions as the motion trainer: `<out>/checkpoint.pt` (weights, optimiser, step, CPU time,
RNG, config) rewritten atomically every few minutes and on SIGINT/SIGTERM, `<out>/log.jsonl`,
progress on stderr, a seed; `<out>/weights-fp16.pt` is what `export` ships.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from kpcodec.train.meter import StepMeter
from kpcodec.errors import UsageError
from kpcodec.models.predictor_nets import KINDS, PredictorConfig, build_predictor, parameter_count, rollout
from kpcodec.codec.patterns import SendPattern
from kpcodec.train.trajectories import load_trajectories

PX = 127.5  # [-1,1] units -> pixels at 256x256
TRAIN_PATTERNS = (SendPattern(1, 1), SendPattern(1, 2), SendPattern(1, 3), SendPattern(12, 12))
VAL_PATTERNS = TRAIN_PATTERNS


@dataclass(frozen=True)
class PredictorRecipe:
    batch: int = 32
    window: int = 32
    lr: float = 2e-3
    lr_final: float = 2e-4  # cosine decay to this over `steps`
    w_sent: float = 0.2
    w_jac: float = 25.0  # Jacobian L1 (sum of 4 entries) -> about pixels of motion at 0.2 units away
    beta: float = 0.5  # KL weight (vae, vrnn) ...
    kl_warmup: float = 0.25  # ... ramped up from 0 over this share of the steps (else the latent collapses)
    w_rec: float = 1.0  # reconstruction through q(z|x) (vae, vrnn)
    w_pred: float = 1.0  # prediction through the prior mean (vae, vrnn)
    shift: float = 0.1  # random global shift of the keypoints, [-1,1] units
    val_windows: int = 48  # per pattern
    val_length: int = 64


def augment(kp: np.ndarray, jac: np.ndarray, rng: np.random.Generator, shift: float):
    """Mirror, reverse in time and shift a batch of windows (N,T,K,2) / (N,T,K,2,2)."""
    kp, jac = kp.copy(), jac.copy()
    n = len(kp)
    flip = rng.random(n) < 0.5
    kp[flip, ..., 0] *= -1
    jac[flip, ..., 0, 1] *= -1  # M J M with M = diag(-1, 1)
    jac[flip, ..., 1, 0] *= -1
    rev = rng.random(n) < 0.5
    kp[rev] = kp[rev, ::-1]
    jac[rev] = jac[rev, ::-1]
    kp += rng.uniform(-shift, shift, (n, 1, 1, 2)).astype(np.float32)
    return kp, jac


def pattern_mask(pattern: SendPattern, length: int, phase: int) -> np.ndarray:
    t = np.arange(length)
    sent = (t + phase) % pattern.period < pattern.send
    sent[0] = True
    return sent


class WindowSampler:
    """Random windows from a list of trajectories, clips weighted by length."""

    def __init__(self, trajs: list[dict], window: int, seed: int):
        self.trajs = [t for t in trajs if len(t["kp"]) >= window]
        if not self.trajs:
            raise UsageError(f"no trajectory with at least {window} frames")
        lengths = np.array([len(t["kp"]) - window + 1 for t in self.trajs], dtype=np.float64)
        self.p = lengths / lengths.sum()
        self.window = window
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int, shift: float, patterns=TRAIN_PATTERNS):
        kps, jacs, masks = [], [], []
        for _ in range(size):
            tr = self.trajs[self.rng.choice(len(self.trajs), p=self.p)]
            start = self.rng.integers(0, len(tr["kp"]) - self.window + 1)
            kps.append(tr["kp"][start:start + self.window])
            jacs.append(tr["jac"][start:start + self.window])
            pat = patterns[self.rng.integers(len(patterns))]
            masks.append(pattern_mask(pat, self.window, int(self.rng.integers(pat.send))))
        kp, jac = augment(np.stack(kps), np.stack(jacs), self.rng, shift)
        return torch.from_numpy(kp), torch.from_numpy(jac), torch.from_numpy(np.stack(masks))


def fixed_windows(trajs: list[dict], pattern: SendPattern, count: int, length: int, seed: int):
    """A reproducible validation set: `count` windows of `length` frames, phase 0."""
    rng = np.random.default_rng(seed)
    pool = [t for t in trajs if len(t["kp"]) >= length]
    kps, jacs = [], []
    for i in range(count):
        tr = pool[i % len(pool)]
        start = rng.integers(0, len(tr["kp"]) - length + 1)
        kps.append(tr["kp"][start:start + length])
        jacs.append(tr["jac"][start:start + length])
    mask = np.broadcast_to(pattern_mask(pattern, length, 0), (count, length)).copy()
    return torch.from_numpy(np.stack(kps)), torch.from_numpy(np.stack(jacs)), torch.from_numpy(mask)


def errors(pred_kp, pred_jac, kp, jac):
    """Per keypoint and frame: position error in px, Jacobian L1 (sum of 4 entries)."""
    e_kp = (pred_kp - kp).pow(2).sum(-1).add(1e-12).sqrt() * PX
    e_jac = (pred_jac - jac).abs().sum((-1, -2))
    return e_kp, e_jac


def loss_terms(model, recipe: PredictorRecipe, kp, jac, sent, beta: float | None = None) -> tuple[torch.Tensor, dict]:
    pred_kp, pred_jac, terms = rollout(model, kp, jac, sent)
    truth_kp, truth_jac, s = kp[:, 1:], jac[:, 1:], sent[:, 1:]
    w = torch.where(s, recipe.w_sent, 1.0).unsqueeze(-1)  # (N,T-1,1)
    e_kp, e_jac = errors(pred_kp, pred_jac, truth_kp, truth_jac)
    denom = w.sum() * kp.shape[2]
    pred = ((e_kp + recipe.w_jac * e_jac) * w).sum() / denom
    skipped = ~s
    rec = {"kp_px_skipped": (e_kp * skipped.unsqueeze(-1)).sum().item() / max(skipped.sum().item() * kp.shape[2], 1),
           "jac_l1_skipped": (e_jac * skipped.unsqueeze(-1)).sum().item() / max(skipped.sum().item() * kp.shape[2], 1)}
    total = pred
    if "kl" in terms:
        # Reconstruction against what the latent encodes (kpcodec.models.predictor_nets._target).
        r_kp, r_jac = errors(terms["rec_kp"], terms["rec_jac"], terms["rec_ref_kp"], terms["rec_ref_jac"])
        recon = (r_kp + recipe.w_jac * r_jac).mean()
        kl = terms["kl"].mean()
        total = recipe.w_pred * pred + recipe.w_rec * recon + (recipe.beta if beta is None else beta) * kl
        rec.update(recon=recon.item(), kl=kl.item())
    rec["pred"] = pred.item()
    rec["total"] = total.item()
    return total, rec


@torch.no_grad()
def validate(model, val_sets: dict, sample: bool = False) -> dict:
    """Mean errors on the skipped frames of the fixed val windows, per pattern and overall."""
    was = model.training
    model.eval()
    out = {}
    gen = torch.Generator().manual_seed(0) if sample else None
    for name, (kp, jac, sent) in val_sets.items():
        pred_kp, pred_jac, _ = rollout(model, kp, jac, sent, sample=sample, generator=gen)
        e_kp, e_jac = errors(pred_kp, pred_jac, kp[:, 1:], jac[:, 1:])
        skipped = ~sent[:, 1:]
        out[f"kp_px/{name}"] = e_kp[skipped].mean().item()
        out[f"jac_l1/{name}"] = e_jac[skipped].mean().item()
    out["kp_px"] = float(np.mean([v for k, v in out.items() if k.startswith("kp_px/")]))
    out["jac_l1"] = float(np.mean([v for k, v in out.items() if k.startswith("jac_l1/")]))
    model.train(was)
    return out


def hold_errors(val_sets: dict) -> dict:
    """The same measure for `hold` (prediction = last sent frame), as a yardstick in the log."""
    out = {}
    for name, (kp, jac, sent) in val_sets.items():
        idx = torch.cummax(torch.where(sent, torch.arange(sent.shape[1]), 0), dim=1).values
        held_kp = torch.gather(kp, 1, idx.view(*idx.shape, 1, 1).expand_as(kp))
        skipped = ~sent
        e = (held_kp - kp).pow(2).sum(-1).sqrt() * PX
        out[f"kp_px/{name}"] = e[skipped].mean().item()
    out["kp_px"] = float(np.mean(list(out.values())))
    return out


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fp16_bytes(model) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().to(torch.float16) for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


class PredictorTrainer:
    def __init__(self, kind: str, trajectories: Path, out_dir: Path, seed: int = 0, threads: int = 1,
                 recipe: PredictorRecipe | None = None, config: PredictorConfig | None = None):
        if kind not in KINDS:
            raise UsageError(f"--kind must be one of {', '.join(KINDS)} (got {kind!r})")
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.kind = kind
        self.recipe = recipe or PredictorRecipe()
        self.cfg = replace(config or PredictorConfig(), kind=kind)
        self.model = build_predictor(self.cfg)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.recipe.lr)
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.trajectories = Path(trajectories)
        self.seed = seed
        self.step = 0
        self.cpu_seconds = 0.0
        self.best = None
        self._stop = False

    def load_data(self) -> None:
        train = load_trajectories(self.trajectories, "train")
        val = load_trajectories(self.trajectories, "val")
        if not train:
            raise UsageError(f"{self.trajectories}: no train-split trajectories (run kpcodec.train.trajectories)")
        shas = {t["detector_sha256"] for t in train + val}
        if len(shas) > 1:
            raise UsageError(f"{self.trajectories}: trajectories from {len(shas)} different detectors; re-run "
                             "kpcodec.train.trajectories")
        self.detector_sha256 = shas.pop()
        self.train_frames = sum(len(t["kp"]) for t in train)
        self.sampler = WindowSampler(train, self.recipe.window, self.seed + 1)
        val = val or train[:4]
        self.val = {str(p): fixed_windows(val, p, self.recipe.val_windows,
                                          min(self.recipe.val_length, min(len(t["kp"]) for t in val)), 1234)
                    for p in VAL_PATTERNS}
        self.hold = hold_errors(self.val)

    # -- state ---------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save(self) -> None:
        save_atomic({"kind": self.kind, "config": self.cfg.to_dict(), "recipe": asdict(self.recipe),
                     "step": self.step, "cpu_seconds": self.cpu_seconds, "model": self.model.state_dict(),
                     "optimizer": self.opt.state_dict(), "torch_rng": torch.get_rng_state(),
                     "sampler_rng": self.sampler.rng.bit_generator.state, "best": self.best,
                     "detector_sha256": self.detector_sha256}, self.checkpoint_path())
        tmp = self.out / "weights-fp16.pt.tmp"
        tmp.write_bytes(fp16_bytes(self.model))
        os.replace(tmp, self.out / "weights-fp16.pt")

    def resume(self) -> bool | str:
        """Continue from the checkpoint (call after load_data). Returns False when there is
        none, "stale" when it was trained on another detector's trajectories (then training
        starts from scratch: its keypoints mean something else), else True."""
        path = self.checkpoint_path()
        if not path.is_file():
            return False
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if ck["kind"] != self.kind:
            raise UsageError(f"{path} holds a {ck['kind']} predictor, not {self.kind}")
        if ck.get("detector_sha256") != self.detector_sha256:
            return "stale"
        self.cfg = PredictorConfig(**ck["config"])
        self.model = build_predictor(self.cfg)
        self.model.load_state_dict(ck["model"])
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.recipe.lr)
        self.opt.load_state_dict(ck["optimizer"])
        self.step, self.cpu_seconds, self.best = ck["step"], ck["cpu_seconds"], ck.get("best")
        torch.set_rng_state(ck["torch_rng"])
        self.sampler.rng.bit_generator.state = ck["sampler_rng"]
        return True

    def log(self, record: dict) -> None:
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- loop ----------------------------------------------------------------------------
    def lr_at(self, step: int, steps: int) -> float:
        r = self.recipe
        a = min(step / max(steps, 1), 1.0)
        return r.lr_final + 0.5 * (r.lr - r.lr_final) * (1 + np.cos(np.pi * a))

    def train_step(self, steps: int) -> dict:
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step, steps)
        kp, jac, sent = self.sampler.batch(self.recipe.batch, self.recipe.shift)
        r = self.recipe
        beta = r.beta * min(1.0, self.step / max(r.kl_warmup * steps, 1.0))
        total, rec = loss_terms(self.model, r, kp, jac, sent, beta)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return rec

    def validate(self) -> dict:
        val = validate(self.model, self.val)
        if self.best is None or val["kp_px"] < self.best["kp_px"]:
            self.best = {"step": self.step, **val}
        self.log({"step": self.step, "cpu_seconds": self.cpu_seconds, "val": val, "hold": self.hold,
                  "time": time.time()})
        return val

    def _handle_signal(self, signum, frame):
        self._stop = True

    def run(self, steps: int, val_every: int = 250, log_every: int = 25, checkpoint_minutes: float = 2.0,
            report=None) -> None:
        old = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            last = time.time()
            meter = StepMeter()
            while self.step < steps and not self._stop:
                self.cpu_seconds += meter.measure(lambda: self.train_step(steps))[0]
                self.step += 1
                if self.step % log_every == 0:
                    mean = meter.flush()
                    self.log({"step": self.step, "cpu_seconds": self.cpu_seconds, "train": mean, "time": time.time()})
                    if report:
                        report(self.step, mean)
                if self.step % val_every == 0 or self.step == steps:
                    val = self.validate()
                    if report:
                        report(self.step, {"val": val})
                if time.time() - last > checkpoint_minutes * 60:
                    self.save()
                    last = time.time()
            self.save()
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def run_predictor_training(kind: str, trajectories: Path, out: Path, steps: int = 3000, resume: bool = False,
                           seed: int = 0, threads: int = 1, val_every: int = 250, quiet: bool = False,
                           recipe: PredictorRecipe | None = None, config: PredictorConfig | None = None,
                           checkpoint_minutes: float = 2.0) -> PredictorTrainer:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if not Path(trajectories).is_dir():
        raise UsageError(f"{trajectories}: no such folder (run python -m kpcodec.train.trajectories first)")
    console = Console(stderr=True, quiet=quiet)
    trainer = PredictorTrainer(kind, trajectories, out, seed=seed, threads=threads, recipe=recipe, config=config)
    trainer.load_data()
    resumed = trainer.resume() if resume else False
    if resumed == "stale":
        console.print(f"{out}/checkpoint.pt was trained on another detector's trajectories: starting from scratch")
        (Path(out) / "log.jsonl").unlink(missing_ok=True)
    elif resumed:
        console.print(f"resumed {out} at step {trainer.step} ({trainer.cpu_seconds:.0f} CPU-seconds)")
    elif resume:
        console.print(f"no checkpoint in {out}: starting from scratch")
    console.print(f"{kind}: {parameter_count(trainer.model)} parameters, {trainer.train_frames} training frames; "
                  f"hold on val: {trainer.hold['kp_px']:.3f} px")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, disable=quiet) as progress:
        task = progress.add_task(f"train {kind}", total=steps, completed=trainer.step, info="")

        def report(step: int, rec: dict) -> None:
            progress.update(task, completed=step)
            if "val" in rec:
                v = rec["val"]
                console.print(f"val @{step}: " + ", ".join(f"{k} {x:.3f}" for k, x in v.items() if k.startswith("kp")))
            else:
                progress.update(task, info=f"loss {rec['total']:.3f} skipped {rec['kp_px_skipped']:.3f} px "
                                           f"{1000 * rec['s_per_step']:.0f} ms/step")

        trainer.run(steps, val_every=val_every, checkpoint_minutes=checkpoint_minutes, report=report)
    console.print(f"stopped at step {trainer.step}, {trainer.cpu_seconds:.0f} CPU-seconds -> {out}")
    return trainer


# -- shipping ----------------------------------------------------------------------------

def _update_registry(update) -> None:
    from kpcodec.codec.predictors import registry_path

    path = registry_path()
    data = json.loads(path.read_text()) if path.is_file() else {"default": "linear", "predictors": {}}
    update(data)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def export(run_dir: Path, name: str, make_default: bool = False, variants: dict | None = None) -> Path:
    """Ship `<run_dir>/checkpoint.pt` as fp16 `pred-<name>-<sha8>.pt` with a registry entry.

    `variants` maps extra names to inference options sharing the same file (e.g.
    {"vrnn-sample": {"sample": True}}).
    """
    from kpcodec.models.registry import sha256_file
    from kpcodec.models.registry import weights_dir

    ck = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = build_predictor(ck["config"])
    model.load_state_dict(ck["model"])
    tmp = weights_dir() / f"pred-{name}.tmp"
    tmp.write_bytes(fp16_bytes(model))
    digest = sha256_file(tmp)
    target = weights_dir() / f"pred-{name}-{digest[:8]}.pt"
    tmp.replace(target)
    entry = {"kind": ck["kind"], "config": ck["config"], "file": target.name, "sha256": digest,
             "trained": {"steps": ck["step"], "cpu_seconds": round(ck["cpu_seconds"], 1),
                         "detector_sha256": ck.get("detector_sha256"), "val": ck.get("best")},
             "description": f"learned {ck['kind']} (causal)"}

    def update(data):
        preds = data.setdefault("predictors", {})
        old = {e.get("file") for n, e in preds.items() if n == name or e.get("base") == name}
        preds[name] = entry
        for extra, options in (variants or {}).items():
            preds[extra] = {**entry, "options": options, "base": name,
                            "description": entry["description"] + ", " + ", ".join(f"{k}={v}" for k, v in options.items())}
        if make_default:
            data["default"] = name
        still = {e.get("file") for e in preds.values()}
        for f in old - still - {None}:
            (weights_dir() / f).unlink(missing_ok=True)

    _update_registry(update)
    return target


def set_default(name: str) -> None:
    def update(data):
        data["default"] = name

    _update_registry(update)


# -- the damped-velocity baseline --------------------------------------------------------

def linear_errors(trajs: list[dict], dampings: np.ndarray, patterns=TRAIN_PATTERNS) -> np.ndarray:
    """Mean px error on skipped frames of damped velocity, for each damping (vectorised)."""
    total = np.zeros(len(dampings))
    count = 0
    for tr in trajs:
        kp = tr["kp"].astype(np.float64)
        n = len(kp)
        for pat in patterns:
            idx = pat.indices(n)
            t = np.arange(n)
            s = np.searchsorted(idx, t, side="right") - 1  # last sent at or before t
            ok = (idx[s] != t) & (s > 0)
            if not ok.any():
                continue
            last, prev = idx[s[ok]], idx[s[ok] - 1]
            vel = (kp[last] - kp[prev]) / (last - prev)[:, None, None]
            gap = (t[ok] - last).astype(np.float64)
            for i, d in enumerate(dampings):
                travel = gap if d == 1 else d * (1 - d ** gap) / (1 - d)
                pred = kp[last] + vel * travel[:, None, None]
                total[i] += (np.sqrt(((pred - kp[t[ok]]) ** 2).sum(-1)) * PX).mean(-1).sum()
            count += int(ok.sum())
    return total / max(count, 1)


def tune_linear(trajectories: Path, write: bool = True) -> dict:
    """Grid-search the damping of `linear` on the train split; store it in the registry."""
    trajs = load_trajectories(trajectories, "train")
    if not trajs:
        raise UsageError(f"{trajectories}: no train-split trajectories")
    grid = np.round(np.arange(0.0, 1.0001, 0.05), 2)
    err = linear_errors(trajs, grid)
    fine = np.clip(np.round(np.arange(grid[err.argmin()] - 0.05, grid[err.argmin()] + 0.0501, 0.01), 2), 0, 1)
    err_fine = linear_errors(trajs, fine)
    best = float(fine[err_fine.argmin()])
    result = {"damping": best, "train_kp_px": float(err_fine.min()),
              "grid": {f"{d:.2f}": float(e) for d, e in zip(grid, err)},
              "detector_sha256": trajs[0]["detector_sha256"]}
    if write:
        def update(data):
            data.setdefault("predictors", {})["linear"] = {
                "kind": "linear", "config": {"damping": best},
                "description": "damped-velocity extrapolation from the last two sent frames "
                               f"(damping tuned on train: {result['train_kp_px']:.3f} px on skipped frames)"}

        _update_registry(update)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="ship a run's weights into kpcodec/weights")
    e.add_argument("run", type=Path)
    e.add_argument("--name", required=True)
    e.add_argument("--default", action="store_true")
    e.add_argument("--sample-variant", action="store_true", help="also register NAME-sample (latent samples)")
    t = sub.add_parser("tune-linear", help="tune the damping of `linear` on the train split")
    t.add_argument("--trajectories", type=Path, default=Path("runs/cache/trajectories"))
    d = sub.add_parser("default", help="make a registered predictor the default")
    d.add_argument("name")
    a = p.parse_args(argv)
    if a.cmd == "export":
        variants = {f"{a.name}-sample": {"sample": True, "seed": 0}} if a.sample_variant else None
        print(export(a.run, a.name, a.default, variants))
    elif a.cmd == "tune-linear":
        r = tune_linear(a.trajectories)
        print(f"damping {r['damping']:.2f}: {r['train_kp_px']:.3f} px on skipped train frames")
    else:
        set_default(a.name)


if __name__ == "__main__":
    main(sys.argv[1:])

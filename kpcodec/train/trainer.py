"""Resumable trainer for the motion model.

Everything needed to continue lives in `<out>/checkpoint.pt` (fp32 weights, optimiser,
step, CPU time (accelerator time on a GPU), RNG); it is rewritten atomically every few minutes and on SIGINT/SIGTERM.
`<out>/log.jsonl` gets a line per logged step and per validation; `<out>/weights-fp16.pt`
is the latest weights for shipping.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from kpcodec.eval.landmarks import N_LANDMARKS
from kpcodec.models.blocks import resize
from kpcodec.models.registry import build_model, get_config
from kpcodec.train import losses
from kpcodec.train.data import PairSampler, load_clips, refresh_landmarks
from kpcodec.train.meter import StepMeter
from kpcodec.train.evaluate import MONITOR_CLIPS, evaluate, keypoint_spread, load_eval_clips
from kpcodec.train.recipe import RECIPES
from kpcodec.errors import UsageError
from kpcodec.scale import distributed as dd


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fp16_state(model) -> dict:
    return {k: v.detach().to(torch.float16) if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()}


def param_groups(model, recipe) -> list[dict]:
    """The optimiser's parameter groups: the trained parameters at the recipe's `lr`, and those named
    by its `fresh` at `fresh_lr` (a second group, only where the recipe names some)."""
    fresh, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (fresh if any(f in name for f in recipe.fresh) else rest).append(p)
    return [{"params": rest, "lr": recipe.lr}] + ([{"params": fresh, "lr": recipe.fresh_lr}] if fresh else [])


def restore_optimizer(opt, state: dict, lr) -> None:
    """A saved optimiser state into `opt`, its moments in float32 (compact files keep them in bf16),
    at the recipe's rate `lr` (one, or one per group), not the saved one: a run continued under a
    finer recipe (e.g. hybrid -> hybrid-fine) must take its smaller steps (load_state_dict restores
    the old lr)."""
    opt.load_state_dict(state)
    rates = lr if isinstance(lr, (list, tuple)) else [lr] * len(opt.param_groups)
    for group, rate in zip(opt.param_groups, rates):
        group["lr"] = rate
    for moments in opt.state.values():
        for k, v in moments.items():
            if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0:
                moments[k] = v.float()


def compact_checkpoint(full: dict) -> dict:
    """A small resume file to commit: fp16 weights, bf16 Adam moments (bf16 keeps fp32's range,
    so tiny second moments do not underflow to 0 and blow up the first steps after resuming)."""
    opt = dict(full["optimizer"])
    # state_dict() shares the per-parameter dicts with the live optimiser: build new ones.
    opt["state"] = {
        i: {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0 else v
            for k, v in state.items()}
        for i, state in opt["state"].items()
    }
    model = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in full["model"].items()}
    return {**{k: v for k, v in full.items() if k != "torch_rng"}, "model": model, "optimizer": opt}


class Trainer:
    def __init__(self, config: str, data_dir: Path, out_dir: Path, recipe: str = "base", seed: int = 0,
                 threads: int = 1, landmark_dir: Path | None = None, device: str | None = None,
                 max_train_clips: int | None = None, monitor_frames: int = 100, batch: int | None = None,
                 accumulate: int = 1):
        self.cfg = get_config(config)
        # Data parallel (kpcodec.scale.distributed): the recipe's batch is the global one, split into
        # world x accumulate micro-batches, this rank's `accumulate` of them in turn.
        self.rank, self.world = dd.rank(), dd.world_size()
        self.accumulate = int(accumulate)
        # An accelerator takes larger batches than the recipe's CPU-sized one.
        self.recipe = RECIPES[recipe] if batch is None else replace(RECIPES[recipe], batch=batch)
        self.recipe_name = recipe
        parts = self.world * self.accumulate
        if self.accumulate < 1 or self.recipe.batch % parts:
            raise UsageError(f"the batch of {self.recipe.batch} does not split into {self.world} rank(s) x "
                             f"{self.accumulate} micro-batch(es)")
        # The landmark cache holds the whole face mesh: the loss weights are fixed for the run.
        self.landmark_weights = losses.landmark_weights(N_LANDMARKS, self.recipe.landmark_lips,
                                                        self.recipe.landmark_eyes)
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir)
        self.landmark_dir = Path(landmark_dir) if landmark_dir else None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.set_num_threads(threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
        torch.manual_seed(seed)
        self.seed = seed
        self.model = build_model(config).to(self.device)
        self._freeze()
        self.opt = torch.optim.Adam(param_groups(self.model, self.recipe), lr=self.recipe.lr, betas=self.recipe.betas)
        # Several ranks: DistributedDataParallel averages the gradients and broadcasts rank 0's buffers.
        self.ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.model, device_ids=None if self.device.type == "cpu" else [self.device])
        self.step = 0
        self.cpu_seconds = 0.0
        self.accelerator_seconds = 0.0  # wall time of steps run on a GPU (CPU time means little there)
        self.max_train_clips = max_train_clips
        self.monitor_frames = monitor_frames
        self._stop = False

    def _freeze(self) -> None:
        """Modules outside the recipe's train_modules: no gradients, BatchNorm in eval mode."""
        trained = self.recipe.train_modules
        if not trained:
            return
        for name, module in self.model.named_children():
            if name not in trained:
                module.eval()
                module.requires_grad_(False)

    # -- state ---------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def full_state(self) -> dict:
        return {
            "config": self.cfg.name, "recipe": self.recipe_name, "batch": self.recipe.batch, "step": self.step,
            "cpu_seconds": self.cpu_seconds, "accelerator_seconds": self.accelerator_seconds, "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(), "torch_rng": torch.get_rng_state(),
            "sampler_rng": self.sampler.rng.bit_generator.state,
        }

    def save(self) -> None:
        if self.rank:
            return
        save_atomic(self.full_state(), self.checkpoint_path())
        save_atomic(fp16_state(self.model), self.out / "weights-fp16.pt")

    def save_compact(self, path: Path) -> None:
        if self.rank:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(compact_checkpoint(self.full_state()), path)

    def resume(self, path: Path | None = None) -> bool:
        path = path or self.checkpoint_path()
        if not path.is_file():
            return False
        ck = torch.load(path, map_location=self.device, weights_only=False)
        state = ck.get("model", ck)
        if ck.get("config", self.cfg.name) != self.cfg.name:
            self.init_from(state)
            return True
        self.model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        if "optimizer" in ck:
            restore_optimizer(self.opt, ck["optimizer"], [g["lr"] for g in param_groups(self.model, self.recipe)])
        self.step = ck.get("step", 0)
        self.cpu_seconds = ck.get("cpu_seconds", 0.0)
        self.accelerator_seconds = ck.get("accelerator_seconds", 0.0)
        if "torch_rng" in ck:
            torch.set_rng_state(ck["torch_rng"].cpu())
        self._sampler_rng = ck.get("sampler_rng")
        self.load_extra(ck)
        return True

    def load_extra(self, ck: dict) -> None:
        """What a subclass keeps in the checkpoint besides the model and its optimiser (full_state)."""

    def init_from(self, state: dict) -> None:
        """Start from another config's weights: every tensor whose name and shape match."""
        own = self.model.state_dict()
        match = {k: v.float() if v.is_floating_point() else v for k, v in state.items()
                 if k in own and own[k].shape == v.shape}
        self.model.load_state_dict(match, strict=False)
        self.initialised = (len(match), len(own))

    def log(self, record: dict) -> None:
        if self.rank:  # logs and checkpoints come from rank 0 only
            return
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- data ----------------------------------------------------------------------------
    def load_data(self, progress=None) -> None:
        clips = load_clips(self.data_dir, "train", self.recipe.stride, self.landmark_dir,
                           limit=self.max_train_clips, progress=progress)
        # On the CPU the numpy frames serve directly; an accelerator gets its own copy.
        self.sampler = PairSampler(clips, self.seed + self.step, None if self.device.type == "cpu" else self.device)
        if getattr(self, "_sampler_rng", None):
            self.sampler.rng.bit_generator.state = self._sampler_rng
        self.train_frames = sum(len(c.frames) for c in clips)
        self.have_landmarks = self._count_landmarks()
        files = [f for f in MONITOR_CLIPS if (self.data_dir / f).is_file()]
        self.monitor = load_eval_clips(self.data_dir, files, self.monitor_frames, 2, self.landmark_dir)

    def _count_landmarks(self) -> int:
        return sum(c.landmarks is not None and bool(np.isfinite(c.landmarks).any()) for c in self.sampler.clips)

    # -- one step ------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One optimiser step on the global batch: this rank's micro-batches, gradients averaged
        over the ranks. Each micro-batch seeds torch's RNG from (seed, step, its place in the global
        batch), so the step is the same whatever the world size and accumulation."""
        r = self.recipe
        whole = self.sampler.batch(r.batch)  # the same draw on every rank
        size = r.batch // (self.world * self.accumulate)
        records = []
        self.opt.zero_grad(set_to_none=True)
        for a in range(self.accumulate):
            part = self.rank * self.accumulate + a
            torch.manual_seed((self.seed * 1_000_003 + self.step) * 4099 + part)
            batch = {k: v[part * size:(part + 1) * size].to(self.device) for k, v in whole.items()}
            # DDP averages the gradients over the ranks at the last micro-batch's backward only
            sync = self.ddp.no_sync() if self.ddp is not None and a < self.accumulate - 1 else contextlib.nullcontext()
            with sync:
                total, rec = self._loss(batch)
                (total / self.accumulate).backward()
            records.append(rec)
        params = [p for p in self.model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        self.opt.step()
        return {k: float(np.mean([rec[k] for rec in records])) for k in records[0]}

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        r = self.recipe
        for key in ("source", "driving"):  # small test configs train on downscaled frames
            batch[key] = resize(batch[key], self.cfg.image_size)
        self._freeze()  # validation puts the whole model back in train mode
        out = (self.ddp or self.model)(batch["source"], batch["driving"])
        terms = {
            "pyramid": losses.pyramid_l1(out["image"], batch["driving"]),
            "ssim": 1.0 - losses.ssim(out["image"], batch["driving"]),
        }
        if r.w_separation > 0:
            terms["separation"] = losses.separation(out["kp_driving"], r.separation_distance)
        if r.w_equiv_value > 0 or r.w_equiv_jacobian > 0:
            terms["equiv_value"], terms["equiv_jacobian"] = losses.equivariance(
                self.model.detector, batch["driving"], out["kp_driving"], out["jac_driving"])
        if r.w_landmark_flow > 0 and "lm_driving" in batch:
            terms["landmark_flow"] = losses.flow_at_landmarks(out["flow"], batch["lm_driving"], batch["lm_source"],
                                                              self.landmark_weights)
        weights = {"pyramid": r.w_pyramid, "ssim": r.w_ssim, "separation": r.w_separation,
                   "equiv_value": r.w_equiv_value, "equiv_jacobian": r.w_equiv_jacobian,
                   "landmark_flow": r.w_landmark_flow}
        total = sum(weights[k] * v for k, v in terms.items())
        rec = {k: v.item() for k, v in terms.items()}
        rec["total"] = total.item()
        rec["kp_spread"] = keypoint_spread(out["kp_driving"].detach().cpu().numpy())
        return total, rec

    def validate(self) -> dict:
        for clip in self.monitor:  # the landmark cache may have been written since loading
            clip.load_landmarks(self.landmark_dir)
        result = evaluate(self.model, self.monitor)
        self.log({"step": self.step, "cpu_hours": self.cpu_seconds / 3600, "val": result["mean"],
                  "val_clips": result["clips"], "time": time.time()})
        return result["mean"]

    # -- loop ----------------------------------------------------------------------------
    def _handle_signal(self, signum, frame):
        self._stop = True

    def run(self, steps: int, val_every: int = 300, checkpoint_minutes: float = 5.0, log_every: int = 10,
            report=None, compact: Path | None = None) -> None:
        """Train to `steps`; checkpoints every `checkpoint_minutes` (plus the compact resume
        file `compact`, the one to commit, when given) and on SIGINT/SIGTERM."""
        signal.signal(signal.SIGTERM, self._handle_signal)
        signal.signal(signal.SIGINT, self._handle_signal)
        last_ckpt = time.time()
        meter = StepMeter()
        on_cpu = self.device.type == "cpu"
        while self.step < steps and not self._stop:
            cpu, wall = meter.measure(self.train_step)
            if on_cpu:
                self.cpu_seconds += dd.total(cpu)  # every rank's CPU time
            else:
                self.accelerator_seconds += wall
            self.step += 1
            if self.step % log_every == 0:
                mean = meter.flush()
                self.log({"step": self.step, "cpu_hours": self.cpu_seconds / 3600,
                          "accelerator_hours": self.accelerator_seconds / 3600, "device": self.device.type,
                          "train": mean, "time": time.time()})
                if report:
                    report(self.step, mean)
            if self.step % val_every == 0 and self.monitor and self.rank == 0:
                val = self.validate()
                if report:
                    report(self.step, {"val": val})
            if time.time() - last_ckpt > checkpoint_minutes * 60:
                self.save()
                if compact:
                    self.save_compact(compact)
                if refresh_landmarks(self.sampler.clips, self.landmark_dir):
                    self.have_landmarks = self._count_landmarks()
                    self.sampler.refresh_landmarks()
                last_ckpt = time.time()
        self.save()
        if compact:
            self.save_compact(compact)

"""Train a hybrid generator: the shipped detector and dense motion frozen, the generator fusing
a base-layer frame that really went through the AV1 base layer (kpcodec.media.baselayer).

Data: every `stride`-th train frame (as for the motion model) is coded per clip as its own
base-layer stream, once per training setting (size, CRF), and decoded; the decoded frames are
cached under `--cache`. A training pair takes a source frame and a driving frame of one clip;
the driving frame's base frame is the one `age` kept frames earlier (0, 1 or 2, i.e. up to 4
video frames at stride 2), moved to the driving keypoints (MotionModel.move_base), as the
decoder does between base frames. One item in ten gets no base frame, so the model still renders
keypoint-only frames (a lost base packet). The detector's keypoints of every kept frame are
computed once (the detector is frozen).

    python -m kpcodec.train.hybrid --data ../shared/data --out runs/hybrid \\
        --init runs/hybrid-init.pt --steps 20000 --resume
(`--init` from kpcodec.train.grow --from fomm-256-fast-wide --to fomm-256-hybrid.)
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kpcodec.media import baselayer
from kpcodec.eval.metrics import ssim as ssim_np
from kpcodec.codec.renderer import Detector, Renderer
from kpcodec.models.frames import frames_to_tensor, tensor_to_frames
from kpcodec.codec.parallel import DECODE_MMAP_THRESHOLD, fixed_mmap_threshold, ordered_map
from kpcodec.train import adversarial, losses
from kpcodec.train.data import PairSampler, decode_clip, load_clips
from kpcodec.train.evaluate import MONITOR_CLIPS
from kpcodec.train.trainer import Trainer, restore_optimizer

# Base-layer settings trained on (size, CRF): one model for every rate the encoder picks.
TRAIN_SETTINGS = ((64, 63), (96, 63), (128, 63), (96, 52), (128, 52))
AGES = (0, 1, 2)
AGE_P = (0.4, 0.35, 0.25)
BASE_DROPOUT = 0.1
MONITOR_SETTING = (96, 63)


def _fps_by_file(data_dir: Path) -> dict[str, float]:
    with open(data_dir / "manifest.csv", newline="") as f:
        return {r["file"]: float(r["fps"]) for r in csv.DictReader(f)}


def coded_base(frames: np.ndarray, size: int, crf: int, fps: float) -> np.ndarray:
    """The decoded base layer (T,size,size,3) of frames (T,H,W,3): every frame coded."""
    settings = baselayer.BaseLayerSettings(size=size, divisor=1, crf=crf)
    return baselayer.decode_clip(baselayer.encode_clip(frames, settings, fps))


def cached_base(cache: Path, name: str, frames: np.ndarray, size: int, crf: int, fps: float) -> np.ndarray:
    tag = hashlib.sha256(frames[:: max(1, len(frames) // 8)].tobytes()).hexdigest()[:10]
    path = cache / f"{name}-{size}-{crf}-{tag}.npy"
    if path.is_file():
        return np.load(path)
    out = coded_base(frames, size, crf, fps)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


@dataclass
class MonitorClip:
    name: str
    frames: np.ndarray  # (T,H,W,3) kept frames
    base: np.ndarray  # (T,s,s,3) decoded base layer of those frames
    landmarks: list | None = None


class HybridTrainer(Trainer):
    def __init__(self, *args, cache: Path, settings=TRAIN_SETTINGS, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.cfg.base_fusion:
            raise SystemExit(f"config {self.cfg.name} has no base fusion")
        self.cache = Path(cache)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.settings = tuple(settings)
        self.disc = self.disc_opt = None
        if self.recipe.w_gan > 0 or self.recipe.w_feature_matching > 0:
            self.disc = adversarial.MultiScaleDiscriminator().to(self.device)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=self.recipe.lr_discriminator,
                                             betas=self.recipe.betas)

    # -- state: the discriminator travels with the checkpoint -------------------------------
    def full_state(self) -> dict:
        state = super().full_state()
        if self.disc is not None:
            state["discriminator"] = self.disc.state_dict()
            state["discriminator_optimizer"] = self.disc_opt.state_dict()
        return state

    def load_extra(self, ck: dict) -> None:
        if self.disc is not None and "discriminator" in ck:  # a run without one starts it fresh
            self.disc.load_state_dict(ck["discriminator"])
            restore_optimizer(self.disc_opt, ck["discriminator_optimizer"], self.recipe.lr_discriminator)

    # -- data ----------------------------------------------------------------------------
    def load_data(self, progress=None) -> None:
        fps = _fps_by_file(self.data_dir)
        stride = self.recipe.stride
        clips = load_clips(self.data_dir, "train", stride, None, limit=self.max_train_clips, progress=progress)
        self.sampler = PairSampler(clips, self.seed + self.step)
        if getattr(self, "_sampler_rng", None):
            self.sampler.rng.bit_generator.state = self._sampler_rng
        self.train_frames = sum(len(c.frames) for c in clips)
        self.have_landmarks = 0
        jobs = [(c, s, q) for c in self.sampler.clips for s, q in self.settings]
        t0 = time.time()
        coded = ordered_map(lambda j: cached_base(self.cache, j[0].name, j[0].frames, j[1], j[2],
                                                  fps.get(j[0].file, 25.0) / stride), jobs, workers=2)
        self.base = {}
        for (clip, s, q), frames in zip(jobs, coded):
            self.base.setdefault(clip.name, []).append(frames)
        print(f"base layer: {len(jobs)} clip codings in {time.time() - t0:.0f} s", flush=True)
        # The loading threads pinned glibc's mmap threshold (kpcodec.codec.parallel), which makes every
        # large training tensor a fresh mmap: steps ran at half speed (2.6 against 1.35 s).
        fixed_mmap_threshold(DECODE_MMAP_THRESHOLD)
        t0 = time.time()
        self.keypoints = {c.name: self._cached_keypoints(c) for c in self.sampler.clips}
        print(f"keypoints of {self.train_frames} frames in {time.time() - t0:.0f} s", flush=True)
        files = [f for f in MONITOR_CLIPS if (self.data_dir / f).is_file()]
        self.monitor = []
        for f in files:
            frames, _ = decode_clip(self.data_dir / f, stride, self.monitor_frames)
            s, q = MONITOR_SETTING
            base = cached_base(self.cache, "monitor-" + Path(f).stem, frames, s, q, fps.get(f, 25.0) / stride)
            self.monitor.append(MonitorClip(Path(f).stem, frames, base))

    def _cached_keypoints(self, clip) -> tuple[np.ndarray, np.ndarray]:
        from kpcodec.models.registry import state_sha256

        if not hasattr(self, "_detector_tag"):
            self._detector_tag = state_sha256({k: v for k, v in self.model.state_dict().items()
                                               if k.startswith("detector.")})[:10]
        tag = hashlib.sha256(clip.frames[:: max(1, len(clip.frames) // 8)].tobytes()).hexdigest()[:10]
        path = self.cache / f"kp-{clip.name}-{self._detector_tag}-{tag}.npz"
        if path.is_file():
            with np.load(path) as z:
                return z["kp"], z["jac"]
        kp, jac = self._detect(clip.frames)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, kp=kp, jac=jac)
        tmp.replace(path)
        return kp, jac

    def _detect(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        detect = Detector(self.model)
        kps, jacs = zip(*(detect(frames[i:i + 32]) for i in range(0, len(frames), 32)))
        return np.concatenate(kps), np.concatenate(jacs)

    def _batch(self, size: int) -> dict:
        rng = self.sampler.rng
        src, drv, base, kp = [], [], [], {k: [] for k in ("s", "d", "b")}
        jac = {k: [] for k in ("s", "d", "b")}
        ages = []
        for _ in range(size):
            c = rng.choice(len(self.sampler.clips), p=self.sampler.p)
            clip = self.sampler.clips[c]
            i, j = rng.choice(len(clip.frames), size=2, replace=False)
            age = int(rng.choice(AGES, p=AGE_P))
            b = max(0, j - age)
            variants = self.base[clip.name]
            v = variants[rng.integers(len(variants))]
            keep = rng.random() >= BASE_DROPOUT
            src.append(clip.frames[i])
            drv.append(clip.frames[j])
            base.append(v[b] if keep else None)
            ages.append(j - b if keep else 0)
            k, jc = self.keypoints[clip.name]
            for key, idx in (("s", i), ("d", j), ("b", b)):
                kp[key].append(k[idx])
                jac[key].append(jc[idx])
        return {"source": frames_to_tensor(np.stack(src)), "driving": frames_to_tensor(np.stack(drv)),
                "base": base, "ages": np.array(ages),
                **{f"kp_{k}": torch.from_numpy(np.stack(v)) for k, v in kp.items()},
                **{f"jac_{k}": torch.from_numpy(np.stack(v)) for k, v in jac.items()}}

    def base_batch(self, base: list) -> torch.Tensor:
        """The decoded base frames of a batch, each upsampled as the model does (base_image), zeros
        where the item has none (items of one batch come in different sizes)."""
        size = self.cfg.image_size
        out = torch.zeros(len(base), 3, size, size)
        for n, frame in enumerate(base):
            if frame is not None:
                out[n] = self.model.base_image(frames_to_tensor(frame[None]))[0]
        return out

    # -- one step ------------------------------------------------------------------------
    def train_step(self) -> dict:
        r = self.recipe
        batch = self._batch(r.batch)
        self._freeze()
        m = self.model
        with torch.no_grad():
            motion = m.dense_motion(m.dense_motion.small_source(batch["source"]), batch["kp_s"], batch["jac_s"],
                                    batch["kp_d"], batch["jac_d"])
            base = m.move_base(self.base_batch(batch["base"]), motion["mask"],
                               batch["kp_b"], batch["jac_b"], batch["kp_d"], batch["jac_d"])
        image = m.generator.decode(m.generator.encode(batch["source"]), motion["flow"], motion["occlusion"],
                                   batch["source"], base)
        real = batch["driving"]
        terms = {"pyramid": losses.pyramid_l1(image, real), "ssim": 1.0 - losses.ssim(image, real)}
        total = r.w_pyramid * terms["pyramid"] + r.w_ssim * terms["ssim"]
        if self.disc is not None:
            self.disc.requires_grad_(False)
            terms["gan"], terms["feature_matching"] = adversarial.generator_terms(self.disc, image, real)
            total = total + r.w_gan * terms["gan"] + r.w_feature_matching * terms["feature_matching"]
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.requires_grad], 10.0)
        self.opt.step()
        rec = {k: v.item() for k, v in terms.items()}
        rec["total"] = total.item()
        if self.disc is not None:
            self.disc.requires_grad_(True)
            d_loss = adversarial.discriminator_loss(self.disc, image, real)
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_opt.step()
            rec["discriminator"] = d_loss.item()
        rec["kp_spread"] = 0.0
        return rec

    # -- validation ----------------------------------------------------------------------
    @torch.inference_mode()
    def validate(self) -> dict:
        was = self.model.training
        self.model.eval()
        rows = [evaluate_hybrid(self.model, c) for c in self.monitor]
        self.model.train(was)
        mean = {k: float(np.mean([r[k] for r in rows if r.get(k) is not None])) for k in rows[0] if k != "clip"}
        self.log({"step": self.step, "cpu_hours": self.cpu_seconds / 3600, "val": mean, "val_clips": rows,
                  "time": time.time()})
        return mean


@torch.inference_mode()
def evaluate_hybrid(model, clip: MonitorClip, divisor: int = 2) -> dict:
    """SSIM on a monitor clip (source = frame 0, every frame's own keypoints): with the base layer
    at every `divisor`-th kept frame (the rest motion-compensated from it), without it (zeros),
    and the upsampled base layer alone (held)."""
    frames = clip.frames
    renderer = Renderer(model)
    state = renderer.prepare(frames[0])
    kp, jac = Detector(model)(frames)
    kp, jac = torch.from_numpy(kp), torch.from_numpy(jac)
    hybrid, plain, held = [], [], []
    for t in range(len(frames)):
        b = t - t % divisor
        small = frames_to_tensor(clip.base[b:b + 1])
        hybrid += renderer.render(state, kp[t:t + 1], jac[t:t + 1], (small, kp[b:b + 1], jac[b:b + 1]))
        plain += renderer.render(state, kp[t:t + 1], jac[t:t + 1])
        held.append(tensor_to_frames(model.base_image(small))[0])
    row = {"clip": clip.name}
    for key, out in (("ssim", hybrid), ("ssim_no_base", plain), ("ssim_base_only", held)):
        row[key] = float(np.mean([ssim_np(a, b) for a, b in zip(frames, out)]))
    # The blur the adversarial term is meant to fight: detail energy against the original's.
    row["detail"] = float(np.mean([adversarial.detail_ratio(b, a) for a, b in zip(frames, hybrid)]))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="fomm-256-hybrid")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=Path("runs/cache/base"))
    p.add_argument("--init", type=Path, help="grown weights to start from (ignored when resuming)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--recipe", default="hybrid")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int)
    p.add_argument("--val-every", type=int, default=300)
    p.add_argument("--checkpoint-minutes", type=float, default=4.0)
    p.add_argument("--max-train-clips", type=int)
    p.add_argument("--monitor-frames", type=int, default=100)
    p.add_argument("--compact", type=Path, help="also write the small resume file to commit")
    a = p.parse_args()
    t = HybridTrainer(a.config, a.data, a.out, recipe=a.recipe, threads=a.threads, cache=a.cache,
                      max_train_clips=a.max_train_clips, monitor_frames=a.monitor_frames, batch=a.batch)
    if a.resume and t.resume():
        print(f"resumed at step {t.step}", flush=True)
    elif a.init:
        t.resume(a.init)
        # The grown generator's own steps stay in its model card; this run counts its own.
        t.step, t.cpu_seconds, t.accelerator_seconds = 0, 0.0, 0.0
        print(f"started from {a.init}", flush=True)
    t.load_data()
    print(f"{t.train_frames} frames; batch {t.recipe.batch}; threads {a.threads}", flush=True)

    def report(step, rec):
        if "val" in rec:
            print(f"val @{step}: " + ", ".join(f"{k} {v:.4f}" for k, v in rec["val"].items()), flush=True)
        elif step % 50 == 0:
            gan = (f" gan {rec['gan']:.3f} fm {rec['feature_matching']:.3f} disc {rec['discriminator']:.3f}"
                   if "gan" in rec else "")
            print(f"step {step}: loss {rec['total']:.4f} ssim-loss {rec['ssim']:.4f}{gan} {rec['s_per_step']:.2f} s/step",
                  flush=True)

    if t.step == 0 and t.monitor:
        report(0, {"val": t.validate()})
    t.run(a.steps, val_every=a.val_every, checkpoint_minutes=a.checkpoint_minutes, report=report,
          compact=a.compact, log_every=10)
    print(f"stopped at step {t.step}, {t.cpu_seconds / 3600:.2f} CPU-h", flush=True)


if __name__ == "__main__":
    main()

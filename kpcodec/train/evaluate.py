"""Reconstruction quality of a motion model on val clips: source = first frame, every
frame's own keypoints used (the codec at keep-every 1 with unquantised keypoints).

Face-landmark measures use mediapipe (optional, training/eval only); keypoint spread is the
RMS distance of the keypoints from their centroid in [-1,1] units (collapse -> ~0).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kpcodec.codec.renderer import Detector, Renderer
from kpcodec.models.frames import frames_to_tensor, tensor_to_frames
from kpcodec.train.data import decode_clip

# A fixed, varied monitoring subset of the val split: different people, head turns, speech, expressions.
MONITOR_CLIPS = [
    "talking-heads/val/liveportrait_d10.mp4",
    "talking-heads/val/dreamtalk_W011_front_surprised_level3_001.mp4",
    "talking-heads/val/vox1_id10284_Rzpm9hlXV6I_005604.mp4",
    "talking-heads/val/vox1_id10289_Rn0Z_lIiL1w_000852.mp4",
    "talking-heads/val/tpsmm_driving.mp4",
    "talking-heads/val/dagan_driving.mp4",
]


@dataclass
class EvalClip:
    name: str
    frames: np.ndarray  # (T,H,W,3) uint8, T frames at `stride`
    landmarks: np.ndarray | None  # (T,478,2) pixels, NaN where no face
    index: np.ndarray | None = None  # frame numbers in the original clip

    def load_landmarks(self, landmark_dir: Path | None) -> None:
        npz = landmark_dir / (self.name + ".npz") if landmark_dir else None
        if self.landmarks is None and npz is not None and npz.is_file():
            with np.load(npz) as z:
                self.landmarks = z["landmarks"].astype(np.float32)[self.index]


def load_eval_clips(data_dir: Path, files: list[str], max_frames: int, stride: int,
                    landmark_dir: Path | None) -> list[EvalClip]:
    clips = []
    for f in files:
        frames, index = decode_clip(data_dir / f, stride, max_frames)
        clip = EvalClip(Path(f).stem, frames, None, index)
        clip.load_landmarks(landmark_dir)
        clips.append(clip)
    return clips


def render_keypoints(model, state, kps, jacs, batch: int = 8) -> np.ndarray:
    """Frames (T,H,W,3) uint8 rendered from a prepared source (`model.prepare_source`) with
    keypoints (T,K,2) and Jacobians (T,K,2,2), numpy or tensors, `batch` frames at a time
    (the decoder's kpcodec.codec.renderer.Renderer)."""
    return Renderer(model).render_all(state, kps, jacs, batch)


def reconstruct(model, frames: np.ndarray, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Decoded frames (T,H,W,3) uint8 and keypoints (T,K,2) of every frame from frame 0."""
    renderer, detect = Renderer(model), Detector(model)
    state = renderer.prepare(frames[0])
    out, kps = [], []
    for i in range(0, len(frames), batch):
        kp, jac = detect(frames[i:i + batch])
        out += renderer.render(state, kp, jac)
        kps.append(kp)
    return np.stack(out), np.concatenate(kps)


def keypoint_spread(kps: np.ndarray) -> float:
    centred = kps - kps.mean(axis=1, keepdims=True)
    return float(np.sqrt((centred ** 2).sum(-1).mean()))


def evaluate_clip(model, clip: EvalClip, landmarker_factory=None) -> dict:
    from kpcodec.eval.metrics import l1, psnr, ssim

    size = model.cfg.image_size
    if clip.frames.shape[1] != size:  # small test configs: compare at the model's resolution
        from kpcodec.models.blocks import resize

        clip = EvalClip(clip.name, tensor_to_frames(resize(frames_to_tensor(clip.frames), size)), None)
    decoded, kps = reconstruct(model, clip.frames)
    row = {
        "clip": clip.name,
        "frames": len(decoded),
        "l1": float(np.mean([l1(a, b) for a, b in zip(clip.frames, decoded)])),
        "ssim": float(np.mean([ssim(a, b) for a, b in zip(clip.frames, decoded)])),
        "psnr": float(np.mean([psnr(a, b) for a, b in zip(clip.frames, decoded)])),
        "l1_frozen": float(np.mean([l1(a, clip.frames[0]) for a in clip.frames])),
        "ssim_frozen": float(np.mean([ssim(a, clip.frames[0]) for a in clip.frames])),
        "psnr_frozen": float(np.mean([psnr(a, clip.frames[0]) for a in clip.frames[1:]])) if len(clip.frames) > 1 else None,
        "kp_spread": keypoint_spread(kps),
    }
    if landmarker_factory is not None and clip.landmarks is not None:
        from kpcodec.eval.landmarks import detect_video, fidelity_from_landmarks

        found = detect_video(decoded, near=list(clip.landmarks), factory=landmarker_factory)
        fid = fidelity_from_landmarks(list(clip.landmarks), found)
        frozen = fidelity_from_landmarks(list(clip.landmarks), [clip.landmarks[0]] * len(found))
        row.update({k: fid[k] for k in ("landmark_error_px", "lip_gap_corr", "eye_opening_corr", "face_found_share")})
        row["landmark_error_px_frozen"] = frozen["landmark_error_px"]
    return row


def evaluate(model, clips: list[EvalClip], use_landmarks: bool = True) -> dict:
    factory = None
    if use_landmarks:
        try:
            from kpcodec.eval.landmarks import FaceLandmarker

            FaceLandmarker().close()
            factory = FaceLandmarker
        except Exception:  # mediapipe missing: pixel metrics only
            factory = None
    was_training = model.training
    model.eval()
    rows = [evaluate_clip(model, c, factory) for c in clips]
    model.train(was_training)
    mean = {}
    for key in rows[0]:
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if key != "clip" and vals:
            mean[key] = float(np.mean(vals))
    return {"mean": mean, "clips": rows}

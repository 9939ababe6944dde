"""Keypoint predictors on the val split: keypoint error, keypoint-stream rate, sender cost,
and rendered-video quality for the best few (issue 4's table).

    python benchmarks/predictor_quality.py --trajectories runs/cache/trajectories \\
        --checkpoint runs/fomm-256-quarter/checkpoint.pt --config fomm-256-quarter
    python benchmarks/predictor_quality.py --model fomm-256-quarter ...       # shipped motion model

Keypoint part: every val trajectory (kpcodec.train.trajectories: the detector on every
frame), for each send pattern the sent frames are quantised and packed exactly as the .kpc
keypoint chunk (kpcodec.bitstream.container's writer: KPRC of the newest format; its bytes give the rate), then every registered predictor
fills the other frames through kpcodec.codec.predictors.fill_keypoints (the decoder's streaming
path). Errors are against the detector's unquantised keypoints: mean L2 in pixels at
256x256 ([-1,1] error x 127.5) on predicted frames only and over all frames, and the mean
Frobenius norm of the Jacobian error. Sender cost: the detector timed on the sent frames
of a few val clips (batch 8, one thread). Rendered part: source = each clip's frame 0,
every frame rendered by the motion model from the predicted keypoints, compared with the
original (L1, PSNR, SSIM, mediapipe face-landmark error against the cached landmarks).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kpcodec import bitstream  # noqa: E402

from kpcodec.codec import predictors as predict
from kpcodec.codec.patterns import SendPattern  # noqa: E402
from kpcodec.bitstream.quantize import DEFAULT_JAC_STEP, DEFAULT_KP_STEP  # noqa: E402
from kpcodec.train.trajectories import load_trajectories  # noqa: E402

PX = 127.5
PATTERNS = [SendPattern(1, 0), SendPattern(1, 1), SendPattern(1, 2), SendPattern(1, 3), SendPattern(12, 12)]


def pattern_label(p: SendPattern) -> str:
    return f"keep-every {p.period}" if p.send == 1 else f"{p.send}:{p.skip}"


def quantise(kp: np.ndarray, jac: np.ndarray, idx: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray, int]:
    """The decoder's view of the sent frames, and the keypoint chunk's size in bytes."""
    k = kp.shape[1]
    header = bitstream.Header(model="bench", weights_sha256="0" * 64, width=256, height=256,
                              fps_num=int(round(fps * 1000)), fps_den=1000, frame_count=len(kp), keep_every=1,
                              num_keypoints=k, kp_step=DEFAULT_KP_STEP, jac_step=DEFAULT_JAC_STEP, predictor="")
    stream = bitstream.KpcStream(header, "png", b"", idx.astype(np.int64), kp[idx], jac[idx])
    data = bitstream.dumps(stream)
    back = bitstream.loads(data)
    kpts = next(n for kind, n in bitstream.chunk_table(data) if kind in ("KPTS", "KPRC"))  # 1.0, or 1.1 and later
    return back.keypoints, back.jacobians, kpts


def fill(name: str, idx, qkp, qjac, frames: int, **options):
    out = list(predict.fill_keypoints(idx, qkp, qjac, frames, name, **options))
    return np.stack([k for k, _ in out]).astype(np.float32), np.stack([j for _, j in out]).astype(np.float32)


def keypoint_table(trajs: list[dict], predictors: list[tuple[str, str, dict]]) -> list[dict]:
    rows = []
    for pat in PATTERNS:
        prepared = []
        kpts_bytes, seconds = 0, 0.0
        for tr in trajs:
            idx = pat.indices(len(tr["kp"]))
            qkp, qjac, nbytes = quantise(tr["kp"], tr["jac"], idx, tr["fps"])
            prepared.append((tr, idx, qkp, qjac))
            kpts_bytes += nbytes
            seconds += len(tr["kp"]) / tr["fps"]
        for label, name, options in predictors:
            if pat.skip == 0 and label not in ("hold",):
                continue  # nothing to predict: one row (quantisation error only)
            acc = {"pred_px": [], "all_px": [], "pred_jac": [], "all_jac": []}
            t0 = time.perf_counter()
            frames = 0
            for tr, idx, qkp, qjac in prepared:
                pk, pj = fill(name, idx, qkp, qjac, len(tr["kp"]), **options)
                frames += len(pk)
                e = np.sqrt(((pk - tr["kp"]) ** 2).sum(-1)) * PX  # (T,K)
                ej = np.sqrt(((pj - tr["jac"]) ** 2).sum((-1, -2)))
                mask = np.ones(len(pk), bool)
                mask[idx] = False
                acc["pred_px"].append(e[mask])
                acc["all_px"].append(e)
                acc["pred_jac"].append(ej[mask])
                acc["all_jac"].append(ej)
            dt = time.perf_counter() - t0
            entry = predict.get_predictor(name)
            row = {"pattern": pattern_label(pat), "predictor": label if pat.skip else "(all sent)",
                   "mode": entry.mode, "kbps": kpts_bytes * 8 / seconds / 1000,
                   "sent_share": float(np.mean([len(i) / len(t["kp"]) for t, i, _, _ in prepared])),
                   "predict_ms_per_frame": 1000 * dt / frames}
            for key, parts in acc.items():
                cat = np.concatenate([p.reshape(-1) for p in parts])
                row[key] = float(cat.mean()) if cat.size else None
            rows.append(row)
            print(f"{row['pattern']:>13} {row['predictor']:>14}: predicted {row['pred_px'] or 0:.3f} px, "
                  f"all {row['all_px']:.3f} px, jac {row['pred_jac'] or 0:.4f}, {row['kbps']:.3f} kb/s", flush=True)
    return rows


def load_motion(args):
    from kpcodec.models.registry import load_checkpoint, load_model

    if args.checkpoint:
        net, ck = load_checkpoint(args.config, args.checkpoint)
        return net, f"{args.config} @ {args.checkpoint} (step {ck.get('step', '?')})"
    return load_model(args.model), args.model


def _motion_sha(args) -> str:
    """The detector sha256 as kpcodec.train.trajectories records it for the same arguments."""
    from kpcodec.models.registry import get_weights, load_checkpoint, state_sha256

    if args.checkpoint:
        return state_sha256(load_checkpoint(args.config, args.checkpoint)[0].detector.state_dict())
    return get_weights(args.model).sha256


def _same_shipped_detector(shas: set[str], want: str) -> bool:
    """Trajectories of another shipped model whose detector tensors are this model's."""
    from kpcodec.models.registry import shipped_detector_fingerprint

    if len(shas) != 1:
        return False
    theirs = shipped_detector_fingerprint(next(iter(shas)))
    return theirs is not None and theirs == shipped_detector_fingerprint(want)


def sender_time(net, data: Path, files: list[str], max_frames: int) -> list[dict]:
    """Detector seconds per video on the sent frames only (as `kpcodec encode` runs it)."""
    import torch

    from kpcodec.train.data import decode_clip

    clips = [decode_clip(data / f, 1, max_frames)[0] for f in files]
    rows = []
    with torch.inference_mode():
        net.detect(torch.zeros(1, 3, 256, 256))  # warm-up
        for pat in PATTERNS:
            secs, frames, sent = [], 0, 0
            for frames_ in clips:
                idx = pat.indices(len(frames_))
                t0 = time.process_time()  # CPU time: one thread, so robust to a busy machine
                for i in range(0, len(idx), 8):
                    x = torch.from_numpy(frames_[idx[i:i + 8]]).permute(0, 3, 1, 2).float() / 255
                    net.detect(x)
                secs.append(time.process_time() - t0)
                frames += len(frames_)
                sent += len(idx)
            rows.append({"pattern": pattern_label(pat), "seconds_per_video": float(np.mean(secs)),
                         "frames_per_video": frames / len(clips), "sent_per_video": sent / len(clips),
                         "ms_per_video_frame": 1000 * sum(secs) / frames})
            print(f"sender {rows[-1]['pattern']}: {rows[-1]['seconds_per_video']:.2f} s/video", flush=True)
    return rows


def render_table(net, data: Path, landmarks: Path, trajs: dict, files: list[str], predictors: list[tuple[str, str, dict]],
                 patterns: list[SendPattern], max_frames: int) -> list[dict]:
    import torch

    from kpcodec.eval.landmarks import detect_video, fidelity_from_landmarks
    from kpcodec.eval.metrics import l1, psnr, ssim
    from kpcodec.train.data import decode_clip
    from kpcodec.models.frames import frames_to_tensor as to_tensor
    from kpcodec.train.evaluate import render_keypoints

    rows = []
    for f in files:
        stem = Path(f).stem
        frames, _ = decode_clip(data / f, 1, max_frames)
        tr = trajs[stem]
        kp, jac = tr["kp"][:len(frames)], tr["jac"][:len(frames)]
        lm_path = landmarks / f"{stem}.npz"
        original_lm = None
        if lm_path.is_file():
            with np.load(lm_path) as z:
                original_lm = z["landmarks"].astype(np.float32)[:len(frames)]
        with torch.inference_mode():
            state = net.prepare_source(to_tensor(frames[:1]))
        configs = [("all sent", "(detector, every frame)", None, kp, jac)]
        # keep-every 1 as the codec sends it (quantised): the reference the issue compares keep-every 2 with.
        every = np.arange(len(frames))
        qkp, qjac, _ = quantise(kp, jac, every, tr["fps"])
        configs.append(("keep-every 1", "(all sent, quantised)", None, qkp, qjac))
        for pat in patterns:
            idx = pat.indices(len(frames))
            qkp, qjac, _ = quantise(kp, jac, idx, tr["fps"])
            for label, name, options in predictors:
                pk, pj = fill(name, idx, qkp, qjac, len(frames), **options)
                configs.append((pattern_label(pat), label, idx, pk, pj))
        for pat_label, label, idx, pk, pj in configs:
            t0 = time.process_time()
            decoded = render_keypoints(net, state, pk, pj)
            render_s = time.process_time() - t0
            row = {"clip": stem, "pattern": pat_label, "predictor": label, "frames": len(frames),
                   "l1": float(np.mean([l1(a, b) for a, b in zip(frames, decoded)])),
                   "psnr": float(np.mean([psnr(a, b) for a, b in zip(frames, decoded)])),
                   "ssim": float(np.mean([ssim(a, b) for a, b in zip(frames, decoded)])),
                   "render_s_per_frame": render_s / len(frames)}
            if idx is not None:
                mask = np.ones(len(frames), bool)
                mask[idx] = False
                row["ssim_predicted"] = float(np.mean([ssim(a, b) for a, b, m in zip(frames, decoded, mask) if m])) \
                    if mask.any() else None
            if original_lm is not None:
                try:
                    found = detect_video(decoded, near=list(original_lm))
                    fid = fidelity_from_landmarks(list(original_lm), found)
                    row["landmark_error_px"] = fid["landmark_error_px"]
                except Exception as exc:  # mediapipe missing: pixel metrics only
                    row["landmark_error_px"] = None
                    print(f"landmarks unavailable: {exc}", file=sys.stderr)
            rows.append(row)
            print(f"render {stem[:28]:>28} {pat_label:>13} {label:>22}: PSNR {row['psnr']:.2f} SSIM {row['ssim']:.4f} "
                  f"LM {row.get('landmark_error_px') or float('nan'):.2f}", flush=True)
    return rows


def mean_rows(rows: list[dict], keys: list[str], group: tuple[str, ...]) -> list[dict]:
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(r[g] for g in group), []).append(r)
    result = []
    for k, rs in out.items():
        row = dict(zip(group, k))
        for key in keys:
            vals = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
            row[key] = float(np.mean(vals)) if vals else None
        row["clips"] = len(rs)
        result.append(row)
    return result


def fmt(v, digits=3) -> str:
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trajectories", type=Path, default=Path("runs/cache/trajectories"))
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--landmarks", type=Path, default=Path("runs/cache/landmarks"))
    p.add_argument("--model", default=None, help="shipped motion model for sender timing and rendering")
    p.add_argument("--checkpoint", type=Path, help="or a training checkpoint (with --config)")
    p.add_argument("--config", default="fomm-256-quarter")
    p.add_argument("--predictors", default=None, help="comma-separated (default: every registered one)")
    p.add_argument("--render", default=None, help="predictors to render (default: the best 3 causal at 12:12)")
    p.add_argument("--render-clips", type=int, default=3)
    p.add_argument("--render-frames", type=int, default=72)
    p.add_argument("--timing-clips", type=int, default=3)
    p.add_argument("--no-render", action="store_true")
    p.add_argument("--model-card", type=Path, default=ROOT / "kpcodec" / "weights" / "PREDICTORS.md",
                   help="where to write the shipped predictors' model card (with --set-default)")
    p.add_argument("--set-default", action="store_true",
                   help="make the causal predictor with the lowest mean predicted-frame error the registry default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--tag", default="predictor_quality")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    start = time.time()
    val = load_trajectories(args.trajectories, "val")
    if not val:
        raise SystemExit(f"{args.trajectories}: no val trajectories")
    shas = {t["detector_sha256"] for t in val}
    # Load the motion model first (a shipped one could be replaced while this runs) and make
    # sure its detector is the one that made the trajectories.
    net, motion_label = load_motion(args) if (args.model or args.checkpoint) else (None, None)
    if net is not None:
        want = _motion_sha(args)
        if shas != {want} and not _same_shipped_detector(shas, want):
            raise SystemExit(f"trajectories come from detector {sorted(shas)[0][:12]}…, the motion model's is "
                             f"{want[:12]}…: re-run python -m kpcodec.train.trajectories with the same model")
    names = args.predictors.split(",") if args.predictors else list(predict.PREDICTORS)
    predictors = [(n, n, {}) for n in names]
    for n in names:  # learned keypoints with held Jacobians: are predicted Jacobians worth it?
        if predict.get_predictor(n).learned and not predict.get_predictor(n).options:
            predictors.append((f"{n} (jac held)", n, {"hold_jacobians": True}))
    kp_rows = keypoint_table(val, predictors)
    frames = sum(len(t["kp"]) for t in val)
    ranking = rank_causal(kp_rows)
    default = predict.DEFAULT_PREDICTOR
    if args.set_default and ranking:
        from kpcodec.train.predictor_training import set_default

        default = ranking[0][0]
        set_default(default)

    files = {Path(r).stem: r for r in _val_files(args.data)}
    timing, render_rows = [], []
    if net is not None:
        timing = sender_time(net, args.data, list(files.values())[:args.timing_clips], 300)
        if not args.no_render:
            if args.render:
                chosen = args.render.split(",")
            else:  # the best causal predictor, the damped-velocity baseline, the best interpolating one
                interp = rank_causal(kp_rows, mode="interpolating")
                chosen = list(dict.fromkeys([ranking[0][0]] + (["linear"] if "linear" in names else [])
                                            + ([interp[0][0]] if interp else [])))
            render_preds = [(n, n, {}) for n in chosen]
            by_name = {t["name"]: t for t in val}
            clip_files = [files[s] for s in _render_clips(by_name, files, args.render_clips)]
            render_rows = render_table(net, args.data, args.landmarks, by_name, clip_files, render_preds,
                                       [SendPattern(1, 1), SendPattern(12, 12)], args.render_frames)
    seconds = time.time() - start

    args.out.mkdir(parents=True, exist_ok=True)
    render_mean = mean_rows(render_rows, ["l1", "psnr", "ssim", "ssim_predicted", "landmark_error_px"],
                            ("pattern", "predictor"))
    registry = {n: {"kind": e.kind, "mode": e.mode, "config": e.config, "options": e.options, "file": e.file}
                for n, e in predict.PREDICTORS.items() if n in names}
    result = {"date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "machine": _machine(),
              "command": " ".join([Path(sys.executable).name] + sys.argv), "seconds": seconds,
              "detector_sha256": sorted(shas), "val_clips": len(val), "val_frames": frames,
              "motion_model": motion_label, "default_predictor": default, "ranking": ranking, "predictors": registry,
              "keypoints": kp_rows, "sender": timing, "render": render_rows, "render_mean": render_mean}
    (args.out / f"{args.tag}.json").write_text(json.dumps(result, indent=1))
    text = report(result)
    (args.out / f"{args.tag}.md").write_text(text)
    if args.set_default:
        args.model_card.write_text(model_card(result))
    print(text)


def model_card(r: dict) -> str:
    """kpcodec/weights/PREDICTORS.md: what each registered predictor is, how it was made, how it does."""
    from kpcodec.models.predictor_nets import build_predictor, parameter_count

    entries, default = predict.read_registry()
    lines = ["# Keypoint predictors shipped with kpcodec", "",
             "Registry: `kpcodec/weights/predictors.json` (kinds, settings, fp16 weights with sha256). Written by",
             f"`benchmarks/predictor_quality.py --set-default` ({r['date']}); full tables in",
             "benchmarks/results/predictor_quality.md. Errors: val split, mean L2 px at 256x256 on frames not sent.",
             f"Trajectories from detector sha256 {', '.join(x[:12] for x in r['detector_sha256'])}.",
             f"Default: **{default}** (lowest mean predicted-frame error among causal predictors).", ""]
    by = {}
    for row in r["keypoints"]:
        by.setdefault(row["predictor"], {})[row["pattern"]] = row["pred_px"]
    pats = ["keep-every 2", "keep-every 3", "keep-every 4", "12:12"]
    lines += ["| predictor | kind | mode | parameters | file | training | " + " | ".join(pats) + " |",
              "|---" * (6 + len(pats)) + "|"]
    for name, e in entries.items():
        params, size, training = "—", "—", "—"
        if e.learned:
            params = str(parameter_count(build_predictor({**e.config, "kind": e.kind})))
            size = f"{e.file} ({(predict.weights_dir() / e.file).stat().st_size / 1024:.0f} KiB)"
            raw = json.loads(predict.registry_path().read_text())["predictors"][name].get("trained", {})
            training = f"{raw.get('steps')} steps, {raw.get('cpu_seconds', 0) / 60:.1f} CPU-min"
        elif e.kind == "linear":
            training = f"damping {e.config.get('damping')} (grid search on train)"
        opts = f" {e.options}" if e.options else ""
        lines.append(f"| {name}{opts} | {e.kind} | {e.mode} | {params} | {size} | {training} | "
                     + " | ".join(fmt(by.get(name, {}).get(p)) for p in pats) + " |")
    return "\n".join(lines) + "\n"


def rank_causal(rows: list[dict], mode: str = "causal") -> list[tuple[str, float]]:
    """Registered predictors of a mode by mean predicted-frame error over the patterns that skip."""
    errs: dict[str, list[float]] = {}
    for r in rows:
        if r["mode"] == mode and r["predictor"] in predict.PREDICTORS and r["pred_px"] is not None:
            errs.setdefault(r["predictor"], []).append(r["pred_px"])
    n = max((len(v) for v in errs.values()), default=0)
    return sorted(((k, float(np.mean(v))) for k, v in errs.items() if len(v) == n), key=lambda x: x[1])


def _val_files(data: Path) -> list[str]:
    from kpcodec.train.data import manifest_rows

    return [r["file"] for r in manifest_rows(data, "val")]


def _render_clips(trajs: dict, files: dict, n: int) -> list[str]:
    """The val clips with the most keypoint motion (a fixed, reproducible choice), with landmarks."""
    from kpcodec.train.evaluate import MONITOR_CLIPS

    preferred = [Path(f).stem for f in MONITOR_CLIPS if Path(f).stem in trajs and Path(f).stem in files]
    return preferred[:n]


def _machine() -> str:
    import os

    import torch

    return (f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), Python {platform.python_version()}")


def report(r: dict) -> str:
    lines = [
        "# Keypoint predictors on the val split",
        "",
        f"{r['date']}, {r['machine']}; {r['seconds']:.0f} s.",
        f"Command: `{r['command']}`",
        f"Val: {r['val_clips']} clips, {r['val_frames']} frames; detector sha256 {', '.join(s[:12] for s in r['detector_sha256'])}"
        + (f"; motion model {r['motion_model']}." if r["motion_model"] else "."),
        f"Default predictor: **{r['default_predictor']}** (causal predictors by mean predicted-frame error over "
        "keep-every 2, 3, 4 and 12:12: " + ", ".join(f"{n} {e:.3f}" for n, e in r["ranking"]) + " px).",
        "",
        "## Keypoint error",
        "",
        "Sent frames are quantised and packed as the KPRC chunk of the newest format (kb/s = its bytes at each clip's fps); errors against the",
        "detector's unquantised keypoints, in pixels at 256x256 (mean L2 per keypoint), Jacobian error as",
        "mean Frobenius norm. *predicted* = frames not sent, *all* = every frame (sent frames: quantisation",
        "error only). `(jac held)`: the learned keypoints with the last sent Jacobians.",
        "",
        "| pattern | predictor | mode | kp px (predicted) | kp px (all) | jac (predicted) | jac (all) | KPRC kb/s | predict ms/frame |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["keypoints"]:
        lines.append(f"| {row['pattern']} | {row['predictor']} | {row['mode']} | {fmt(row['pred_px'])} | "
                     f"{fmt(row['all_px'])} | {fmt(row['pred_jac'], 4)} | {fmt(row['all_jac'], 4)} | "
                     f"{fmt(row['kbps'])} | {fmt(row['predict_ms_per_frame'], 2)} |")
    if r["sender"]:
        lines += ["", "## Sender detector time", "",
                  "The detector on the sent frames only (batch 8, one thread), CPU time per video of the first",
                  "val clips (CPU time, not wall time: the machine is shared).", "",
                  "| pattern | sent / frames | detector CPU s per video | CPU ms per video frame |", "|---|---|---|---|"]
        for row in r["sender"]:
            lines.append(f"| {row['pattern']} | {row['sent_per_video']:.0f} / {row['frames_per_video']:.0f} | "
                         f"{row['seconds_per_video']:.2f} | {row['ms_per_video_frame']:.2f} |")
    if r["render"]:
        lines += ["", "## Rendered video", "",
                  f"Motion model {r['motion_model']}; source = frame 0 (uncompressed), first "
                  f"{r['render'][0]['frames']} frames of {len({x['clip'] for x in r['render']})} val clips; "
                  "landmark error: mediapipe face mesh on the decoded frames vs the original's (px at 256).", "",
                  "| pattern | predictor | L1 | PSNR | SSIM | SSIM (predicted frames) | landmark px |",
                  "|---|---|---|---|---|---|---|"]
        for row in r["render_mean"]:
            lines.append(f"| {row['pattern']} | {row['predictor']} | {fmt(row['l1'], 4)} | {fmt(row['psnr'], 2)} | "
                         f"{fmt(row['ssim'], 4)} | {fmt(row['ssim_predicted'], 4)} | {fmt(row['landmark_error_px'], 2)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

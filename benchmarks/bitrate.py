"""The keypoint stream's bit budget on the val split, step by step (issue 6's table).

    python benchmarks/bitrate.py                       # keypoint rates, from cached trajectories
    python benchmarks/bitrate.py --render 3            # + rendered SSIM of the quantisation steps
    python benchmarks/bitrate.py --kpc a.kpc --kpc b.kpc  # + whole-file budgets (kpcodec info)

Keypoint part: every val trajectory (kpcodec.train.trajectories: the shipped detector on
every frame) is coded as the .kpc keypoint chunk at keep-every 1, 2, 4 and auto, once per
coding stage: 1.0 (plain DPCM, kp 1/256, jac 1/64, varints + zstd), then each step of
format 1.1 added in turn: the in-loop integer predictor, the chosen steps, the range coder
(= format 1.1's KPRC chunk), then format 1.3's intra-frame decorrelation with positions
predicted by their last value (KPRC coder 1 where it is smaller, as kpcodec.bitstream.container writes it). Rates are chunk bytes (framing
included) x 8 over the clips' duration at 25 fps. The error column is the decoder's
keypoints (the file's default predictor filling the unsent frames, from the quantised
sent ones) against the detector's, mean L2 over all frames in px at 256x256.

Render part (--render N): N val clips x --frames frames rendered by the shipped motion
model from every frame's keypoints, unquantised and quantised at each candidate pair of
steps; mean SSIM against the original frames.
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

from kpcodec.codec import adaptive, predictors as predict  # noqa: E402

from kpcodec import bitstream
from kpcodec.bitstream import quantize as q  # noqa: E402
from kpcodec.train.trajectories import load_trajectories  # noqa: E402

FPS = 25.0  # rates are quoted at 25 fps, whatever a clip's own rate
KEEPS = ["1", "2", "4", "auto"]
STEP_CANDIDATES = [(256, 64), (128, 64), (64, 64), (128, 32), (64, 32), (48, 32), (64, 24), (128, 16)]
RENDER_CLIPS = ["liveportrait_d10", "dreamtalk_W011_front_surprised_level3_001",
                "vox1_id10289_Rn0Z_lIiL1w_000852"]  # the first monitoring clips of kpcodec.train.evaluate


# Each coding stage: (label, in-loop predictors (kp, jac) or None for 1.0's DPCM, steps, coder).
STAGES = [
    ("1.0: DPCM, kp 1/256, jac 1/64, zstd", None, (q.V1_0_KP_STEP, q.V1_0_JAC_STEP), "zstd"),
    ("+ in-loop predictor (kp half-velocity, jac previous)", q.PREDICTORS_1_1,
     (q.V1_0_KP_STEP, q.V1_0_JAC_STEP), "zstd"),
    (f"+ steps kp 1/{1 / q.DEFAULT_KP_STEP:g}, jac 1/{1 / q.DEFAULT_JAC_STEP:g}",
     q.PREDICTORS_1_1, (q.DEFAULT_KP_STEP, q.DEFAULT_JAC_STEP), "zstd"),
    ("+ adaptive range coder = format 1.1", q.PREDICTORS_1_1,
     (q.DEFAULT_KP_STEP, q.DEFAULT_JAC_STEP), "range"),
    ("+ intra-frame decorrelation, kp previous = format 1.3", q.PREDICTORS_1_3,
     (q.DEFAULT_KP_STEP, q.DEFAULT_JAC_STEP), "decorrelated"),
]


# The coders that are a format's KPRC chunk: the writer's own code makes them (its minor version).
WRITER_MINOR = {"range": 1, "decorrelated": bitstream.DECORRELATED_MINOR}


def chunk_bytes(kp, jac, idx, predictors, steps, coder_name) -> int:
    """Bytes of the keypoint chunk, framing included, for one clip."""
    if coder_name in WRITER_MINOR:  # the predictors are the format's own
        return 12 + len(bitstream.kprc_payload(idx, kp[idx], jac[idx], *steps, WRITER_MINOR[coder_name]))
    deltas = np.diff(idx, prepend=0)
    if predictors is None:
        r_kp, r_jac = q.quantize_keypoints(kp[idx], jac[idx], *steps)
    else:
        r_kp, r_jac = q.closed_loop_rows(kp[idx], jac[idx], *steps, predictors)
    # 1.0's KPTS layout: S, then three length-prefixed blobs
    return 12 + 4 + sum(4 + len(q.pack_symbols(a)) for a in (deltas, r_kp, r_jac))


def decoded_keypoints(tr, idx, steps, predictor) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's keypoints and Jacobians of every frame: frames `idx` sent at `steps`, the
    others filled by `predictor` from the quantised sent ones."""
    kp_dec = q.decoder_values(tr["kp"][idx], steps[0], q.KP_CLIP)
    jac_dec = q.decoder_values(tr["jac"][idx], steps[1], q.JAC_CLIP)
    filled = list(predict.fill_keypoints(idx, kp_dec, jac_dec, len(tr["kp"]), predictor))
    return np.stack([k for k, _ in filled]), np.stack([j for _, j in filled])


def fill_error_px(tr, idx, steps, predictor) -> float:
    """Mean keypoint error over all frames of the decoder's filled keypoints."""
    filled, _ = decoded_keypoints(tr, idx, steps, predictor)
    return float((np.linalg.norm(filled.astype(np.float64) - tr["kp"], axis=-1) * adaptive.PX_AT_256).mean())


def sent_indices(tr, keep: str, predictor: str, max_error: float) -> np.ndarray:
    if keep == "auto":
        return adaptive.choose_sent_frames(tr["kp"], tr["jac"], predictor, max_error)
    return np.arange(0, len(tr["kp"]), int(keep))


def keypoint_rows(val, predictor: str, max_errors: list[float]) -> list[dict]:
    seconds = sum(len(t["kp"]) for t in val) / FPS
    keeps = [(k, None) for k in KEEPS if k != "auto"] + [("auto", e) for e in max_errors]
    rows = []
    for keep, e in keeps:
        t0 = time.perf_counter()
        idx = {t["name"]: sent_indices(t, keep, predictor, e) for t in val}
        pick_s = time.perf_counter() - t0
        sent = sum(len(i) for i in idx.values())
        for label, predictors, steps, coder in STAGES:
            if keep == "auto" and label != STAGES[-1][0]:
                continue  # auto's row is the full coding of the newest format
            t0 = time.perf_counter()
            nbytes = sum(chunk_bytes(t["kp"], t["jac"], idx[t["name"]], predictors, steps, coder) for t in val)
            code_s = time.perf_counter() - t0
            err = float(np.average([fill_error_px(t, idx[t["name"]], steps, predictor) for t in val],
                                   weights=[len(t["kp"]) for t in val]))
            row = {"keep": keep if e is None else f"auto (E={e:g} px)", "max_error": e, "stage": label,
                   "coder": coder, "bytes": nbytes, "kbps": nbytes * 8 / seconds / 1000,
                   "bits_per_sent_frame": nbytes * 8 / sent, "sent_share": sent / (seconds * FPS),
                   "error_px": err, "code_ms_per_frame": 1000 * code_s / (seconds * FPS),
                   "choose_ms_per_frame": 1000 * pick_s / (seconds * FPS) if e is not None else None}
            rows.append(row)
            print(f"{row['keep']:>16} {label[:48]:>48}: {row['kbps']:.3f} kb/s, {err:.3f} px", flush=True)
    return rows


def render_rows(data: Path, val: dict, clips: list[str], frames: int) -> list[dict]:
    """SSIM of the rendered video with every frame's keypoints quantised at each step pair."""
    import torch

    from kpcodec.eval.metrics import ssim
    from kpcodec.models.frames import frames_to_tensor
    from kpcodec.models.registry import load_model
    from kpcodec.train.data import decode_clip
    from kpcodec.train.evaluate import render_keypoints

    net = load_model(None)
    rows = []
    for clip in clips:
        video, _ = decode_clip(data / "talking-heads" / "val" / f"{clip}.mp4", 1, frames)
        kp, jac = val[clip]["kp"][:len(video)], val[clip]["jac"][:len(video)]
        with torch.inference_mode():
            state = net.prepare_source(frames_to_tensor(video[:1]))
        for steps in [None] + STEP_CANDIDATES:
            if steps is None:
                qk, qj = kp, jac
            else:
                qk = q.decoder_values(kp, 1 / steps[0], q.KP_CLIP)
                qj = q.decoder_values(jac, 1 / steps[1], q.JAC_CLIP)
            decoded = render_keypoints(net, state, qk, qj)
            value = float(np.mean([ssim(a, b) for a, b in zip(video, decoded)]))
            rows.append({"clip": clip, "frames": len(video), "kp_step": None if steps is None else f"1/{steps[0]}",
                         "jac_step": None if steps is None else f"1/{steps[1]}", "ssim": value})
            print(f"render {clip[:24]:>24} {steps}: SSIM {value:.4f}", flush=True)
    return rows


def render_keep_rows(data: Path, landmarks: Path, val: dict, clips: list[str], frames: int, predictor: str,
                     max_error: float) -> list[dict]:
    """Keep-every 2 against auto on rendered video: the decoder's filled keypoints (format 1.1
    steps), SSIM and mediapipe face-landmark error against the original frames' landmarks."""
    import torch

    from kpcodec.eval.landmarks import detect_video, fidelity_from_landmarks
    from kpcodec.eval.metrics import ssim
    from kpcodec.models.frames import frames_to_tensor
    from kpcodec.models.registry import load_model
    from kpcodec.train.data import decode_clip
    from kpcodec.train.evaluate import render_keypoints

    net = load_model(None)
    steps = (q.DEFAULT_KP_STEP, q.DEFAULT_JAC_STEP)
    rows = []
    for clip in clips:
        video, _ = decode_clip(data / "talking-heads" / "val" / f"{clip}.mp4", 1, frames)
        tr = {"kp": val[clip]["kp"][:len(video)], "jac": val[clip]["jac"][:len(video)]}
        with np.load(landmarks / f"{clip}.npz") as z:
            original = list(z["landmarks"].astype(np.float32)[:len(video)])
        with torch.inference_mode():
            state = net.prepare_source(frames_to_tensor(video[:1]))
        for keep in ("2", "auto"):
            idx = sent_indices(tr, keep, predictor, max_error)
            out = render_keypoints(net, state, *decoded_keypoints(tr, idx, steps, predictor))
            found = detect_video(out, near=original)
            row = {"clip": clip, "keep": keep if keep != "auto" else f"auto (E={max_error:g} px)",
                   "frames": len(video), "sent": len(idx), "ssim": float(np.mean([ssim(a, b) for a, b in zip(video, out)])),
                   "landmark_error_px": fidelity_from_landmarks(original, found)["landmark_error_px"],
                   "keypoint_error_px": fill_error_px(tr, idx, steps, predictor)}
            rows.append(row)
            print(f"render {clip[:24]:>24} {row['keep']:>14}: sent {row['sent']}, SSIM {row['ssim']:.4f}, "
                  f"landmarks {row['landmark_error_px']:.3f} px", flush=True)
    return rows


def render_summary(rows: list[dict]) -> list[dict]:
    base = {r["clip"]: r["ssim"] for r in rows if r["kp_step"] is None}
    out = []
    for key in dict.fromkeys((r["kp_step"], r["jac_step"]) for r in rows if r["kp_step"] is not None):
        sel = [r for r in rows if (r["kp_step"], r["jac_step"]) == key]
        out.append({"kp_step": key[0], "jac_step": key[1], "ssim": float(np.mean([r["ssim"] for r in sel])),
                    "delta": float(np.mean([r["ssim"] - base[r["clip"]] for r in sel])),
                    "worst_clip_delta": float(min(r["ssim"] - base[r["clip"]] for r in sel))})
    return out


def file_budgets(paths: list[str]) -> list[dict]:
    from kpcodec import api

    return [api.info(p) for p in paths]


def _machine() -> str:
    import os

    return (f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, numpy {np.__version__}")


def save_results(out: Path, tag: str, result: dict, report) -> None:
    """OUT/TAG.json and OUT/TAG.md (made by `report` from the result); the report goes to stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(result, indent=1))
    text = report(result)
    (out / f"{tag}.md").write_text(text)
    print(text)


def _fmt_row(r: dict) -> str:
    return (f"| {r['keep']} | {r['stage']} | {r['kbps']:.3f} | {r['bits_per_sent_frame']:.0f} | "
            f"{100 * r['sent_share']:.0f}% | {r['error_px']:.3f} |")


def report(r: dict) -> str:
    rows = r["keypoints"]
    lines = ["# Keypoint bit budget on the val split", "",
             f"{r['date']}, {r['machine']}; {r['seconds']:.0f} s.", f"Command: `{r['command']}`",
             f"Val: {r['val_clips']} clips, {r['val_frames']} frames (rates at {FPS:g} fps: "
             f"{r['val_frames'] / FPS:.1f} s); fill predictor `{r['predictor']}` (the decoder's default).", "",
             "Keypoint chunk (framing included) at each coding stage; error: decoder's keypoints vs the "
             "detector's, all frames, px at 256x256.", "",
             "| keep | coding | kb/s | bits/sent frame | sent | error px |", "|---|---|---|---|---|---|"]
    lines += [_fmt_row(x) for x in rows]
    final = STAGES[-1][0]
    by = {(x["keep"], x["stage"]): x for x in rows}
    k1, k2 = by.get(("1", final)), by.get(("2", final))
    lines += [""]
    if k1 and k2:
        ratios = [by[("2", st[0])]["kbps"] / by[("1", st[0])]["kbps"] for st in STAGES]
        lines.append(f"Format 1.3 keep-every 2 / keep-every 1 keypoint rate: {ratios[-1]:.2f} "
                     f"(1.1: {ratios[-2]:.2f}, 1.0: {ratios[0]:.2f}).")
        for keep in ("1", "2", "4"):
            a, b = by.get((keep, STAGES[-2][0])), by.get((keep, final))
            if a and b:
                lines.append(f"Decorrelation (1.3 vs 1.1) at keep-every {keep}: {b['kbps']:.3f} vs "
                             f"{a['kbps']:.3f} kb/s ({b['kbps'] / a['kbps'] - 1:+.1%}), coding "
                             f"{b['code_ms_per_frame']:.2f} vs {a['code_ms_per_frame']:.2f} ms per video frame.")
    zstd, rng = by.get(("2", STAGES[2][0])), by.get(("2", STAGES[3][0]))
    if zstd and rng:
        lines.append(f"Same residuals, zstd-19 varints vs the adaptive range coder at keep-every 2: "
                     f"{zstd['bytes']} vs {rng['bytes']} bytes ({rng['bytes'] / zstd['bytes']:.2f}x); "
                     f"coding speed {zstd['code_ms_per_frame']:.2f} vs {rng['code_ms_per_frame']:.2f} ms per video "
                     "frame (both far below a 25 fps frame's 40 ms).")
    autos = [x for x in rows if x["max_error"] is not None]
    if k2 and autos:
        good = [x for x in autos if x["error_px"] <= k2["error_px"]]
        if good:
            best = min(good, key=lambda x: x["kbps"])
            lines.append(f"Auto at equal or lower error than keep-every 2 ({k2['error_px']:.3f} px): {best['keep']} "
                         f"{best['kbps']:.3f} kb/s ({best['error_px']:.3f} px) vs {k2['kbps']:.3f} kb/s; choosing "
                         f"the frames costs {best['choose_ms_per_frame']:.2f} ms per frame.")
    if r.get("render_summary"):
        base = np.mean([x["ssim"] for x in r["render"] if x["kp_step"] is None])
        lines += ["", f"## Quantisation steps and rendered SSIM ({len({x['clip'] for x in r['render']})} val clips "
                  f"x {r['render'][0]['frames']} frames, every frame's keypoints quantised; unquantised SSIM "
                  f"{base:.4f}; made by `{r['render_command']}`)", "",
                  "| kp step | jac step | SSIM | change | worst clip |", "|---|---|---|---|---|"]
        lines += [f"| {x['kp_step']} | {x['jac_step']} | {x['ssim']:.4f} | {x['delta']:+.4f} | "
                  f"{x['worst_clip_delta']:+.4f} |" for x in r["render_summary"]]
    if r.get("render_keep"):
        rk = r["render_keep"]
        lines += ["", f"## Keep-every 2 against auto, rendered ({len({x['clip'] for x in rk})} val clips x "
                  f"{rk[0]['frames']} frames, format 1.1 steps, `{r['predictor']}` filling)", "",
                  "Landmarks: mediapipe face landmarks of the rendered frames against the original frames' "
                  "(cached), mean px at 256x256; keypoints: as in the first table.", "",
                  "| clip | keep | sent | SSIM | landmark px | keypoint px |", "|---|---|---|---|---|---|"]
        lines += [f"| {x['clip']} | {x['keep']} | {x['sent']} | {x['ssim']:.4f} | {x['landmark_error_px']:.3f} | "
                  f"{x['keypoint_error_px']:.3f} |" for x in rk]
        for keep in dict.fromkeys(x["keep"] for x in rk):
            sel = [x for x in rk if x["keep"] == keep]
            lines.append(f"| mean | {keep} | {np.mean([x['sent'] for x in sel]):.1f} | "
                         f"{np.mean([x['ssim'] for x in sel]):.4f} | "
                         f"{np.mean([x['landmark_error_px'] for x in sel]):.3f} | "
                         f"{np.mean([x['keypoint_error_px'] for x in sel]):.3f} |")
    if r.get("files"):
        lines += ["", "## Whole files (kpcodec info)", "",
                  "Each made by `kpcodec encode CLIP -o FILE --keep-every K --no-audio` (default model, source "
                  "image and predictor) from a val clip; bytes include every chunk.", "",
                  "| file | frames | s | bytes | KiB | source | keypoints |"
                  " kb/s |", "|---|---|---|---|---|---|---|---|"]
        for f in r["files"]:
            b = f["budget"]
            lines.append(f"| {Path(f['file']).name} | {f['header']['frame_count']} | {f['duration_s']:.2f} | "
                         f"{f['bytes']} | {f['bytes'] / 1024:.2f} | {b['source']['bytes']} | "
                         f"{b['keypoints']['bytes']} | {f['kbps']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trajectories", type=Path, default=Path("runs/cache/trajectories"))
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--predictor", default=predict.DEFAULT_PREDICTOR)
    p.add_argument("--max-errors", default="0.8,1.0,1.2,1.5", help="auto rows: --max-error values, px")
    p.add_argument("--render", type=int, default=0, help="val clips to render for the step choice (0: none)")
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--reuse-render", action="store_true",
                   help="take the render rows from OUT/TAG.json of an earlier run (they take long)")
    p.add_argument("--render-keep", type=int, default=0,
                   help="val clips to render at keep-every 2 and auto (SSIM, face-landmark error; 0: none)")
    p.add_argument("--landmarks", type=Path, default=Path("runs/cache/landmarks"))
    p.add_argument("--kpc", action="append", default=[], help=".kpc files whose whole budget to list")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--tag", default="bitrate")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    start = time.time()
    val = load_trajectories(args.trajectories, "val")
    if not val:
        raise SystemExit(f"{args.trajectories}: no val trajectories")
    rows = keypoint_rows(val, args.predictor, [float(x) for x in args.max_errors.split(",")])
    render_command = " ".join([Path(sys.executable).name] + sys.argv)
    if args.reuse_render:
        earlier = json.loads((args.out / f"{args.tag}.json").read_text())
        render, render_command = earlier["render"], earlier.get("render_command", earlier["command"])
    elif args.render:
        render = render_rows(args.data, {t["name"]: t for t in val}, RENDER_CLIPS[:args.render], args.frames)
    else:
        render = []
    files = file_budgets(args.kpc)
    keep_render = render_keep_rows(args.data, args.landmarks, {t["name"]: t for t in val},
                                   RENDER_CLIPS[:args.render_keep], args.frames, args.predictor,
                                   adaptive.DEFAULT_MAX_ERROR) if args.render_keep else []
    result = {"date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "machine": _machine(),
              "command": " ".join([Path(sys.executable).name] + sys.argv), "seconds": time.time() - start,
              "format_version": "%d.%d" % bitstream.FORMAT_VERSION, "predictor": args.predictor,
              "val_clips": len(val), "val_frames": sum(len(t["kp"]) for t in val), "keypoints": rows,
              "render": render, "render_command": render_command if render else None, "render_summary": render_summary(render) if render else [], "files": files,
              "render_keep": keep_render}
    save_results(args.out, args.tag, result, report)


def rewrite_report(path: Path) -> None:
    """Regenerate the .md next to a results .json (after editing the report's wording)."""
    path.with_suffix(".md").write_text(report(json.loads(path.read_text())))


if __name__ == "__main__":
    main()

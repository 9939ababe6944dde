"""Helpers of the benchmark scripts whose arithmetic the committed results rest on."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import rate_quality as rq  # noqa: E402

from kpcodec.bitstream import quantize as q  # noqa: E402


def smooth_trajectory(frames: int = 60, k: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None]
    kp = rng.uniform(-0.5, 0.5, (1, k, 2)) + 0.1 * np.sin(t / 6 + rng.uniform(0, 6, (1, k, 2)))
    jac = np.eye(2) + 0.1 * np.sin(t[..., None] / 9 + rng.uniform(0, 6, (1, k, 2, 2)))
    return {"name": f"clip{seed}", "kp": kp.astype(np.float32), "jac": jac.astype(np.float32)}


def test_rate_for_ssim_interpolates_log_rate_and_refuses_outside():
    curve = [{"kbps": 1.0, "ssim": 0.80}, {"kbps": 4.0, "ssim": 0.84}, {"kbps": 2.0, "ssim": 0.82}]
    assert rq.rate_for_ssim(curve, 0.82) == pytest.approx(2.0)
    assert rq.rate_for_ssim(curve, 0.81) == pytest.approx(np.sqrt(2.0))  # halfway in log rate
    assert rq.rate_for_ssim(curve, 0.83) == pytest.approx(np.sqrt(8.0))
    assert rq.rate_for_ssim(curve, 0.85) is None and rq.rate_for_ssim(curve, 0.79) is None


def test_pick_clips_spreads_over_sorted_names():
    names = [f"c{i:02d}" for i in range(10)][::-1]
    assert rq.pick_clips(names, 3) == ["c00", "c04", "c09"]
    assert rq.pick_clips(names, 0) == sorted(names)
    assert rq.pick_clips(names, 20) == sorted(names)


def test_rates_fall_with_sparser_sending_and_coarser_steps():
    val = [smooth_trajectory(seed=s) for s in range(3)]
    steps = (q.DEFAULT_KP_STEP, q.DEFAULT_JAC_STEP)
    coarse = (2 * steps[0], 2 * steps[1])
    every, second = rq.rate_kbps(val, 1, steps), rq.rate_kbps(val, 2, steps)
    assert second < every
    assert rq.rate_kbps(val, 1, coarse) < every


def test_decoded_keypoints_keep_sent_frames_within_half_a_step():
    tr = smooth_trajectory()
    steps = (q.DEFAULT_KP_STEP, q.DEFAULT_JAC_STEP)
    idx = rq.sent(tr, 2, "linear")
    assert idx.tolist() == list(range(0, len(tr["kp"]), 2))
    kp, jac = rq.decoded_at(tr, idx, steps, "linear")
    assert kp.shape == tr["kp"].shape and jac.shape == tr["jac"].shape
    assert np.abs(kp[::2] - tr["kp"][::2]).max() <= steps[0] / 2 + 1e-6
    assert np.abs(jac[::2] - tr["jac"][::2]).max() <= steps[1] / 2 + 1e-6
    assert np.abs(kp[1::2] - tr["kp"][1::2]).max() > steps[0] / 2  # predicted, not sent


def test_auto_rows_send_fewer_frames_as_the_error_bound_grows():
    tr = smooth_trajectory()
    tight, loose = rq.sent(tr, "auto", "linear", 0.5), rq.sent(tr, "auto", "linear", 4.0)
    assert tight[0] == 0 and loose[0] == 0 and len(loose) <= len(tight)
    assert rq.label({"keep": "auto", "max_error": 2.5}) == "auto (E=2.5 px)" and rq.label({"keep": 4}) == "4"
    rows = [{"keep": "auto", "max_error": 2.0, "scale": 1}, {"keep": 2, "scale": 1}, {"keep": 1, "scale": 2}]
    assert [rq.label(r) for r in sorted(rows, key=rq.row_order)] == ["1", "2", "auto (E=2 px)"]


def test_placement_gain_at_equal_rate_reads_the_uniform_line_in_log_rate():
    import placement as pl

    assert pl.at_rate([(4.0, 0.90), (8.0, 0.92)], 8.0) == pytest.approx(0.92)
    assert pl.at_rate([(8.0, 0.92), (4.0, 0.90)], np.sqrt(32.0)) == pytest.approx(0.91)  # halfway in log rate
    rows = [{"clip": "a", "setting": "256@4", "crf": c, "mode": m, "kbps": r, "ssim": s}
            for c, m, r, s in ((52, "uniform", 8.0, 0.92), (56, "uniform", 4.0, 0.90), (52, "placed", 8.0, 0.925),
                               (56, "placed", 4.4, 0.90))]
    g = {r["crf"]: r for r in pl.gains(rows)}
    assert g[52]["gain_same_crf"] == pytest.approx(0.005) and g[52]["gain_equal_rate"] == pytest.approx(0.005)
    assert g[56]["gain_same_crf"] == pytest.approx(0.0) and g[56]["gain_equal_rate"] < 0  # more bits, same SSIM
    assert g[56]["rate_change"] == pytest.approx(0.1)
    # --compare motion: the same table, the first way "without", the second "with"
    motion = [dict(r, mode={"uniform": "without", "placed": "with"}[r["mode"]]) for r in rows]
    m = {r["crf"]: r for r in pl.gains(motion, "without", "with")}
    assert m[52]["gain_equal_rate"] == pytest.approx(0.005) and m[56]["rate_change"] == pytest.approx(0.1)
    assert set(pl.COMPARISONS) == {"placed", "motion"} and pl.COMPARISONS["placed"][1] == "placement"


def test_restorer_table_gives_the_gain_of_the_same_files_by_setting(tmp_path):
    import restorer as rs

    def row(clip, setting, bicubic, restored, between=True):
        return {"clip": clip, "setting": setting, "kbps": 5.0, "bicubic_ssim": bicubic, "restorer_ssim": restored,
                "previous_ssim": (bicubic + restored) / 2,
                "bicubic_base": bicubic + 0.01, "restorer_base": restored + 0.02, "bicubic_fps": 50.0,
                "restorer_fps": 40.0, "bicubic_between": bicubic if between else None,
                "restorer_between": restored if between else None}

    rows = [row("a", "128@4:55", 0.90, 0.905), row("b", "128@4:55", 0.80, 0.799), row("a", "256@4:56", 0.93, 0.93)]
    rs.render({"date": "d", "machine": "m", "git": "g", "command": "c"}, rows, tmp_path)
    table = (tmp_path / "restorer.md").read_text()
    assert "| 128@4:55 | 5.00 | 0.8500 | 0.8520 | +0.0020 | +0.0120 | +0.0020 | 1 of 2 | +0.0010 | 1 of 2 | 50 | 40 |" in table
    assert "| a | 128@4:55 | 5.00 | 0.9000 | 0.9025 | 0.9050 | +0.0050 |" in table
    assert "| 256@4:56 | 5.00 | 0.9300 | 0.9300 | +0.0000 |" in table


def test_base_encoder_table_gives_the_bd_rate_of_the_filters_off_by_size(tmp_path):
    import argparse

    import base_encoder as be

    def rows(clip, size, scale):  # "off": the same SSIM for `scale` times the bits
        return [{"clip": clip, "size": size, "filters": f, "crf": crf, "kbps": kb * (scale if f == "off" else 1), "ssim": q}
                for f in ("on", "off") for crf, kb, q in ((42, 10.0, 0.93), (56, 5.0, 0.90), (62, 3.0, 0.86))]

    data = rows("a", 128, 0.9) + rows("b", 128, 0.95) + rows("a", 256, 1.1) + rows("b", 256, 1.1)
    s = {r["size"]: r for r in be.summary(data)}
    assert s[128]["bd_mean"] == pytest.approx(-7.5) and s[128]["better"] == 2
    assert s[256]["bd_median"] == pytest.approx(10.0) and s[256]["better"] == 0
    args = argparse.Namespace(crfs=[42, 56, 62], frames=160, divisor=4, model="m")
    be.render({"date": "d", "machine": "m", "git": "g", "command": "c", "filters_off": "x=0"}, args, data, tmp_path)
    table = (tmp_path / "base-encoder.md").read_text()
    assert "| 128 | -7.5% | -7.5% | 2 of 2 | 6.00 / 5.55 | 0.8967 / 0.8967 |" in table
    assert "| 256 | +10.0% | +10.0% | 0 of 2 |" in table

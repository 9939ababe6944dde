"""Tests for kpcodec.eval.metrics (frame quality) and kpcodec.eval.landmarks (face motion)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from skimage import data, transform
from skimage.metrics import structural_similarity

from kpcodec.eval import landmarks as lmk
from kpcodec.eval import metrics
from kpcodec.errors import KpcodecError


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """skimage's astronaut photo at 256x256, uint8 RGB (a real face, shipped with skimage)."""
    img = transform.resize(data.astronaut(), (256, 256), anti_aliasing=True)
    return (img * 255).round().astype(np.uint8)


def _noisy(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0.0, sigma, img.shape), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- frame metrics


def test_identical_images(astronaut):
    assert metrics.psnr(astronaut, astronaut) == math.inf
    assert metrics.ssim(astronaut, astronaut) == pytest.approx(1.0)
    assert metrics.ms_ssim(astronaut, astronaut) == pytest.approx(1.0)
    assert metrics.l1(astronaut, astronaut) == 0.0


def test_psnr_checkerboard_by_hand(astronaut):
    # +-10 on a checkerboard, on a base kept in [20, 235] so nothing clips:
    # every squared error is 100, MSE = 100, PSNR = 10*log10(255^2/100) = 28.1308036 dB.
    base = (20 + astronaut.astype(np.int16) * 215 // 255).astype(np.int16)
    sign = np.where((np.indices(base.shape[:2]).sum(axis=0) % 2) == 0, 10, -10)
    noisy = (base + sign[:, :, None]).astype(np.uint8)
    base = base.astype(np.uint8)
    assert metrics.psnr(base, noisy) == pytest.approx(28.1308036, abs=1e-6)
    assert metrics.l1(base, noisy) == pytest.approx(10 / 255)


def test_psnr_small_image_by_hand():
    # Differences 0..11 over 2x2x3 pixels: sum of squares = 0+1+4+...+121 = 506,
    # MSE = 506/12 = 42.1667, PSNR = 10*log10(65025/42.1667) = 31.8811 dB.
    a = np.full((2, 2, 3), 100, dtype=np.uint8)
    b = (a + np.arange(12, dtype=np.uint8).reshape(2, 2, 3)).astype(np.uint8)
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(65025 / (506 / 12)))
    assert metrics.psnr(a, b) == pytest.approx(31.8811, abs=1e-4)
    # mean |diff| = 66/12 = 5.5 -> 5.5/255 in [0, 1] units
    assert metrics.l1(a, b) == pytest.approx(5.5 / 255)


def test_psnr_random_noise_matches_formula(astronaut):
    noisy = _noisy(astronaut, 10.0)
    diff = astronaut.astype(np.float64) - noisy.astype(np.float64)
    mse = (diff**2).sum() / diff.size
    assert metrics.psnr(astronaut, noisy) == pytest.approx(10 * math.log10(255**2 / mse))


def test_metrics_monotonic_in_noise(astronaut):
    sigmas = [1, 3, 8, 20, 50]
    frames = [_noisy(astronaut, s) for s in sigmas]
    psnrs = [metrics.psnr(astronaut, f) for f in frames]
    ssims = [metrics.ssim(astronaut, f) for f in frames]
    ms = [metrics.ms_ssim(astronaut, f) for f in frames]
    l1s = [metrics.l1(astronaut, f) for f in frames]
    assert all(x > y for x, y in zip(psnrs, psnrs[1:]))
    assert all(x > y for x, y in zip(ssims, ssims[1:]))
    assert all(x > y for x, y in zip(ms, ms[1:]))
    assert all(x < y for x, y in zip(l1s, l1s[1:]))
    assert all(0.0 < v < 1.0 for v in ssims + ms)


def test_ssim_is_skimage_default(astronaut):
    noisy = _noisy(astronaut, 15.0)
    expected = structural_similarity(astronaut, noisy, channel_axis=2, data_range=255)
    assert metrics.ssim(astronaut, noisy) == pytest.approx(expected)


def test_ms_ssim_scales():
    assert metrics.ms_scales(256, 256) == 5  # 256, 128, 64, 32, 16 all hold a 7 px window
    assert metrics.ms_scales(64, 64) == 4  # 64, 32, 16, 8
    assert metrics.ms_scales(10, 40) == 1
    assert metrics.ms_scales(6, 40) == 0


def test_ms_ssim_one_scale_equals_ssim(astronaut):
    # A 12x12 crop fits one scale only (6 < 7 after halving), and the weights re-normalise
    # to [1.0], so MS-SSIM must be exactly the single-scale SSIM.
    a = astronaut[100:112, 100:112]
    b = _noisy(a, 12.0)
    assert metrics.ms_ssim(a, b) == pytest.approx(metrics.ssim(a, b), abs=1e-12)


def test_ms_ssim_inner_ssim_matches_skimage(astronaut):
    x = astronaut[:, :, 1].astype(np.float64)
    noisy = _noisy(astronaut, 15.0)
    y = noisy[:, :, 1].astype(np.float64)
    full, cs = metrics._ssim_terms(x, y, metrics.WIN_SIZE)
    expected = structural_similarity(astronaut[:, :, 1], noisy[:, :, 1], data_range=255)
    assert full == pytest.approx(expected, abs=1e-10)
    assert full <= cs <= 1.0  # luminance term <= 1 only lowers the score


def test_ms_ssim_anticorrelated_is_not_nan(astronaut):
    value = metrics.ms_ssim(astronaut, 255 - astronaut)
    assert value == pytest.approx(0.0)


def test_ms_ssim_too_small():
    a = np.zeros((6, 6, 3), dtype=np.uint8)
    with pytest.raises(ValueError):
        metrics.ms_ssim(a, a)


@pytest.mark.parametrize("fn", [metrics.psnr, metrics.ssim, metrics.ms_ssim, metrics.l1])
def test_bad_inputs(fn, astronaut):
    with pytest.raises(ValueError):
        fn(astronaut, astronaut[:128])
    with pytest.raises(ValueError):
        fn(astronaut.astype(np.float32), astronaut.astype(np.float32))
    with pytest.raises(ValueError):
        fn(astronaut[:, :, 0], astronaut[:, :, 0])


def test_frame_scores(astronaut):
    scores = metrics.FrameScores()
    empty = {"frames": 0, "psnr": None, "ssim": None, "ms_ssim": None, "l1": None}
    assert scores.mean() == empty
    a, b = _noisy(astronaut, 5.0, seed=1), _noisy(astronaut, 20.0, seed=2)
    first = scores.add(astronaut, a)
    scores.add(astronaut, b)
    assert len(scores) == 2
    assert first["psnr"] == pytest.approx(metrics.psnr(astronaut, a))
    mean = scores.mean()
    assert mean["frames"] == 2
    for name, fn in metrics.FrameScores.METRICS.items():
        assert mean[name] == pytest.approx((fn(astronaut, a) + fn(astronaut, b)) / 2)
    assert scores.per_frame["l1"] == [metrics.l1(astronaut, a), metrics.l1(astronaut, b)]


# ---------------------------------------------------------------- landmark measures


def _face(iod: float = 100.0, lip: tuple = (20, 10, 30), eyes: tuple = (8, 12)) -> np.ndarray:
    """Synthetic (478, 2) landmarks: eye corners `iod` apart, given lip and lid gaps."""
    lm = np.zeros((478, 2), dtype=np.float32)
    lm[33] = (100, 100)
    lm[263] = (100 + iod, 100)
    for (up, low), gap, x in zip(lmk.LIP_PAIRS, lip, (150, 140, 160)):
        lm[up] = (x, 170)
        lm[low] = (x, 170 + gap)
    for (up, low), gap, x in zip(lmk.EYE_PAIRS, eyes, (110, 190)):
        lm[up] = (x, 100 - gap / 2)
        lm[low] = (x, 100 + gap / 2)
    return lm


def test_lip_gap_and_eye_opening():
    lm = _face()
    assert lmk.lip_gap(lm) == pytest.approx(20 / 100)  # mean(20, 10, 30) / 100
    assert lmk.eye_opening(lm) == pytest.approx(10 / 100)  # mean(8, 12) / 100
    assert isinstance(lmk.lip_gap(lm), float)


def test_openings_are_scale_invariant_and_batched():
    small = _face()
    big = small * 2.5 + 7  # same face, larger and moved
    batch = np.stack([small, big, _face(lip=(0, 0, 0))])
    assert lmk.lip_gap(batch) == pytest.approx([0.2, 0.2, 0.0])
    assert lmk.eye_opening(batch) == pytest.approx([0.1, 0.1, 0.1])


def test_openings_nan_landmarks():
    lm = np.full((478, 2), np.nan, dtype=np.float32)
    assert math.isnan(lmk.lip_gap(lm))
    assert math.isnan(lmk.eye_opening(lm))


def test_landmark_error():
    a = _face()
    assert lmk.landmark_error(a, a) == 0.0
    assert lmk.landmark_error(a, a + np.array([3.0, 4.0], dtype=np.float32)) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        lmk.landmark_error(a, a[:468])


def test_fidelity_correlations_on_synthetic_sequences():
    t = np.arange(40)
    lips = 15 + 10 * np.sin(t / 3.0)
    eyes = 10 + 3 * np.cos(t / 5.0)
    original = [_face(lip=(g, g, g), eyes=(e, e)) for g, e in zip(lips, eyes)]
    # Decoded: lips open 20 % less but in step, eyes in step; all points 1 px right.
    shift = np.array([1.0, 0.0], dtype=np.float32)
    decoded = [_face(lip=(0.8 * g,) * 3, eyes=(e, e)) + shift for g, e in zip(lips, eyes)]
    result = lmk.fidelity_from_landmarks(original, decoded)
    assert result["frames"] == 40
    assert result["frames_both_found"] == 40
    assert result["face_found_share"] == 1.0
    assert result["lip_gap_corr"] == pytest.approx(1.0)
    assert result["eye_opening_corr"] == pytest.approx(1.0)
    assert result["landmark_error_px"] >= 1.0

    # Decoded lips moving against the original: correlation -1. Eyes frozen: undefined.
    frozen = [_face(lip=(30 - g,) * 3, eyes=(10, 10)) for g in lips]
    result = lmk.fidelity_from_landmarks(original, frozen)
    assert result["lip_gap_corr"] == pytest.approx(-1.0)
    assert result["eye_opening_corr"] is None


def test_fidelity_missing_faces_and_short_sequences():
    faces = [_face(lip=(g, g, g)) for g in (5, 10, 20, 15, 25)]
    nan_face = np.full((478, 2), np.nan, dtype=np.float32)
    original = [faces[0], None, faces[2], faces[3], faces[4]]
    decoded = [faces[0], faces[1], nan_face, faces[3], faces[4]]
    result = lmk.fidelity_from_landmarks(original, decoded)
    assert result["frames"] == 5
    assert result["frames_both_found"] == 3
    assert result["face_found_share"] == pytest.approx(0.6)
    assert result["landmark_error_px"] == 0.0
    assert result["lip_gap_corr"] == pytest.approx(1.0)

    two = lmk.fidelity_from_landmarks(faces[:2], faces[:2])
    assert two["lip_gap_corr"] is None  # fewer than 3 frames

    empty = lmk.fidelity_from_landmarks([], [])
    assert empty["frames"] == 0 and empty["face_found_share"] is None
    assert empty["landmark_error_px"] is None

    with pytest.raises(ValueError):
        lmk.fidelity_from_landmarks(faces[:3], faces[:2])


def test_pick_face_takes_the_largest_or_the_nearest():
    rng = np.random.default_rng(0)
    small = rng.uniform(0, 40, (478, 2)).astype(np.float32) + 200  # a bystander, 40 px across
    big = rng.uniform(0, 120, (478, 2)).astype(np.float32) + 20  # the speaker, 120 px across
    assert lmk.pick_face([]) is None
    assert lmk.pick_face([small, big]) is big
    assert lmk.pick_face([big, small]) is big
    # A decoded frame is scored on the face nearest the original's, even a smaller one.
    assert lmk.pick_face([big, small], near=small + 1) is small
    nan_face = np.full((478, 2), np.nan, dtype=np.float32)
    assert lmk.pick_face([small, big], near=nan_face) is big  # no usable reference: the largest


def test_missing_mediapipe_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # makes `import mediapipe` fail
    with pytest.raises(KpcodecError, match=r"kpcodec\[eval\]"):
        lmk.FaceLandmarker()


# ---------------------------------------------------------------- mediapipe (optional)


def test_face_landmarker_on_astronaut(astronaut):
    pytest.importorskip("mediapipe")
    with lmk.FaceLandmarker() as marker:
        points = marker.detect(astronaut)
        assert points is not None
        assert points.shape == (478, 2)
        assert points.dtype == np.float32
        assert np.isfinite(points).all()
        assert (points >= 0).all() and (points < 256).all()
        # No face in a flat grey frame.
        assert marker.detect(np.full((256, 256, 3), 128, dtype=np.uint8)) is None
        with pytest.raises(ValueError):
            marker.detect(astronaut.astype(np.float32))
    # Plausible geometry: mouth below the eyes, eyes a sensible distance apart.
    assert points[13, 1] > points[159, 1]
    assert 20 < np.linalg.norm(points[33] - points[263]) < 200
    assert 0 < lmk.eye_opening(points) < 0.5


def test_motion_fidelity_on_astronaut(astronaut):
    pytest.importorskip("mediapipe")
    frames = [np.roll(astronaut, dx, axis=1) for dx in (0, 2, 4, 6)]
    result = lmk.motion_fidelity(iter(frames), iter(frames))
    assert result["frames"] == 4
    assert result["face_found_share"] == 1.0
    assert result["landmark_error_px"] < 0.5


def test_landmarker_keeps_the_largest_of_two_faces():
    pytest.importorskip("mediapipe")
    face = data.astronaut()[30:286, 110:366]  # 256 px around the face
    small = (transform.resize(face, (192, 192), anti_aliasing=True) * 255).round().astype(np.uint8)
    frame = np.full((256, 512, 3), 128, np.uint8)
    frame[64:, :192] = small  # a smaller copy on the left, the face itself on the right
    frame[:, 256:] = face
    alone = np.full_like(frame, 128)
    alone[64:, :192] = small
    with lmk.FaceLandmarker() as marker:
        main = marker.detect(frame)
    with lmk.FaceLandmarker() as marker:
        copy = marker.detect(alone)
    with lmk.FaceLandmarker() as marker:
        near_copy = marker.detect(frame, near=copy)
    assert main is not None and main[:, 0].min() > 256  # the larger face
    assert copy is not None and near_copy is not None and near_copy[:, 0].max() < 256
    assert lmk.landmark_error(near_copy, copy) < 3

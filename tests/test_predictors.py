"""Keypoint predictors: registry, streaming and causality, numpy baselines, learned weights,
the predictor trainer, send patterns and decoding with every predictor (tiny model)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kpcodec import bitstream

from kpcodec.codec import predictors as predict
from kpcodec.cli import app
from kpcodec.errors import UsageError
from kpcodec.models.registry import weights_dir
from kpcodec.codec.patterns import SendPattern

LEARNED = [n for n, e in predict.PREDICTORS.items() if e.learned]


def trajectory(frames: int = 40, k: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None]
    base = rng.uniform(-0.5, 0.5, (1, k, 2))
    kp = base + 0.05 * np.sin(t / 5 + rng.uniform(0, 6, (1, k, 2)))
    jac = np.eye(2) + 0.05 * rng.standard_normal((frames, k, 2, 2))
    return kp.astype(np.float32), jac.astype(np.float32)


def run_fill(name, idx, kp, jac, frames, **options):
    out = list(predict.fill_keypoints(idx, kp[idx], jac[idx], frames, name, **options))
    return np.stack([a for a, _ in out]), np.stack([b for _, b in out])


# -- registry ---------------------------------------------------------------------------

def test_registry_has_the_kinds_and_a_valid_default():
    kinds = {e.kind for e in predict.PREDICTORS.values()}
    assert {"hold", "linear", "interp"} <= kinds
    assert {"rnn", "vae", "vrnn", "rnn-interp"} <= kinds, "learned predictors are not shipped"
    assert predict.DEFAULT_PREDICTOR in predict.PREDICTORS
    assert predict.get_predictor("interp").mode == predict.get_predictor("rnn-interp").mode == "interpolating"
    assert all(predict.get_predictor(n).mode == "causal" for n in ("hold", "linear", "rnn", "vae", "vrnn"))
    with pytest.raises(UsageError, match="psychic"):
        predict.get_predictor("psychic")


def test_file_predictor_falls_back_to_default():
    assert predict.file_predictor("hold") == "hold"
    assert predict.file_predictor("") == predict.DEFAULT_PREDICTOR
    assert predict.file_predictor("from-the-future") == predict.DEFAULT_PREDICTOR


def test_shipped_learned_weights_are_small_and_checked():
    for name in LEARNED:
        entry = predict.get_predictor(name)
        path = weights_dir() / entry.file
        assert path.stat().st_size < 1_000_000
        assert all(v.dtype == torch.float16 for v in torch.load(path, weights_only=True).values())
        assert predict.load_learned(name) is predict.load_learned(name)  # cached


# -- every predictor ----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(predict.PREDICTORS))
@pytest.mark.parametrize("k", [10, 4])
def test_shapes_and_sent_frames_pass_through(name, k):
    kp, jac = trajectory(30, k)
    idx = SendPattern(3, 4).indices(30)
    pk, pj = run_fill(name, idx, kp, jac, 30)
    assert pk.shape == (30, k, 2) and pj.shape == (30, k, 2, 2)
    assert np.isfinite(pk).all() and np.isfinite(pj).all()
    np.testing.assert_allclose(pk[idx], kp[idx], atol=1e-6)
    np.testing.assert_allclose(pj[idx], jac[idx], atol=1e-6)


@pytest.mark.parametrize("name", [n for n, e in predict.PREDICTORS.items() if e.mode == "causal"])
def test_causal_predictions_ignore_future_sent_frames(name):
    kp, jac = trajectory(36)
    idx = SendPattern(1, 2).indices(36)
    a_kp, a_jac = run_fill(name, idx, kp, jac, 36)
    kp2, jac2 = kp.copy(), jac.copy()
    kp2[21:] += 0.3  # frame 21 is sent: everything before it must not change
    jac2[21:] *= 1.5
    b_kp, b_jac = run_fill(name, idx, kp2, jac2, 36)
    np.testing.assert_array_equal(a_kp[:21], b_kp[:21])
    np.testing.assert_array_equal(a_jac[:21], b_jac[:21])
    assert not np.allclose(a_kp[21:], b_kp[21:])


@pytest.mark.parametrize("name", list(predict.PREDICTORS))
def test_ahead_predicts_unsent_frames_early_with_the_same_values(name):
    """A live receiver renders a frame that will not be sent in its slot: Fill.ahead gives causal
    kinds' values before the next sent frame comes (the same as waiting for it), nothing for
    interpolating kinds."""
    kp, jac = trajectory(24)
    idx = SendPattern(1, 2).indices(24)  # 0, 3, 6, ...
    a_kp, a_jac = run_fill(name, idx, kp, jac, 24)
    fill, out = predict.Fill(name), []
    for i in idx:
        out += fill.sent(i, kp[i], jac[i])
        out += fill.ahead(i + 2)  # frames i+1, i+2 before i+3 is known
        out += fill.ahead(i + 3)  # again: nothing new
    out += fill.end(24)
    if predict.get_predictor(name).mode == "causal":
        assert len(out) == 24
        np.testing.assert_array_equal(np.stack([k for k, _ in out]), a_kp)
        np.testing.assert_array_equal(np.stack([j for _, j in out]), a_jac)
    else:
        assert fill.ahead(30) == []


@pytest.mark.parametrize("name", [n for n, e in predict.PREDICTORS.items() if e.mode == "interpolating"])
def test_interpolating_predictors_wait_for_one_sent_frame_only(name):
    kp, jac = trajectory(30)
    idx = SendPattern(1, 2).indices(30)  # 0, 3, 6, 9, ...
    a_kp, _ = run_fill(name, idx, kp, jac, 30)
    kp2 = kp.copy()
    kp2[9:] += 0.3  # frames 7 and 8 may wait for frame 9; frames before 7 must not
    b_kp, _ = run_fill(name, idx, kp2, jac, 30)
    np.testing.assert_array_equal(a_kp[:7], b_kp[:7])
    assert not np.allclose(a_kp[7:9], b_kp[7:9])


def test_interp_uses_the_next_sent_frame():
    kp, jac = trajectory(12)
    idx = np.array([0, 4, 8])
    pk, pj = run_fill("interp", idx, kp, jac, 12)
    np.testing.assert_allclose(pk[2], (kp[0] + kp[4]) / 2, atol=1e-6)
    np.testing.assert_allclose(pj[5], 0.75 * jac[4] + 0.25 * jac[8], atol=1e-6)
    np.testing.assert_allclose(pk[9:], np.broadcast_to(kp[8], (3, 10, 2)))  # after the last: hold


def test_hold_and_linear_are_exact():
    t = np.arange(20, dtype=np.float32)[:, None, None]
    kp = np.broadcast_to(0.01 * t, (20, 3, 2)).astype(np.float32)  # constant velocity 0.01/frame
    jac = np.broadcast_to(np.eye(2, dtype=np.float32), (20, 3, 2, 2))
    idx = np.array([0, 1, 2, 10, 11])
    hk, _ = run_fill("hold", idx, kp, jac, 20)
    np.testing.assert_array_equal(hk[3:10], np.broadcast_to(kp[2], (7, 3, 2)))
    np.testing.assert_array_equal(hk[12:], np.broadcast_to(kp[11], (8, 3, 2)))
    d = predict.get_predictor("linear").config["damping"]
    lk, lj = run_fill("linear", idx, kp, jac, 20)
    for t_ in range(3, 10):
        gap = t_ - 2
        travel = gap if d == 1 else d * (1 - d ** gap) / (1 - d)
        np.testing.assert_allclose(lk[t_], kp[2] + 0.01 * travel, atol=1e-6)
    np.testing.assert_array_equal(lj, jac)  # Jacobians held
    # Velocity over a longer span is per frame: sent 2 and 10 -> 0.01 per frame.
    np.testing.assert_allclose(run_fill("linear", np.array([0, 2, 10]), kp, jac, 12)[0][11], kp[10] + 0.01 * d, atol=1e-6)


def test_linear_with_damping_one_is_constant_velocity():
    kp = np.arange(5, dtype=np.float32).reshape(5, 1, 1) * np.ones((1, 1, 2), np.float32)
    stepper = predict.Stepper("linear", kp[0], np.zeros((1, 2, 2)))
    stepper.damping = 1.0
    stepper.commit((kp[1], np.zeros((1, 2, 2))))
    out = []
    for _ in range(3):
        out.append(stepper.predict()[0])
        stepper.commit(None)
    np.testing.assert_allclose(np.stack(out), kp[2:])


@pytest.mark.parametrize("name", LEARNED)
def test_learned_predictors_load_run_and_stream(name):
    from kpcodec.models.predictor_nets import rollout

    kp, jac = trajectory(25)
    idx = SendPattern(12, 12).indices(25)
    pk, pj = run_fill(name, idx, kp, jac, 25)
    entry = predict.get_predictor(name)
    if not entry.options:  # the streaming path equals the batched training rollout
        net = predict.load_learned(name)
        sent = np.zeros(25, bool)
        sent[idx] = True
        with torch.no_grad():
            rk, rj, _ = rollout(net, torch.from_numpy(kp)[None], torch.from_numpy(jac)[None], torch.from_numpy(sent)[None])
        np.testing.assert_allclose(pk[12:24], rk[0, 11:23].numpy(), atol=1e-5)
        np.testing.assert_allclose(pj[12:24], rj[0, 11:23].numpy(), atol=1e-5)
    # Deterministic, sampling included (fixed seed).
    pk2, _ = run_fill(name, idx, kp, jac, 25)
    np.testing.assert_array_equal(pk, pk2)
    held = run_fill(name, idx, kp, jac, 25, hold_jacobians=True)[1]
    np.testing.assert_array_equal(held[12:24], np.broadcast_to(jac[11], (12, 10, 2, 2)))


def test_sample_variants_draw_from_the_prior():
    samplers = [n for n, e in predict.PREDICTORS.items() if e.options.get("sample")]
    assert {"vae-sample", "vrnn-sample"} <= set(samplers)
    kp, jac = trajectory(30)
    idx = SendPattern(12, 12).indices(30)
    for name in samplers:
        base = predict.get_predictor(name).file
        mean_name = next(n for n, e in predict.PREDICTORS.items() if e.file == base and not e.options)
        a, _ = run_fill(name, idx, kp, jac, 30)
        b, _ = run_fill(mean_name, idx, kp, jac, 30)
        c, _ = run_fill(name, idx, kp, jac, 30, seed=1)
        assert not np.allclose(a[12:24], b[12:24]) and not np.allclose(a[12:24], c[12:24])
        np.testing.assert_array_equal(a[:12], b[:12])


def test_learned_weights_failing_their_checksum_are_refused(monkeypatch, tmp_path):
    from kpcodec.errors import ModelError

    name = LEARNED[0]
    entry = predict.get_predictor(name)
    bad = tmp_path / entry.file
    bad.write_bytes((weights_dir() / entry.file).read_bytes() + b"x")
    monkeypatch.setattr(predict, "weights_dir", lambda: tmp_path)
    predict.load_learned.cache_clear()
    try:
        with pytest.raises(ModelError, match="sha256"):
            predict.fill_keypoints(np.array([0]), *trajectory(1), 3, name)
    finally:
        predict.load_learned.cache_clear()


# -- send patterns ------------------------------------------------------------------------

def test_send_patterns():
    assert list(SendPattern.parse("3").indices(10)) == [0, 3, 6, 9]
    assert list(SendPattern.parse("2:3").indices(12)) == [0, 1, 5, 6, 10, 11]
    p = SendPattern.parse("12:12")
    assert list(p.indices(50)) == list(range(12)) + list(range(24, 36)) + [48, 49]
    assert p.nominal_spacing == 2 and SendPattern.keep_every(4).nominal_spacing == 4
    assert list(SendPattern(1, 0).indices(3)) == [0, 1, 2]
    assert SendPattern(2, 2).indices(6, phase=1)[0] == 0  # frame 0 always sent
    for bad in ("12-12", "a:b", "0:3", "1:-1", "0"):
        with pytest.raises(UsageError):
            SendPattern.parse(bad)


# -- CLI: encode patterns, decode with every predictor -----------------------------------------

def test_keep_pattern_and_predictor_in_the_file(runner, clip, tmp_path):
    out = tmp_path / "p.kpc"
    r = runner.invoke(app, ["encode", str(clip), "-o", str(out), "--model", "tiny", "--keep-pattern", "2:3",
                            "--predictor", "hold"])
    assert r.exit_code == 0, r.stderr
    s = bitstream.read_file(out)
    assert list(s.sent_indices) == [0, 1, 5, 6, 10, 11]
    assert s.header.predictor == "hold" and s.header.keep_every == 2
    r = runner.invoke(app, ["encode", str(clip), "-o", str(out), "-f", "--model", "tiny", "--keep-pattern", "nope"])
    assert r.exit_code == 2 and "keep-pattern" in r.stderr
    r = runner.invoke(app, ["encode", str(clip), "-o", str(out), "-f", "--model", "tiny", "--predictor", "psychic"])
    assert r.exit_code == 2 and "psychic" in r.stderr


def test_default_predictor_recorded(runner, clip, tmp_path):
    out = tmp_path / "d.kpc"
    assert runner.invoke(app, ["encode", str(clip), "-o", str(out), "--model", "tiny"]).exit_code == 0
    assert bitstream.read_file(out).header.predictor == predict.DEFAULT_PREDICTOR


@pytest.fixture(scope="module")
def tiny_kpc(tmp_path_factory, clip):
    from typer.testing import CliRunner

    out = tmp_path_factory.mktemp("pred") / "t.kpc"
    r = CliRunner().invoke(app, ["encode", str(clip), "-o", str(out), "--model", "tiny", "--keep-pattern", "3:3"])
    assert r.exit_code == 0, r.stderr
    return out


@pytest.mark.parametrize("name", list(predict.PREDICTORS))
def test_decode_with_each_predictor(runner, tiny_kpc, tmp_path, name):
    from kpcodec.media.video import probe

    mp4 = tmp_path / f"{name}.mp4"
    r = runner.invoke(app, ["decode", str(tiny_kpc), "-o", str(mp4), "--predictor", name])
    assert r.exit_code == 0, r.stderr
    assert probe(mp4).frame_count == 12


def test_decode_does_not_import_mediapipe(tiny_kpc, tmp_path):
    import subprocess
    import sys

    code = ("import sys, kpcodec.api as a; a.decode(sys.argv[1], sys.argv[2], predictor=sys.argv[3]);"
            "assert 'mediapipe' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code, str(tiny_kpc), str(tmp_path / "m.mp4"),
                        LEARNED[0] if LEARNED else "linear"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_bitstream_and_predict_stay_torch_free():
    import subprocess
    import sys

    code = ("import sys, numpy as np, kpcodec.bitstream.container, kpcodec.codec.predictors as p;"
            "list(p.fill_keypoints(np.array([0]), np.zeros((1,2,2)), np.zeros((1,2,2,2)), 3, 'linear'));"
            "assert 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# -- training ----------------------------------------------------------------------------------

def synthetic_trajectories(folder, clips: int = 3, frames: int = 80):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        kp, jac = trajectory(frames, seed=i)
        np.savez(folder / f"clip{i}.npz", kp=kp, jac=jac, fps=np.float64(25), split=np.str_("val" if i == 0 else "train"),
                 clip=np.str_(f"talking-heads/x/clip{i}.mp4"), detector=np.str_("synthetic"),
                 detector_sha256=np.str_("ab" * 32))
    return folder


@pytest.mark.parametrize("kind", ["rnn", "vae", "vrnn", "rnn-interp"])
def test_train_predictor_runs_and_resumes(runner, tmp_path, kind):
    traj = synthetic_trajectories(tmp_path / "traj")
    out = tmp_path / "run"
    args = ["train-predictor", "--kind", kind, "--trajectories", str(traj), "--out", str(out), "-q"]
    r = runner.invoke(app, args + ["--steps", "3", "--val-every", "2"])
    assert r.exit_code == 0, r.stderr
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 3 and ck["kind"] == kind and ck["cpu_seconds"] > 0
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert any("val" in x for x in log)
    r = runner.invoke(app, args + ["--steps", "5", "--resume"])
    assert r.exit_code == 0, r.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 5
    assert (out / "weights-fp16.pt").stat().st_size < 1_000_000


def test_train_predictor_errors(runner, tmp_path):
    r = runner.invoke(app, ["train-predictor", "--kind", "lstm", "--trajectories", str(tmp_path), "--steps", "1"])
    assert r.exit_code == 2 and "kind" in r.stderr
    r = runner.invoke(app, ["train-predictor", "--trajectories", str(tmp_path / "none"), "--steps", "1"])
    assert r.exit_code == 2 and "trajectories" in r.stderr


def test_export_to_a_registry(tmp_path, monkeypatch, runner):
    from kpcodec.train import predictor_training as tp

    traj = synthetic_trajectories(tmp_path / "traj")
    assert runner.invoke(app, ["train-predictor", "--kind", "rnn", "--trajectories", str(traj), "--out",
                               str(tmp_path / "run"), "--steps", "1", "-q"]).exit_code == 0
    monkeypatch.setattr(predict, "weights_dir", lambda: tmp_path)
    monkeypatch.setattr("kpcodec.models.registry.weights_dir", lambda: tmp_path)
    monkeypatch.setattr(predict, "registry_path", lambda: tmp_path / "predictors.json")
    target = tp.export(tmp_path / "run", "mine", make_default=True, variants={"mine-sample": {"sample": True}})
    reg = json.loads((tmp_path / "predictors.json").read_text())
    assert reg["default"] == "mine" and reg["predictors"]["mine"]["file"] == target.name
    assert reg["predictors"]["mine-sample"]["options"] == {"sample": True}
    entries, default = predict.read_registry(tmp_path / "predictors.json")
    assert default == "mine" and entries["mine"].kind == "rnn" and "linear" in entries
    r = tp.tune_linear(traj, write=True)
    assert 0 <= r["damping"] <= 1
    assert json.loads((tmp_path / "predictors.json").read_text())["predictors"]["linear"]["config"]["damping"] == r["damping"]


def test_trajectories_command(tmp_path, clip):
    import csv

    from kpcodec.train import trajectories as tj

    data = tmp_path / "data"
    (data / "talking-heads" / "val").mkdir(parents=True)
    (data / "talking-heads" / "val" / "c.mp4").write_bytes(clip.read_bytes())
    with open(data / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "split", "fps"])
        w.writerow(["talking-heads/val/c.mp4", "val", "25"])
        w.writerow(["motion/x.mp4", "motion", "25"])
    out = tmp_path / "traj"
    assert tj.run(data, out, model="tiny", batch=5, quiet=True)["clips"] == 1
    (t,) = tj.load_trajectories(out)
    assert t["kp"].shape == (12, 4, 2) and t["jac"].shape == (12, 4, 2, 2) and t["split"] == "val"
    assert tj.run(data, out, model="tiny", quiet=True)["clips"] == 0  # same detector: skipped


def test_a_learned_fill_leaves_no_inference_mode_behind():
    # torch's grad mode is thread-local: a generator that yielded inside inference_mode left it
    # on in the caller between frames, and for good once dropped half-way (it broke autograd
    # in later code of the same thread).
    kp, jac = trajectory(12)
    idx = np.arange(0, 12, 2)
    frames = predict.fill_keypoints(idx, kp[idx], jac[idx], 12, "vrnn")
    next(frames), next(frames)
    assert not torch.is_inference_mode_enabled()
    x = torch.ones(2, requires_grad=True)
    (x * 3).sum().backward()
    assert torch.equal(x.grad, torch.full((2,), 3.0))
    del frames
    assert not torch.is_inference_mode_enabled()

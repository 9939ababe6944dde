"""The motion-model trainer on a synthetic data folder: steps, logs, checkpoints, resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kpcodec.train import losses
from kpcodec.train.run import run_training
from tests.conftest import make_clip, make_train_data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_train_data(tmp_path_factory.mktemp("data"), frames=24)


def test_train_resume_and_compact_checkpoint(data_dir, tmp_path):
    out, compact = tmp_path / "run", tmp_path / "resume.pt"
    t = run_training("tiny", data_dir, out, steps=3, recipe="tiny", quiet=True, compact=compact)
    assert t.step == 3 and (out / "checkpoint.pt").is_file() and (out / "weights-fp16.pt").is_file()
    state = torch.load(compact, weights_only=False)
    assert state["step"] == 3
    assert all(v.dtype in (torch.float16, torch.int64) or not v.is_floating_point() for v in state["model"].values())
    moments = [v for s in state["optimizer"]["state"].values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    assert moments and all(v.dtype == torch.bfloat16 for v in moments)
    # A fresh run folder started from the compact file continues at its step.
    t2 = run_training("tiny", data_dir, tmp_path / "run2", steps=5, recipe="tiny", quiet=True, init=compact)
    assert t2.step == 5
    # And --resume picks up the run folder's own checkpoint.
    t3 = run_training("tiny", data_dir, out, steps=4, recipe="tiny", quiet=True, resume=True, log_every=1)
    assert t3.step == 4
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train"]["total"]) for r in logged if "train" in r)


def test_a_run_continued_under_a_finer_recipe_takes_its_rate(data_dir, tmp_path, monkeypatch):
    from dataclasses import replace

    from kpcodec.train import recipe

    out = tmp_path / "run"
    run_training("tiny", data_dir, out, steps=2, recipe="tiny", quiet=True)
    monkeypatch.setitem(recipe.RECIPES, "tiny-fine", replace(recipe.RECIPES["tiny"], lr=1e-6))
    t = run_training("tiny", data_dir, out, steps=3, recipe="tiny-fine", quiet=True, resume=True)
    assert t.step == 3 and [g["lr"] for g in t.opt.param_groups] == [1e-6] * len(t.opt.param_groups)


def test_a_recipes_fresh_parameters_train_at_their_own_rate_and_keep_it_on_resume(data_dir, tmp_path, monkeypatch):
    from dataclasses import replace

    from kpcodec.train import recipe

    monkeypatch.setitem(recipe.RECIPES, "tiny-grow", replace(recipe.RECIPES["tiny"], lr=1e-5, fresh=("generator.final",),
                                                             fresh_lr=3e-4))
    out = tmp_path / "run"
    t = run_training("tiny", data_dir, out, steps=2, recipe="tiny-grow", quiet=True)
    fresh, rest = t.opt.param_groups[1], t.opt.param_groups[0]
    names = {id(p): n for n, p in t.model.named_parameters()}
    assert {names[id(p)] for p in fresh["params"]} == {"generator.final.weight", "generator.final.bias"}
    assert (rest["lr"], fresh["lr"]) == (1e-5, 3e-4)
    t2 = run_training("tiny", data_dir, out, steps=3, recipe="tiny-grow", quiet=True, resume=True)
    assert t2.step == 3 and [g["lr"] for g in t2.opt.param_groups] == [1e-5, 3e-4]


def test_generator_only_recipe_starts_from_another_config_and_freezes_the_motion(data_dir, tmp_path, monkeypatch):
    from dataclasses import replace

    from kpcodec.models import registry

    narrow = replace(registry.CONFIGS["tiny"], name="tiny-narrow", gen_expansion=2, gen_num_bottleneck=2)
    monkeypatch.setitem(registry.CONFIGS, "tiny-narrow", narrow)
    teacher = run_training("tiny", data_dir, tmp_path / "teacher", steps=2, recipe="tiny", quiet=True)
    t = run_training("tiny-narrow", data_dir, tmp_path / "student", steps=2, recipe="generator-only", quiet=True,
                     init=tmp_path / "teacher" / "checkpoint.pt")
    done, total = t.initialised
    assert 0 < done < total  # detector and dense motion, not the narrower generator
    before = teacher.model.state_dict()
    after = t.model.state_dict()
    for name in before:
        if name.startswith(("detector.", "dense_motion.")):
            assert torch.equal(before[name], after[name]), name  # frozen, BatchNorm statistics included
    assert t.step == 2 and all(p.requires_grad == n.startswith("generator.") for n, p in t.model.named_parameters())


def test_separation_pushes_close_keypoints_apart():
    close = torch.tensor([[[0.0, 0.0], [0.01, 0.0], [0.5, 0.5]]])
    far = torch.tensor([[[0.0, 0.0], [0.4, 0.0], [0.5, 0.5]]])
    assert losses.separation(close, 0.15) > 0 and losses.separation(far, 0.15) == 0


def test_equivariance_is_zero_for_an_equivariant_detector():
    tps = losses.RandomTPS(2, generator=torch.Generator().manual_seed(0))
    pts = torch.rand(2, 5, 2) * 1.2 - 0.6
    # Inverting a warp numerically is not needed: check warp/Jacobian consistency instead.
    jac = tps.jacobian(pts)
    eps = 1e-3
    dx = (tps.warp_coordinates(pts + torch.tensor([eps, 0.0])) - tps.warp_coordinates(pts - torch.tensor([eps, 0.0]))) / (2 * eps)
    assert torch.allclose(jac[..., 0], dx, atol=1e-3)


def test_flow_at_landmarks_zero_for_a_perfect_flow():
    from kpcodec.models.blocks import make_coordinate_grid

    flow = make_coordinate_grid(16, 16)[None] + torch.tensor([0.1, -0.05])
    lm_d = torch.rand(1, 20, 2) * 1.6 - 0.8
    assert losses.flow_at_landmarks(flow, lm_d, lm_d + torch.tensor([0.1, -0.05])) < 1e-5
    assert losses.flow_at_landmarks(flow, lm_d, lm_d) > 0.1
    lm_nan = lm_d.clone()
    lm_nan[0, :5] = float("nan")
    assert torch.isfinite(losses.flow_at_landmarks(flow, lm_nan, lm_nan))


def test_landmark_weights_emphasise_the_lips():
    from kpcodec.eval.landmarks import LIP_CONTOUR, N_LANDMARKS
    from kpcodec.models.blocks import make_coordinate_grid

    assert losses.landmark_weights(N_LANDMARKS, 1.0, 1.0) is None
    w = losses.landmark_weights(N_LANDMARKS, 5.0, 3.0)
    assert w[13] == 5.0 and w[159] == 3.0 and w[1] == 1.0 and len(set(LIP_CONTOUR)) == 40
    flow = make_coordinate_grid(16, 16)[None].expand(1, 16, 16, 2)
    lm = torch.zeros(1, N_LANDMARKS, 2)
    target = lm.clone()
    target[0, 13] = 0.5  # only a lip landmark is off: weighting it raises the loss
    plain = losses.flow_at_landmarks(flow, lm, target)
    weighted = losses.flow_at_landmarks(flow, lm, target, w)
    assert weighted > plain * 2
    assert torch.isclose(losses.flow_at_landmarks(flow, lm, lm, w), torch.tensor(0.0), atol=1e-6)


def _clips(lengths=(3, 5, 7), size=16, points=5):
    from kpcodec.train.data import Clip

    rng = np.random.default_rng(0)
    clips = [Clip(f"c{i}", f"c{i}.mp4", rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
                  rng.uniform(-1, 1, (n, points, 2)).astype(np.float32), np.arange(n)) for i, n in enumerate(lengths)]
    clips[1].landmarks[2, 1] = np.nan  # a landmark mediapipe did not find
    return clips


def test_device_sampler_draws_the_same_batches_as_the_numpy_one():
    # A GPU run gathers batches from frames held on the device: same pairs, flips and gains.
    from kpcodec.train.data import PairSampler

    host, device = PairSampler(_clips(), seed=1), PairSampler(_clips(), seed=1, device="cpu")
    flipped = False
    for _ in range(4):
        a, b = host.batch(6), device.batch(6)
        assert sorted(a) == sorted(b) == ["driving", "lm_driving", "lm_source", "source"]
        for key in a:
            assert torch.allclose(a[key], b[key], equal_nan=True), key
        flipped |= bool((a["lm_source"][..., 0] < 0).any())
    assert flipped


def test_device_sampler_picks_up_refreshed_landmarks():
    from kpcodec.train.data import PairSampler

    clips = _clips()
    clips[0].landmarks = None
    s = PairSampler(clips, seed=0, device="cpu")
    assert "lm_source" not in s.batch(2)
    clips[0].landmarks = np.zeros((3, 5, 2), np.float32)
    s.refresh_landmarks()
    assert s.batch(2)["lm_source"].shape == (2, 5, 2)


def test_opencv_decoder_matches_pyav(tmp_path):
    # A lent GPU machine has OpenCV but no PyAV: the training data must decode the same there.
    pytest.importorskip("cv2")
    from kpcodec.train import data

    path = make_clip(tmp_path / "c.mp4", frames=10, size=(64, 48))
    frames, index = data._decode_clip_pyav(path, 3, None)
    cv_frames, cv_index = data._decode_clip_opencv(path, 3, None)
    assert np.array_equal(index, cv_index) and frames.shape == cv_frames.shape == (4, 48, 64, 3)
    assert np.abs(frames.astype(int) - cv_frames.astype(int)).mean() < 3.0  # colour conversion rounding
    assert len(data._decode_clip_opencv(path, 1, 4)[0]) == 4


def test_batch_option_overrides_the_recipe(data_dir, tmp_path):
    t = run_training("tiny", data_dir, tmp_path / "run", steps=1, recipe="tiny", quiet=True, batch=3)
    assert t.recipe.batch == 3 and torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["batch"] == 3


def test_transplant_moves_the_motion_and_keeps_the_generator(data_dir, tmp_path):
    from kpcodec.train.transplant import read_checkpoint, transplant

    a = run_training("tiny", data_dir, tmp_path / "a", steps=1, recipe="tiny", quiet=True, seed=1)
    b = run_training("tiny", data_dir, tmp_path / "b", steps=2, recipe="tiny", quiet=True, seed=2)
    ck = read_checkpoint(tmp_path / "b" / "checkpoint.pt")
    merged = transplant(read_checkpoint(tmp_path / "a" / "weights-fp16.pt")["model"], ck["model"])
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for name, v in merged.items():
        source = sa if name.startswith(("detector.", "dense_motion.")) else sb
        assert v.dtype == sb[name].dtype and torch.allclose(v.float(), source[name].float(), atol=1e-2), name
    assert ck["step"] == 2 and "optimizer" in ck
    with pytest.raises(ValueError, match="no detector"):
        transplant({k: v for k, v in sa.items() if k.startswith("generator.")}, ck["model"])


def _rank_main(rank, world, data_dir, out, port):
    """One rank of a 2-process gloo run (torch.multiprocessing): 3 steps, then its own weights."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        t = run_training("tiny", data_dir, out, steps=3, recipe="tiny", quiet=True, batch=4, log_every=1)
        torch.save({"params": dict(t.model.named_parameters()), "buffers": dict(t.model.named_buffers())},
                   out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_keep_the_same_weights_as_one_process_with_the_same_global_batch(data_dir, tmp_path):
    import socket

    import torch.multiprocessing as tmp_mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    tmp_mp.spawn(_rank_main, args=(2, data_dir, out, port), nprocs=2, join=True)
    s0, s1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # the ranks' weights stay identical (BatchNorm statistics differ after a step until DDP
    # broadcasts rank 0's at the next forward; rank 0's are saved)
    assert all(torch.equal(s0["params"][k], s1["params"][k]) for k in s0["params"])
    one = run_training("tiny", data_dir, tmp_path / "one", steps=3, recipe="tiny", quiet=True, batch=4, accumulate=2)
    single, r0 = dict(one.model.named_parameters()), s0["params"]
    worst = max(float((r0[k].detach() - single[k].detach()).abs().max()) for k in r0)
    assert worst < 1e-4, worst  # the same global batch in one process, as 2 micro-batches
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "train" in r] == [1, 2, 3]  # rank 0 alone logs
    # a checkpoint of 2 ranks resumes in one process
    t = run_training("tiny", data_dir, out, steps=4, recipe="tiny", quiet=True, batch=4, resume=True)
    assert t.step == 4


def test_kpcodec_train_runs_under_torchrun(data_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "tr"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "kpcodec", "train", "--config", "tiny", "--recipe", "tiny", "--data", str(data_dir),
                        "--out", str(out), "--steps", "2", "--batch", "4", "--val-every", "1000", "-q"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "weights-fp16.pt"]  # rank 0's, no .tmp

"""The between refiner (kpcodec.models.between): a learned blend of the two moved base frames that a
stream of the base layer alone shows between base frames, its place in MotionModel.between, and its
trainer (kpcodec.train.between)."""
from __future__ import annotations

import torch

from kpcodec.models.between import BetweenRefiner
from kpcodec.models.registry import build_model, get_config


def _random(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net


def test_an_untrained_refiner_is_the_plain_blend():
    ma, mb = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    a = torch.tensor([0.25, 0.5, 0.75])
    # to float rounding: the weight is sigmoid(logit(a) + 0)
    assert torch.allclose(BetweenRefiner(8, 3, 4)(ma, mb, a), torch.lerp(ma, mb, a.view(-1, 1, 1, 1)).clamp(0, 1),
                          atol=1e-6, rtol=0)


def test_a_trained_refiner_looks_at_both_frames_and_at_a():
    net = _random(BetweenRefiner(8, 3, 2)).requires_grad_(False)
    ma, mb = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    out = net(ma, mb, torch.tensor([0.5]))
    assert out.shape == ma.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    assert not torch.equal(out, net(ma, mb, torch.tensor([0.25])))
    assert not torch.equal(out, net(ma, torch.rand(1, 3, 32, 32), torch.tensor([0.5])))


def test_the_model_blends_the_moved_base_frames_with_its_refiner():
    """MotionModel.between: the plain blend of between_parts without a refiner, the refiner's with one."""
    torch.manual_seed(0)
    plain = build_model("tiny-hybrid").eval()
    cfg = get_config("tiny-hybrid")
    refined = build_model("tiny-hybrid").eval()
    refined.refiner = _random(BetweenRefiner(8, 3, 2))
    refined.load_state_dict({**plain.state_dict(), **{f"refiner.{k}": v for k, v in refined.refiner.state_dict().items()}})
    size = cfg.image_size
    up_a, up_b = torch.rand(2, 3, size, size), torch.rand(2, 3, size, size)
    with torch.inference_mode():
        kp_a, jac_a = plain.detect(up_a)
        kp_b, jac_b = plain.detect(up_b)
        a = torch.tensor([0.25, 0.5])
        ma, mb = plain.between_parts(up_a, kp_a, jac_a, up_b, kp_b, jac_b, a)
        assert torch.equal(plain.between(up_a, kp_a, jac_a, up_b, kp_b, jac_b, a),
                           torch.lerp(ma, mb, a.view(-1, 1, 1, 1)).clamp(0, 1))
        got = refined.between(up_a, kp_a, jac_a, up_b, kp_b, jac_b, a)
        assert torch.equal(got, refined.refiner(ma, mb, a))
        assert not torch.equal(got, plain.between(up_a, kp_a, jac_a, up_b, kp_b, jac_b, a))


def test_the_between_config_is_the_restore_config_with_a_refiner():
    restore, between = build_model("fomm-256-hybrid-restore"), build_model("fomm-256-hybrid-between")
    extra = set(between.state_dict()) - set(restore.state_dict())
    assert extra and all(k.startswith("refiner.") for k in extra) and set(restore.state_dict()) <= set(between.state_dict())


def test_the_trainer_caches_moved_frames_resumes_and_exports(tmp_path, monkeypatch):
    import numpy as np

    from conftest import make_train_data
    from kpcodec.train import between as tb
    from kpcodec.train import restorer as tr

    data = make_train_data(tmp_path / "data")
    monkeypatch.setattr(tr, "SETTINGS", ((64, 4), (96, 3)))
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["--data", str(data), "--out", str(out), "--source", str(tmp_path / "source"), "--cache", str(cache),
            "--save-every", "1", "--channels", "8", "--depth", "3"]
    tb.main(args + ["--steps", "2"])
    got = tb.load(sorted(cache.glob("train-*.npz")))
    sizes = {int(s[0]) for s in got["settings"]}
    assert sizes == {64, 96, 256}  # the restorer's two settings and one at the model size
    assert got["ma"].shape[1:] == got["mb"].shape[1:] == got["target"].shape[1:] == (256, 256, 3)
    assert np.all((got["a"] > 0) & (got["a"] < 1))  # frames strictly between two base frames
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
    tb.main(args + ["--steps", "3", "--lr", "1e-4"])
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 3 and ck["opt"]["param_groups"][0]["lr"] == 1e-4 and tuple(ck["arch"]) == (8, 3, 4)
    tb.main(args + ["--export", str(tmp_path / "r.pt")])
    state = torch.load(tmp_path / "r.pt", weights_only=True)
    assert torch.equal(state["last.weight"], ck["model"]["last.weight"])

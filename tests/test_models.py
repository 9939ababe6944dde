"""FOMM modules on the tiny config: shapes, identity at init, source caching, registry checks."""
from __future__ import annotations

import json

import pytest
import torch

from kpcodec.errors import ModelError
from kpcodec.models import registry
from kpcodec.models.blocks import inverse_2x2, make_coordinate_grid, warp


def test_coordinate_grid_matches_grid_sample_convention():
    img = torch.arange(12.0).view(1, 1, 3, 4)
    grid = make_coordinate_grid(3, 4)[None]
    assert torch.allclose(warp(img, grid), img, atol=1e-5)


def test_inverse_2x2():
    m = torch.randn(5, 2, 2) + 2 * torch.eye(2)
    assert torch.allclose(inverse_2x2(m) @ m, torch.eye(2).expand(5, 2, 2), atol=1e-4)


def test_shapes_and_identity_jacobians():
    cfg = registry.get_config("tiny")
    net = registry.build_model("tiny").eval()
    x = torch.rand(3, 3, cfg.image_size, cfg.image_size)
    with torch.inference_mode():
        kp, jac = net.detect(x)
        assert kp.shape == (3, cfg.num_keypoints, 2) and jac.shape == (3, cfg.num_keypoints, 2, 2)
        assert kp.abs().max() <= 1.0
        # The Jacobian head starts at identity: no local deformation before training.
        assert torch.allclose(jac, torch.eye(2).expand_as(jac), atol=1e-5)
        out = net(x[:1].expand(3, -1, -1, -1), x)
    assert out["image"].shape == x.shape
    assert out["flow"].shape[-1] == 2 and out["mask"].shape[1] == cfg.num_keypoints + 1


def test_render_with_cached_source_equals_forward():
    net = registry.build_model("tiny").eval()
    src, drv = torch.rand(1, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        full = net(src.expand(2, -1, -1, -1), drv)["image"]
        state = net.prepare_source(src)
        kp, jac = net.detect(drv)
        cached = net.render(state, kp, jac)
    assert torch.allclose(full, cached, atol=1e-5)


def test_same_keypoints_give_identity_flow():
    net = registry.build_model("tiny").eval()
    src = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        kp, jac = net.detect(src)
        flow = net.dense_motion(net.dense_motion.small_source(src), kp, jac, kp, jac)["flow"]
    grid = make_coordinate_grid(*flow.shape[1:3])
    assert torch.allclose(flow[0], grid, atol=1e-4)


def test_unknown_config_and_model():
    with pytest.raises(ModelError, match="unknown model config"):
        registry.get_config("nope")
    with pytest.raises(ModelError, match="no shipped weights"):
        registry.get_weights("nope")


def test_shipped_weights_load_and_match_their_hash():
    for name, entry in registry.WEIGHTS.items():
        assert entry.file.startswith(f"{name}-{entry.sha256[:8]}") or entry.sha256[:8] in entry.file
        assert registry.sha256_file(registry.weights_dir() / entry.file) == entry.sha256
        net = registry.load_model(name)
        assert not net.training
    assert registry.DEFAULT_MODEL in registry.WEIGHTS


def test_tampered_weights_are_refused(tmp_path, monkeypatch):
    entry = registry.WEIGHTS["tiny"]
    bad = tmp_path / entry.file
    bad.write_bytes((registry.weights_dir() / entry.file).read_bytes() + b"x")
    monkeypatch.setattr(registry, "weights_dir", lambda: tmp_path)
    registry.load_model.cache_clear()
    try:
        with pytest.raises(ModelError, match="sha256"):
            registry.load_model("tiny")
    finally:
        registry.load_model.cache_clear()


def test_weights_index_is_valid_json():
    index = json.loads((registry.weights_dir() / "index.json").read_text())
    assert index["default"] in index["models"]
    for entry in index["models"].values():
        assert entry["config"] in registry.CONFIGS


def test_real_time_models_share_the_quarter_models_detector():
    # Predictors, the coder's prior and the trajectories are made from the quarter model's
    # keypoints; the real-time models (the default among them) are only valid with them if
    # their detector is the same.
    quarter = registry.shipped_detector_fingerprint(registry.get_weights("fomm-256-quarter").sha256)
    tiny = registry.shipped_detector_fingerprint(registry.get_weights("tiny").sha256)
    assert quarter is not None and quarter != tiny
    for model in ("fomm-256-fast", "fomm-256-fast-wide", registry.DEFAULT_MODEL):
        assert registry.shipped_detector_fingerprint(registry.get_weights(model).sha256) == quarter, model
    assert registry.shipped_detector_fingerprint("0" * 64) is None

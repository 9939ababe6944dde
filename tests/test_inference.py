"""Folded norms and channels_last must not change what the model computes."""
import copy

import torch
from conftest import with_norm_statistics

from kpcodec.models.inference import prepare_for_inference
from kpcodec.models.registry import build_model


def _model_with_running_stats():
    torch.manual_seed(0)
    return with_norm_statistics(build_model("tiny"))  # so folding has work to do


def test_folded_model_renders_like_the_original():
    net = _model_with_running_stats()
    fast = prepare_for_inference(copy.deepcopy(net))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and name.endswith("norm2")
                   for name, m in fast.named_modules())
    frames = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        kp, jac = net.detect(frames)
        kp2, jac2 = fast.detect(frames)
        torch.testing.assert_close(kp2, kp, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(jac2, jac, atol=1e-4, rtol=1e-4)
        out = net.render(net.prepare_source(frames[:1]), kp, jac)
        out2 = fast.render(fast.prepare_source(frames[:1]), kp, jac)
    assert out.shape == (3, 3, 64, 64)
    torch.testing.assert_close(out2, out, atol=1e-4, rtol=1e-4)


def test_folding_removes_every_norm_that_follows_a_conv():
    fast = prepare_for_inference(_model_with_running_stats())
    norms = [name for name, m in fast.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # Only the pre-activation norm in front of each ResBlock is left.
    assert norms and all(name.endswith("norm1") for name in norms)
    assert not any(p.requires_grad for p in fast.parameters())


def test_up_blocks_become_transposed_convolutions():
    from kpcodec.models.blocks import UpBlock

    net = _model_with_running_stats()
    ups = sum(isinstance(m, UpBlock) for m in net.modules())
    fast = prepare_for_inference(copy.deepcopy(net))
    assert ups and not any(isinstance(m, UpBlock) for m in fast.modules())
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in fast.modules()) == ups
    # One up block alone, at a size where a wrong border tap would show.
    torch.manual_seed(3)
    block = net.generator.up[0].eval()
    x = torch.randn(2, block.block.conv.in_channels, 5, 7)
    folded = prepare_for_inference(torch.nn.Sequential(copy.deepcopy(block)), channels_last=False)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), block(x), atol=1e-5, rtol=1e-5)

"""Growing a model (more bottleneck blocks, wider generator) keeps what it computes."""
from dataclasses import replace

import pytest
import torch
from conftest import with_norm_statistics

from kpcodec.models.fomm import MotionModel
from kpcodec.models.registry import CONFIGS
from kpcodec.train.grow import grow

TINY = CONFIGS["tiny"]


def _trained_like(cfg):
    torch.manual_seed(1)
    return with_norm_statistics(MotionModel(cfg))


def _render(net, source, driving):
    with torch.no_grad():
        state = net.prepare_source(source)
        kp, jac = net.detect(driving)
        return net.render(state, kp, jac)


@pytest.mark.parametrize("bigger", [
    replace(TINY, name="tiny-deep", gen_num_bottleneck=3),
    replace(TINY, name="tiny-wide", gen_expansion=6, gen_max_features=24),
    replace(TINY, name="tiny-both", gen_expansion=8, gen_max_features=32, gen_num_bottleneck=2),
])
def test_grown_model_renders_the_same_frames(bigger):
    small = _trained_like(TINY)
    big = MotionModel(bigger).eval()
    big.load_state_dict(grow(small.state_dict(), bigger))
    assert sum(p.numel() for p in big.parameters()) > sum(p.numel() for p in small.parameters())
    torch.manual_seed(2)
    source, driving = torch.rand(1, 3, 64, 64), torch.rand(3, 3, 64, 64)
    torch.testing.assert_close(_render(big, source, driving), _render(small, source, driving), atol=1e-5, rtol=1e-5)


def test_grown_model_still_learns_on_the_new_channels():
    bigger = replace(TINY, name="tiny-wide", gen_expansion=6, gen_max_features=24)
    big = MotionModel(bigger).train()
    big.load_state_dict(grow(_trained_like(TINY).state_dict(), bigger))
    out = big(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64))
    out["image"].mean().backward()
    # The zeroed weights that read the new channels get a gradient, so training can use them.
    grad = big.generator.final.weight.grad
    assert grad[:, TINY.gen_expansion:].abs().sum() > 0


def test_grow_refuses_a_smaller_or_different_model():
    small = _trained_like(TINY).state_dict()
    with pytest.raises(ValueError):
        grow(small, replace(TINY, name="tiny-narrow", gen_expansion=2, gen_max_features=8))
    with pytest.raises(ValueError):
        grow({**small, "generator.extra.weight": torch.zeros(1)}, TINY)

"""ByteDropout: the training model's dropout, one random byte per element."""

import pytest
import torch

from recmodel.model import ByteDropout


def test_it_drops_the_rounded_share_and_keeps_the_expected_value():
    torch.manual_seed(0)
    drop = ByteDropout(0.2).train()
    x = torch.ones(1_000_003)  # not a multiple of the eight bytes a draw gives
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 205 / 256) < 0.003  # 0.2 rounds to 51/256
    assert abs(y.mean().item() - 1.0) < 0.005
    assert torch.unique(y).tolist() == [0.0, pytest.approx(256 / 205)]


def test_the_gradient_flows_through_the_kept_elements_only():
    drop = ByteDropout(0.5).train()
    x = torch.randn(64, 50, 32, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.equal(x.grad, kept.float() * 2.0)
    assert 0.4 < kept.float().mean().item() < 0.6


def test_masks_follow_torch_seed_and_differ_between_calls():
    drop = ByteDropout(0.3).train()
    x = torch.ones(4096)
    torch.manual_seed(7)
    a, b = drop(x), drop(x)
    torch.manual_seed(7)
    assert torch.equal(drop(x), a)
    assert not torch.equal(a, b)


def test_identity_outside_training_and_at_zero():
    x = torch.randn(10, 8)
    assert ByteDropout(0.2).eval()(x) is x
    assert ByteDropout(0.0).train()(x) is x


@pytest.mark.parametrize("p", [-0.1, 1.0, 2.0])
def test_an_impossible_rate_is_refused(p):
    with pytest.raises(ValueError, match="dropout must be in"):
        ByteDropout(p)

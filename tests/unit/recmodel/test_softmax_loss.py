"""The training step's loss: the fused softmax cross-entropy and the accidental-hit mask of sampled softmax."""

import torch
from conftest import make_trainer
from torch.nn import functional as F

from recmodel.train import softmax_cross_entropy


def _grads(loss_fn, logits_fn, *leaves):
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    loss = loss_fn(*logits_fn(*leaves))
    loss.backward()
    return loss.detach(), [x.grad for x in leaves]


def test_fused_cross_entropy_equals_torch_in_value_and_gradient_with_masked_columns():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 700, generator=gen) * 4
    label = torch.randint(0, 100, (300,), generator=gen)
    masked = torch.rand(300, 600, generator=gen) < 0.05  # -inf columns, as accidental hits are

    def with_mask(x):
        return torch.cat([x[:, :100], x[:, 100:].masked_fill(masked, float("-inf"))], 1), label

    ours, (g_ours,) = _grads(softmax_cross_entropy, with_mask, logits)
    ref, (g_ref,) = _grads(F.cross_entropy, with_mask, logits)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-9)
    assert torch.isfinite(g_ours).all()
    assert (g_ours[:, 100:][masked] == 0).all()  # a masked negative gets no gradient
    # A rising loss makes the label's logit go up: the gradient's sign is right at the targets.
    assert (g_ours[torch.arange(300), label] < 0).all()


def test_accidental_hits_masked_outside_autograd_give_the_gradients_of_a_recorded_mask():
    trainer = make_trainer()  # sampled softmax: 64 random negatives over a catalog larger than that
    trainer.full_softmax_items = 0
    for i in range(1, 300):
        trainer._allocate(f"i{i}", 0)
    gen = torch.Generator().manual_seed(1)
    targets = torch.randint(1, 40, (200,), generator=gen)
    cand, label, sampled = trainer._candidates(targets)
    correction, n_batch, accidental = sampled
    accidental = accidental.clone()
    accidental[::7, :5] = True  # make sure some hits are masked whatever the draw was
    sampled = (correction, n_batch, accidental)
    out = torch.randn(200, trainer.dim, generator=gen)

    def ours(x):
        return trainer._logits(x, cand, sampled), label

    def recorded(x):  # the mask recorded by autograd, on a view of the logits
        logits = torch.addmm(correction, x * (1.0 / trainer.temperature), trainer.model.items(cand).T)
        logits[:, n_batch:].masked_fill_(accidental, float("-inf"))
        return logits, label

    loss, (grad,) = _grads(F.cross_entropy, ours, out)
    ref_loss, (ref_grad,) = _grads(F.cross_entropy, recorded, out)
    assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)
    assert torch.isinf(trainer._logits(out, cand, sampled)[:, n_batch:][accidental]).all()

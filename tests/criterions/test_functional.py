import pytest
import torch

from nmt_sd.criterions.functional import fused_label_smoothed_nll_loss, label_smoothed_nll_loss, log_probs


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [3, 4096])
def test_fused_ls_ce_matches_reference_values_and_grads(eps, chunk):
    logits = torch.randn(11, 13, dtype=torch.float64) * 3
    target = torch.tensor([0, 5, 1, 12, 3, 1, 7, 7, 2, 1, 9])  # 1 = pad
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ref_loss, ref_nll = label_smoothed_nll_loss(torch.log_softmax(a, -1), target, eps, ignore_index=1)
    loss, nll = fused_label_smoothed_nll_loss(b, target, eps, ignore_index=1, chunk=chunk)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert nll.item() == pytest.approx(ref_nll.item(), rel=1e-6)
    (0.7 * ref_loss + 0.3 * ref_nll).backward()  # arbitrary weights on both outputs
    (0.7 * loss + 0.3 * nll).backward()
    torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-6)
    assert b.grad[target.eq(1)].abs().max() == 0


def test_fused_ls_ce_bf16_logits_close_to_float32():
    logits = torch.randn(64, 50)
    target = torch.randint(2, 50, (64,))
    ref, _ = label_smoothed_nll_loss(log_probs(logits), target, 0.1, 1)
    lb = logits.to(torch.bfloat16).requires_grad_()
    loss, _ = fused_label_smoothed_nll_loss(lb, target, 0.1, 1)
    loss.backward()
    assert lb.grad.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(ref.item(), rel=1e-2)

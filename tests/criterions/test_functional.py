import pytest
import torch

from nmt_sd.criterions.functional import (
    label_smoothed_nll_loss,
    log_probs,
    x_divergence,
)
from nmt_sd.criterions.fused import fused_label_smoothed_nll_loss, gold_probs
from nmt_sd.criterions.multi_pass import multi_pass_ce_from_logits


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [3, 4096])
def test_fused_ls_ce_matches_reference_values_and_grads(eps, chunk):
    logits = torch.randn(11, 13, dtype=torch.float64) * 3
    target = torch.tensor([0, 5, 1, 12, 3, 1, 7, 7, 2, 1, 9])  # 1 = pad
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ref_loss, ref_nll = label_smoothed_nll_loss(
        torch.log_softmax(a, -1), target, eps, ignore_index=1
    )
    loss, nll = fused_label_smoothed_nll_loss(
        b, target, eps, ignore_index=1, chunk=chunk
    )
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


@pytest.mark.parametrize("chunk", [2, 256])
def test_fused_symmetric_kl_matches_reference(chunk):
    from nmt_sd.criterions.functional import symmetric_kl
    from nmt_sd.criterions.fused import symmetric_kl_from_logits

    zp = (torch.randn(2, 5, 11, dtype=torch.float64) * 2).requires_grad_()
    zq = (torch.randn(2, 5, 11, dtype=torch.float64) * 2).requires_grad_()
    pad = torch.tensor([[False] * 5, [False, False, True, True, True]])
    ref = symmetric_kl(torch.log_softmax(zp, -1), torch.log_softmax(zq, -1), pad)
    gp, gq = torch.autograd.grad(3.0 * ref, (zp, zq))
    zp2, zq2 = (
        zp.detach().clone().requires_grad_(),
        zq.detach().clone().requires_grad_(),
    )
    got = symmetric_kl_from_logits(zp2, zq2, pad, chunk)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    (3.0 * got).backward()
    torch.testing.assert_close(zp2.grad, gp, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(zq2.grad, gq, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("kind", ["x", "js"])
@pytest.mark.parametrize("k", [2, 3])
def test_fused_x_divergence_matches_reference(kind, k):
    from nmt_sd.criterions.fused_xdiv import x_divergence_from_logits

    zs = [
        (torch.randn(2, 4, 9, dtype=torch.float64) * 2).requires_grad_()
        for _ in range(k)
    ]
    pad = torch.tensor([[False] * 4, [False, True, True, True]])
    ref = x_divergence([torch.log_softmax(z, -1) for z in zs], pad, kind)
    ref_g = torch.autograd.grad(2.0 * ref, zs)
    zs2 = [z.detach().clone().requires_grad_() for z in zs]
    got = x_divergence_from_logits(zs2, pad, kind, chunk=3)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    (2.0 * got).backward()
    for z, g in zip(zs2, ref_g):
        torch.testing.assert_close(z.grad, g, atol=1e-6, rtol=1e-5)


def test_fused_soft_cross_entropy_matches_reference():
    from nmt_sd.criterions.functional import soft_cross_entropy
    from nmt_sd.criterions.fused import soft_cross_entropy_from_logits

    zs = (torch.randn(2, 4, 9, dtype=torch.float64) * 2).requires_grad_()
    zt = torch.randn(2, 4, 9, dtype=torch.float64) * 2
    pad = torch.tensor([[False] * 4, [False, False, True, True]])
    ref = soft_cross_entropy(torch.log_softmax(zt, -1), torch.log_softmax(zs, -1), pad)
    (g,) = torch.autograd.grad(ref, zs)
    z2 = zs.detach().clone().requires_grad_()
    zt2 = zt.clone().requires_grad_()
    got = soft_cross_entropy_from_logits(z2, zt2, pad, chunk=3)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    # the in-place exp works on a copy
    torch.testing.assert_close(z2.detach(), zs.detach())
    (0.3 * got).backward()  # an upstream gradient scales the one made in forward
    torch.testing.assert_close(z2.grad, 0.3 * g, atol=1e-6, rtol=1e-5)
    assert zt2.grad is None  # the teacher gets no gradient


@pytest.mark.parametrize("as_list", [False, True])  # one (K, ...) tensor, or K tensors
@pytest.mark.parametrize("kind", ["x", "js", None])
@pytest.mark.parametrize("k", [2, 3])
def test_multi_pass_ce_matches_separate_ce_and_divergence(kind, k, as_list):
    """The fused sweep = sum of the passes' LS-CE and the divergence, values and grads."""
    from nmt_sd.criterions.multi_pass import multi_pass_ce_from_logits

    z = (torch.randn(k, 2, 5, 11, dtype=torch.float64) * 2).requires_grad_()
    target = torch.tensor([[3, 4, 5, 6, 2], [7, 8, 2, 1, 1]])  # 1 = pad
    lp = torch.log_softmax(z, -1)
    parts = [
        label_smoothed_nll_loss(lp[i].reshape(-1, 11), target.reshape(-1), 0.1, 1)
        for i in range(k)
    ]
    ref = (
        sum(p[0] for p in parts),
        sum(p[1] for p in parts),
        (
            x_divergence(list(lp), target.eq(1), kind)
            if kind
            else torch.zeros((), dtype=torch.float64)
        ),
    )
    w = (0.7, 0.3, 2.5)
    (ref_g,) = torch.autograd.grad(sum(wi * r for wi, r in zip(w, ref)), z)
    zs = [z[i].detach().clone().requires_grad_() for i in range(k)]
    z2 = z.detach().clone().requires_grad_()
    got = multi_pass_ce_from_logits(
        zs if as_list else z2, target, 0.1, 1, kind, chunk=3
    )
    for g, r in zip(got, ref):
        assert g.item() == pytest.approx(r.item(), rel=1e-5, abs=1e-6)
    sum(wi * g for wi, g in zip(w, got)).backward()
    grad = torch.stack([zi.grad for zi in zs]) if as_list else z2.grad
    torch.testing.assert_close(grad, ref_g.to(grad.dtype), atol=1e-6, rtol=1e-5)
    assert grad[:, target.eq(1)].abs().max() == 0


def test_multi_pass_x_divergence_is_zero_for_equal_passes():
    from nmt_sd.criterions.multi_pass import multi_pass_ce_from_logits

    z = torch.randn(1, 3, 4, 9).to(torch.bfloat16).expand(3, 3, 4, 9)
    _, _, div = multi_pass_ce_from_logits(z, torch.full((3, 4), 5), 0.1, 1, "x")
    # up to float32 rounding of the mean
    assert div.item() == pytest.approx(0.0, abs=1e-6)


def test_fused_ce_leaves_float32_logits_untouched_and_scales_its_gradient():
    """The fused CE works on a float32 copy of each chunk (an in-place exp on a view of
    float32 logits would corrupt them), and an upstream gradient scales the stored one.
    """
    from nmt_sd.criterions.fused import fused_label_smoothed_nll_loss

    torch.manual_seed(0)
    logits = torch.randn(5, 7, requires_grad=True)
    before = logits.detach().clone()
    target = torch.tensor([0, 3, 1, 6, 1])  # pad index 1
    loss, nll = fused_label_smoothed_nll_loss(logits, target, 0.1, 1, chunk=2)
    torch.testing.assert_close(logits.detach(), before)
    (3.0 * loss).backward()
    ref = before.clone().requires_grad_(True)
    ref_loss, _ = label_smoothed_nll_loss(torch.log_softmax(ref, -1), target, 0.1, 1)
    (3.0 * ref_loss).backward()
    torch.testing.assert_close(logits.grad, ref.grad)


@pytest.mark.parametrize("as_list", [False, True])
@pytest.mark.parametrize("kind", ["x", "js"])
@pytest.mark.parametrize("hint", ["match", "differs", "none"])
def test_multi_pass_gradient_made_in_forward(hint, kind, as_list, monkeypatch):
    """With the caller's weights as a hint the gradient is made in forward and backward
    does no chunk work; a wrong or missing hint still gives the exact gradient."""
    from nmt_sd.criterions import multi_pass as fn

    calls = []
    real = fn._multi_pass_chunk_grad
    monkeypatch.setattr(
        fn, "_multi_pass_chunk_grad", lambda *a: calls.append(1) or real(*a)
    )
    k, w = 3, (0.5, 2.5)
    z = (torch.randn(k, 2, 5, 11, dtype=torch.float64) * 2).requires_grad_()
    target = torch.tensor([[3, 4, 5, 6, 2], [7, 8, 2, 1, 1]])  # 1 = pad
    lp = torch.log_softmax(z, -1)
    ce = sum(
        label_smoothed_nll_loss(lp[i].reshape(-1, 11), target.reshape(-1), 0.1, 1)[0]
        for i in range(k)
    )
    (ref_g,) = torch.autograd.grad(
        w[0] * ce + w[1] * x_divergence(list(lp), target.eq(1), kind), z
    )
    zs = [z[i].detach().clone().requires_grad_() for i in range(k)]
    z2 = z.detach().clone().requires_grad_()
    weights = {"match": w, "differs": (1.0, 1.0), "none": None}[hint]
    loss, _, div = fn.multi_pass_ce_from_logits(
        zs if as_list else z2, target, 0.1, 1, kind, chunk=3, weights=weights
    )
    in_forward = len(calls)
    (w[0] * loss + w[1] * div).backward()
    assert in_forward == (0 if hint == "none" else 4)  # 10 rows in chunks of 3
    assert len(calls) - in_forward == (0 if hint == "match" else 4)
    grad = torch.stack([zi.grad for zi in zs]) if as_list else z2.grad
    # float32 chunks
    torch.testing.assert_close(grad, ref_g.to(grad.dtype), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "chunk", [1, 4, 64]
)  # every row alone, a short last chunk, one chunk
def test_gold_probs_is_the_softmax_probability_of_the_gold_token(chunk):
    logits = torch.randn(2, 5, 11).bfloat16()
    target = torch.randint(0, 11, (2, 5))
    # by the definition
    ref = torch.softmax(logits.double(), -1).gather(-1, target[..., None]).squeeze(-1)
    got = gold_probs(logits, target, chunk=chunk)
    assert got.dtype == torch.float32 and got.shape == (2, 5)
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "k", [1, 2, 3]
)  # one pass: the plain fused CE; more: the multi-pass sweep
def test_ce_sweeps_leave_each_rows_gold_nll(k):
    """The per-row -log p(gold) the CE sweeps write out (for gates) is the log-softmax's,
    pad rows included, and asking for it changes neither the loss nor its gradient."""
    z = (torch.randn(k, 7, 13) * 3).bfloat16()
    target = torch.tensor([3, 4, 5, 6, 2, 1, 1])  # 1 = pad
    want = (
        -torch.log_softmax(z.double(), -1)
        .gather(-1, target.expand(k, -1)[..., None])
        .squeeze(-1)
    )
    rows = torch.full((k, 7), float("nan"))
    runs = []
    for out in (None, rows):
        zz = z.clone().requires_grad_()
        if k == 1:
            loss, _ = fused_label_smoothed_nll_loss(
                zz[0], target, 0.1, 1, chunk=3, nll_rows=None if out is None else out[0]
            )
        else:
            loss, _, div = multi_pass_ce_from_logits(
                zz, target, 0.1, 1, "x", chunk=3, weights=(1.0, 2.0), nll_rows=out
            )
            loss = loss + 2.0 * div
        loss.backward()
        runs.append((loss.detach(), zz.grad))
    torch.testing.assert_close(rows.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    # bit-equal to gold_probs' arithmetic: a gate comparing a teacher's and a student's
    # probabilities sees equal logits as a tie whichever sweep computed them
    assert torch.equal(torch.exp(-rows), gold_probs(z, target.expand(k, -1)))

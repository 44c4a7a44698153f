import math

import pytest
import torch

from nmt_sd.criterions.functional import symmetric_kl, x_divergence
from nmt_sd.criterions.intra_distillation import adaptive_alpha
from tests.criterions.helpers import loss_and_grads, model_and_batch, objective


def test_x_divergence_hand_computation():
    # K=3 passes, one real token and one pad, V=2
    ps = [
        torch.tensor([[[0.9, 0.1], [0.5, 0.5]]]),
        torch.tensor([[[0.6, 0.4], [0.2, 0.8]]]),
        torch.tensor([[[0.3, 0.7], [0.5, 0.5]]]),
    ]
    pad = torch.tensor([[False, True]])
    bar = [(0.9 + 0.6 + 0.3) / 3, (0.1 + 0.4 + 0.7) / 3]
    x = (
        sum(
            (p[0, 0, v].item() - bar[v])
            * (math.log(p[0, 0, v].item()) - math.log(bar[v]))
            for p in ps
            for v in (0, 1)
        )
        / 3
    )
    js = (
        sum(
            p[0, 0, v].item() * (math.log(p[0, 0, v].item()) - math.log(bar[v]))
            for p in ps
            for v in (0, 1)
        )
        / 3
    )
    lps = [p.log() for p in ps]
    assert x_divergence(lps, pad, "x").item() == pytest.approx(x, rel=1e-6)
    assert x_divergence(lps, pad, "js").item() == pytest.approx(js, rel=1e-6)


def test_x_divergence_survives_underflow():
    lp = torch.tensor([[[0.0, -1e4]]])  # p = (1, ~0): exp underflows to exactly 0
    lq = torch.tensor([[[-1e4, 0.0]]])
    x = x_divergence([lp, lq], torch.tensor([[False]]))
    assert torch.isfinite(x)


def test_k2_x_divergence_is_half_the_rdrop_kl():
    """With p_bar = (p1+p2)/2: X = 1/4 sum (p1-p2)(log p1 - log p2) = 1/2 * R-Drop's KL."""
    lp = torch.log_softmax(torch.randn(2, 3, 7), -1)
    lq = torch.log_softmax(torch.randn(2, 3, 7), -1)
    pad = torch.tensor([[False, False, True], [False, True, True]])
    assert x_divergence([lp, lq], pad).item() == pytest.approx(
        0.5 * symmetric_kl(lp, lq, pad).item(), rel=1e-5
    )


def test_k2_intra_loss_is_half_the_rdrop_loss_on_the_same_passes():
    model, b = model_and_batch(dropout=0.3)
    rdrop, _ = objective("rdrop", rdrop_alpha=5.0)
    intra, _ = objective(
        "intra_distillation", intra_k=2, intra_alpha=5.0, intra_passes="concat"
    )
    l_r, g_r, _ = loss_and_grads(rdrop, model, b, seed=9)
    # same seed -> same dropout masks
    l_i, g_i, _ = loss_and_grads(intra, model, b, seed=9)
    assert l_i.item() == pytest.approx(0.5 * l_r.item(), rel=1e-5)
    for n in g_r:
        torch.testing.assert_close(g_i[n], 0.5 * g_r[n], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("k", [2, 3])
def test_alpha_zero_and_dropout_zero_equal_label_smoothed_ce(k):
    model, b = model_and_batch(dropout=0.0)
    base, _ = objective()
    intra, _ = objective("intra_distillation", intra_k=k, intra_alpha=0.0)
    l0, g0, _ = loss_and_grads(base, model, b)
    l1, g1, logs = loss_and_grads(intra, model, b)
    # mean CE over identical passes
    assert l1.item() == pytest.approx(l0.item(), rel=1e-5)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-4)
    assert float(logs["intra_x"]) == pytest.approx(0.0, abs=1e-6)
    intra5, _ = objective("intra_distillation", intra_k=k, intra_alpha=5.0)
    assert loss_and_grads(intra5, model, b)[0].item() == pytest.approx(
        l0.item(), rel=1e-5
    )


def test_adaptive_alpha_schedule_points():
    a, n, p, q = 5.0, 50_000, 5.0, 10.0
    assert adaptive_alpha(a, 0, n, p, q) == 0.0
    assert adaptive_alpha(a, int(n / q), n, p, q) == pytest.approx(1.0)
    assert adaptive_alpha(a, int(n / p), n, p, q) == pytest.approx(a)
    assert adaptive_alpha(a, n, n, p, q) == a and adaptive_alpha(a, 3 * n, n, p, q) == a
    # monotone ramp, and the docs' worked example: gamma = ln 0.2 / ln 0.5
    gamma = math.log(0.2) / math.log(0.5)
    assert adaptive_alpha(a, 7_000, n, p, q) == pytest.approx(
        a * (p * 7_000 / n) ** gamma
    )
    # alpha <= 1: constant, as the official code
    assert adaptive_alpha(0.5, 10, n, p, q) == 0.5


def test_term_uses_update_counter():
    model, b = model_and_batch(dropout=0.3)
    intra, _ = objective(
        "intra_distillation",
        intra_k=2,
        intra_alpha=5.0,
        intra_adaptive=True,
        max_update=100,
    )
    intra.set_num_updates(0)
    torch.manual_seed(2)
    l0 = intra(model, b)[2]
    assert float(l0["intra_alpha"]) == 0.0
    intra.set_num_updates(20)  # N/p = 20 -> full alpha
    assert float(intra(model, b)[2]["intra_alpha"]) == pytest.approx(5.0 * b["ntokens"])


@pytest.mark.parametrize(
    "crit,over",
    [
        ("rdrop", dict(rdrop_alpha=5.0)),
        ("intra_distillation", dict(intra_k=3, intra_alpha=5.0, intra_adaptive=True)),
        ("intra_distillation", dict(intra_k=3, intra_alpha=5.0, intra_passes="concat")),
    ],
)
def test_objective_makes_the_multi_pass_gradient_in_forward(crit, over, monkeypatch):
    """The objective hints its loss weights to the fused loss: backward does no chunk
    work, and the gradients equal those of the same passes without the hint."""
    from nmt_sd.criterions import multi_pass as fn

    model, b = model_and_batch(dropout=0.3)
    c, _ = objective(crit, **over)
    c.set_num_updates(30)  # mid-way through the adaptive schedule (N = 100)
    _, g_hint, _ = loss_and_grads(c, model, b, seed=4)
    calls = []
    real_grad, real_loss = fn._multi_pass_chunk_grad, fn.multi_pass_ce_from_logits
    monkeypatch.setattr(
        fn, "_multi_pass_chunk_grad", lambda *a: calls.append(1) or real_grad(*a)
    )
    torch.manual_seed(4)
    model.zero_grad()
    loss, _, _ = c(model, b)
    n = len(calls)
    loss.backward()
    assert n > 0 and len(calls) == n  # made in forward only
    import nmt_sd.criterions.objective as obj

    monkeypatch.setattr(
        obj,
        "multi_pass_ce_from_logits",
        lambda *a, weights=None, **kw: real_loss(*a, **kw),
    )
    _, g_plain, _ = loss_and_grads(c, model, b, seed=4)
    for name in g_plain:
        # float32 rounding
        torch.testing.assert_close(g_hint[name], g_plain[name], atol=1e-5, rtol=1e-4)

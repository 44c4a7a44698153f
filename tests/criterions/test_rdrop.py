import math

import pytest
import torch

from nmt_sd.criterions.functional import symmetric_kl
from nmt_sd.criterions.objective import Objective
from tests.conftest import ragged_batch
from tests.criterions.helpers import (
    assert_eval_is_label_smoothed_ce,
    loss_and_grads,
    model_and_batch,
    objective,
)


def test_symmetric_kl_hand_computation():
    # one sentence, T=2 (second position is pad), V=2
    p = torch.tensor([[[0.8, 0.2], [0.5, 0.5]]])
    q = torch.tensor([[[0.6, 0.4], [0.1, 0.9]]])
    pad = torch.tensor([[False, True]])
    kl_pq = 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.4)
    kl_qp = 0.6 * math.log(0.6 / 0.8) + 0.4 * math.log(0.4 / 0.2)
    got = symmetric_kl(p.log(), q.log(), pad)
    assert got.item() == pytest.approx(0.5 * (kl_pq + kl_qp), rel=1e-6)


@pytest.mark.parametrize("ce,factor", [("sum", 2.0), ("mean", 1.0)])
def test_alpha_zero_equals_label_smoothed_ce(ce, factor):
    """Without dropout both passes are the plain forward: R-Drop(alpha 0) = factor * LS-CE."""
    model, b = model_and_batch(dropout=0.0)
    base, _ = objective()
    rdrop, _ = objective("rdrop", rdrop_alpha=0.0, rdrop_ce=ce)
    l0, g0, _ = loss_and_grads(base, model, b)
    l1, g1, logs = loss_and_grads(rdrop, model, b)
    assert l1.item() == pytest.approx(factor * l0.item(), rel=1e-5)
    for n in g0:
        torch.testing.assert_close(g1[n], factor * g0[n], atol=1e-6, rtol=1e-4)
    assert float(logs["rdrop_kl"]) == pytest.approx(0.0, abs=1e-6)  # dropout 0 -> KL 0


def test_alpha_zero_with_dropout_is_ce_of_the_doubled_batch():
    model, b = model_and_batch(dropout=0.3)
    rdrop, _ = objective("rdrop", rdrop_alpha=0.0)
    base, _ = objective()
    l1, g1, _ = loss_and_grads(rdrop, model, b, seed=5)
    doubled = {
        **b,
        "net_input": {
            k: v.repeat(2, *([1] * (v.dim() - 1))) for k, v in b["net_input"].items()
        },
        "target": b["target"].repeat(2, 1),
    }
    # same RNG -> same dropout masks
    l0, g0, _ = loss_and_grads(base, model, doubled, seed=5)
    assert l1.item() == pytest.approx(l0.item(), rel=1e-5)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-4)


def test_kl_gradients_flow_through_both_passes_and_sample_unchanged():
    model, b = model_and_batch(dropout=0.3)
    before = {k: v.clone() for k, v in b["net_input"].items()}
    rdrop, _ = objective("rdrop", rdrop_alpha=5.0)
    torch.manual_seed(3)
    loss, ss, logs = rdrop(model, b)
    assert ss == b["ntokens"] and float(logs["rdrop_kl"]) > 0
    assert math.isfinite(loss.item())
    loss.backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()
    )
    assert all(torch.equal(before[k], b["net_input"][k]) for k in before)
    # validation (eval mode) is the single-pass LS-CE without the KL
    assert_eval_is_label_smoothed_ce(rdrop, model, b)


def test_sequential_passes_match_concat_in_expectation_free_case():
    model, b = model_and_batch(dropout=0.0)
    a, _ = objective("rdrop", rdrop_alpha=1.0, rdrop_passes="concat")
    s, _ = objective("rdrop", rdrop_alpha=1.0, rdrop_passes="sequential")
    assert a(model, b)[0].item() == pytest.approx(s(model, b)[0].item(), rel=1e-5)


def test_reduce_metrics_reports_kl_per_token():
    model, b = model_and_batch(dropout=0.3)
    rdrop, d = objective("rdrop", rdrop_alpha=1.0)
    logs = [
        rdrop(model, ragged_batch(d, select=[0, 1]))[2],
        rdrop(model, ragged_batch(d, select=[2]))[2],
    ]
    out = Objective.reduce_metrics(logs)
    assert out["rdrop_kl"] == pytest.approx(
        sum(float(l["rdrop_kl"]) for l in logs) / 12
    )

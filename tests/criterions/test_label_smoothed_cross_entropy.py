import math

import pytest
import torch

from nmt_sd.criterions.functional import label_smoothed_nll_loss
from nmt_sd.criterions.objective import Objective
from tests.conftest import ragged_batch
from tests.criterions.helpers import model_and_batch, objective


def test_label_smoothing_hand_computation():
    # V=4, two real tokens and one pad (index 1). eps=0.3 -> eps_i = 0.1, gold weight 0.6.
    lprobs = torch.log(
        torch.tensor(
            [[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]]
        )
    )
    target = torch.tensor([3, 0, 1])
    loss, nll = label_smoothed_nll_loss(lprobs, target, epsilon=0.3, ignore_index=1)
    # token 0: nll=-ln .4 ; smooth = -(ln.1+ln.2+ln.3+ln.4); token 1: nll=-ln .25, smooth=-4 ln .25
    nll0, sm0 = -math.log(0.4), -sum(math.log(p) for p in (0.1, 0.2, 0.3, 0.4))
    nll1, sm1 = -math.log(0.25), -4 * math.log(0.25)
    expected = (0.6 * nll0 + 0.1 * sm0) + (0.6 * nll1 + 0.1 * sm1)
    assert nll.item() == pytest.approx(nll0 + nll1, rel=1e-6)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_eps_zero_is_plain_nll():
    lprobs = torch.log_softmax(torch.randn(5, 7), -1)
    target = torch.tensor([0, 3, 6, 2, 1])
    loss, nll = label_smoothed_nll_loss(lprobs, target, 0.0, ignore_index=1)
    assert torch.allclose(loss, nll)
    assert nll.item() == pytest.approx(
        -lprobs[[0, 1, 2, 3], [0, 3, 6, 2]].sum().item(), rel=1e-6
    )


def test_criterion_matches_hand_formula_and_leaves_sample_alone():
    crit, d = objective()
    model, b = model_and_batch()
    before = {k: v.clone() for k, v in b["net_input"].items()}
    loss, sample_size, log = crit(model, b)
    logits, _ = model(**b["net_input"])
    ref, _ = label_smoothed_nll_loss(
        torch.log_softmax(logits, -1).view(-1, len(d)),
        b["target"].view(-1),
        0.1,
        d.pad(),
    )
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert sample_size == b["ntokens"] == 12
    assert all(torch.equal(before[k], b["net_input"][k]) for k in before)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_reduce_over_two_workers_equals_whole_batch():
    crit, d = objective()
    model, _ = model_and_batch()
    whole = Objective.reduce_metrics([crit(model, ragged_batch(d))[2]])
    halves = [
        crit(model, ragged_batch(d, select=[0, 1]))[2],
        crit(model, ragged_batch(d, select=[2]))[2],
    ]
    merged = Objective.reduce_metrics(halves)
    for key in ("loss", "nll_loss", "ntokens", "nsentences", "sample_size"):
        assert merged[key] == pytest.approx(whole[key], rel=1e-5), key

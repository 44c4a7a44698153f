import math

import pytest
import torch

from nmt_sd.criterions.functional import label_smoothed_nll_loss
from nmt_sd.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropy, reduce_ce_metrics
from nmt_sd.models import TransformerModel
from tests.conftest import ragged_batch, tiny_args, tiny_dict


def test_label_smoothing_hand_computation():
    # V=4, two real tokens and one pad (index 1). eps=0.3 -> eps_i = 0.1, gold weight 0.6.
    lprobs = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]]))
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
    assert nll.item() == pytest.approx(-lprobs[[0, 1, 2, 3], [0, 3, 6, 2]].sum().item(), rel=1e-6)


class _Task:
    def __init__(self, d):
        self.src_dict = self.tgt_dict = d


def test_criterion_sums_and_reduce_over_workers():
    d = tiny_dict()
    args = tiny_args()
    model = TransformerModel.build_model(args, d, d)
    crit = LabelSmoothedCrossEntropy(args, _Task(d))
    b = ragged_batch(d)
    before = {k: v.clone() for k, v in b["net_input"].items()}
    loss, sample_size, log = crit(model, b)
    assert sample_size == b["ntokens"] == 12
    assert all(torch.equal(before[k], b["net_input"][k]) for k in before)  # sample unchanged
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # two "workers" holding halves of the batch reduce to the same metrics as the whole
    halves = [ragged_batch(d, lengths=((5, 4), (3, 6))), ragged_batch(d, lengths=((7, 2),), seed=0)]
    logs = [crit(model, h)[2] for h in halves]
    merged = reduce_ce_metrics(logs)
    manual_nll = sum(float(l["nll_loss"]) for l in logs) / 12 / math.log(2)
    assert merged["nll_loss"] == pytest.approx(manual_nll)
    assert merged["ntokens"] == 12

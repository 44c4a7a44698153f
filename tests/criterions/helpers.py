"""Builders shared by the criterion tests."""

import argparse

import torch

from nmt_sd.criterions import CRITERIONS
from nmt_sd.models import TransformerModel
from tests.conftest import ragged_batch, tiny_args, tiny_dict


class Task:
    def __init__(self, d):
        self.src_dict = self.tgt_dict = d


def objective(criterion="label_smoothed_cross_entropy", terms="", **over):
    d = tiny_dict()
    a = dict(
        criterion=criterion,
        terms=terms,
        label_smoothing=0.1,
        max_update=100,
        rdrop_alpha=0.0,
        rdrop_ce="sum",
        rdrop_passes="concat",
        intra_k=3,
        intra_alpha=0.0,
        intra_divergence="x",
        intra_adaptive=False,
        intra_p=5.0,
        intra_q=10.0,
        intra_max_updates=None,
        intra_passes="sequential",
        seer_alpha=0.5,
        seer_ce_weight=1.0,
        seer_layers=None,
        seer_dropout=None,
    )
    # kd term defaults
    a.update(
        teacher_path=None,
        kd_alpha=0.5,
        kd_temperature=1.0,
        kd_hidden_weight=0.0,
        kd_attn_weight=0.0,
        kd_layer_map="",
    )
    # model args too, for terms that build modules (seer)
    a = {
        **vars(tiny_args()),
        **a,
    }
    a.update(over)
    return CRITERIONS.get(criterion)(argparse.Namespace(**a), Task(d)), d


def model_and_batch(dropout=0.0, seed=0):
    d = tiny_dict()
    torch.manual_seed(seed)
    model = TransformerModel.build_model(tiny_args(dropout=dropout), d, d).train()
    return model, ragged_batch(d)


def loss_and_grads(crit, model, sample, seed=1):
    torch.manual_seed(seed)
    model.zero_grad()
    loss, ss, logs = crit(model, sample)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, logs


def assert_eval_is_label_smoothed_ce(crit, model, sample):
    """In eval mode (validation) every objective is the single-pass LS-CE of the model."""
    import pytest

    crit.eval()
    model.eval()
    base, _ = objective()
    base.eval()
    assert crit(model, sample)[0].item() == pytest.approx(
        base(model, sample)[0].item(), rel=1e-6
    )

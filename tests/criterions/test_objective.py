"""Composition: the objective is CE over the passes plus each term on the same passes."""

import pytest
import torch

from nmt_sd.criterions import objective as objective_mod
from nmt_sd.criterions.functional import label_smoothed_nll_loss, symmetric_kl
from nmt_sd.criterions.objective import Pass, resolve_terms
from nmt_sd.errors import NmtSdError
from nmt_sd.options import parse_training_args
from tests.criterions.helpers import model_and_batch, objective


def test_combined_loss_is_sum_of_parts_on_the_same_passes(monkeypatch):
    model, b = model_and_batch(dropout=0.3)
    crit, d = objective("label_smoothed_cross_entropy", terms="rdrop", rdrop_alpha=2.0)
    torch.manual_seed(4)
    passes = [Pass(model(**b["net_input"])[0]) for _ in range(2)]
    monkeypatch.setattr(objective_mod, "run_passes", lambda *a, **k: passes)
    loss, _, logs = crit(model, b)
    pad = b["target"].eq(d.pad())
    ce = sum(
        label_smoothed_nll_loss(
            p.lprobs.view(-1, len(d)), b["target"].view(-1), 0.1, d.pad()
        )[0]
        for p in passes
    )
    kl = symmetric_kl(passes[0].lprobs, passes[1].lprobs, pad)
    assert loss.item() == pytest.approx((ce + 2.0 * kl).item(), rel=1e-6)
    assert set(logs) >= {
        "loss",
        "nll_loss",
        "ntokens",
        "nsentences",
        "sample_size",
        "rdrop_kl",
    }


def test_criterion_name_equals_terms_flag():
    model, b = model_and_batch(dropout=0.3)
    a, _ = objective("rdrop", rdrop_alpha=3.0)
    c, _ = objective("label_smoothed_cross_entropy", terms="rdrop", rdrop_alpha=3.0)
    torch.manual_seed(7)
    la = a(model, b)[0]
    torch.manual_seed(7)
    lc = c(model, b)[0]
    assert la.item() == pytest.approx(lc.item(), rel=1e-6)


def test_term_resolution_and_errors():
    assert resolve_terms("label_smoothed_cross_entropy_with_rdrop", "") == ["rdrop"]
    assert resolve_terms("rdrop", "rdrop") == ["rdrop"]
    with pytest.raises(NmtSdError, match="unknown term 'nope'"):
        resolve_terms("rdrop", "nope")
    with pytest.raises(NmtSdError, match="one consistency term"):
        objective("rdrop", terms="intra_distillation")


def test_term_flags_exist_only_for_active_terms(capsys):
    args = parse_training_args(
        [
            "d",
            "--max-tokens",
            "8",
            "--max-update",
            "1",
            "--criterion",
            "intra_distillation",
            "--intra-k",
            "4",
            "--intra-alpha",
            "5",
            "--intra-adaptive",
        ]
    )
    assert args.intra_k == 4 and args.intra_adaptive
    with pytest.raises(SystemExit):
        parse_training_args(
            ["d", "--max-tokens", "8", "--max-update", "1", "--rdrop-alpha", "5"]
        )
    assert "--rdrop-alpha" in capsys.readouterr().err


@pytest.mark.parametrize(
    "crit,over",
    [
        ("label_smoothed_cross_entropy", {}),
        ("rdrop", {"rdrop_alpha": 5.0}),
        ("intra_distillation", {"intra_alpha": 5.0, "intra_k": 3}),
    ],
)
def test_every_criterion_works_under_bf16_autocast(crit, over):
    # no dropout: fp32 and bf16 see the same passes
    model, b = model_and_batch(dropout=0.0)
    c, _ = objective(crit, **over)
    ref = c(model, b)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, logs = c(model, b)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.item(), rel=3e-2)
    loss.backward()
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters()
    )


def test_concat_passes_split_extras_per_pass():
    from nmt_sd.criterions.objective import run_passes

    model, b = model_and_batch(dropout=0.0)
    passes = run_passes(
        model, b["net_input"], 2, "concat", return_all_hiddens=True, need_attn=True
    )
    single, extra = model(**b["net_input"], return_all_hiddens=True, need_attn=True)
    for p in passes:
        torch.testing.assert_close(p.logits, single, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            p.extra["encoder_out"].out, extra["encoder_out"].out, atol=1e-5, rtol=1e-5
        )
        assert len(p.extra["inner_states"]) == len(extra["inner_states"])
        torch.testing.assert_close(
            p.extra["encoder_states"][-1],
            extra["encoder_states"][-1],
            atol=1e-5,
            rtol=1e-5,
        )
        torch.testing.assert_close(
            p.extra["decoder_cross_attns"][0],
            extra["decoder_cross_attns"][0],
            atol=1e-5,
            rtol=1e-5,
        )

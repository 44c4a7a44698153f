"""CBBGCA (cmlm_kd): the CMLM's bidirectional view, masking, gates, the teacher pass,
annealing, the loss and its parts, composition and bf16 (the frozen teacher and the flags:
test_cmlm_kd_config.py).
"""

import math

import pytest
import torch

from nmt_sd.criterions import cmlm_kd as cm, objective as objective_mod
from nmt_sd.criterions.functional import (
    kd_kl,
    label_smoothed_nll_loss,
    log_probs,
    symmetric_kl,
)
from nmt_sd.criterions.fused import gold_probs, kl_rows_from_logits
from nmt_sd.criterions.objective import Objective, Pass, run_passes
from tests.conftest import ragged_batch
from tests.criterions.helpers import (
    assert_eval_is_label_smoothed_ce,
    loss_and_grads,
    model_and_batch,
    objective,
)

# the term's flag defaults (helpers.objective does not know them)
CMLM_DEFAULTS = dict(
    cmlm_kd_decoder_layers=None,
    cmlm_kd_cmlm_weight=1.0,
    cmlm_kd_joint_updates=None,
    cmlm_kd_gate="threshold",
    cmlm_kd_threshold=0.5,
    cmlm_kd_lowest_k=50.0,
    cmlm_kd_mask_groups=None,
    cmlm_kd_norm="gated",
    cmlm_kd_teacher="live",
    cmlm_kd_teacher_path=None,
    cmlm_kd_continue_cmlm=None,
    cmlm_kd_weight=1.0,
    cmlm_kd_weight_min=0.1,
    cmlm_kd_anneal="linear",
    cmlm_kd_anneal_updates=None,
    cmlm_kd_combine="add",
)
# KD only, from the first update
STAGE2 = dict(cmlm_kd_joint_updates=0, cmlm_kd_continue_cmlm=False)


def cmlm(criterion="cmlm_kd", terms="", **over):
    return objective(criterion, terms, **{**CMLM_DEFAULTS, **over})


def record_cmlm_calls(term):
    """Wrap the term's CMLM forward; each call records its input and grad/train mode."""
    calls, orig = [], term.cmlm.forward

    def wrapped(decoder, tokens, enc, rows=None):
        calls.append(
            dict(
                tokens=tokens.clone(),
                rows=None if rows is None else rows.clone(),
                grad=torch.is_grad_enabled(),
                training=term.cmlm.training,
            )
        )
        return orig(decoder, tokens, enc, rows)

    term.cmlm.forward = wrapped
    return calls


def hand_built_pass(model, sample, conf):
    """A pass whose logits give the gold token probability ``conf`` (B, T), the rest uniform."""
    v = model.decoder.output_projection.weight.size(0)
    target = sample["target"]
    probs = ((1 - conf) / (v - 1))[..., None].expand(*target.shape, v).clone()
    probs.scatter_(-1, target[..., None], conf[..., None])
    _, extra = model(**sample["net_input"])
    return Pass(probs.log(), extra)


@pytest.mark.parametrize("pre_norm,shared", [(False, False), (True, True)])
def test_cmlm_sees_both_sides_never_its_masked_token_and_ignores_padding(
    pre_norm, shared
):
    model, b = model_and_batch(dropout=0.0)
    crit, d = cmlm(
        decoder_normalize_before=pre_norm, share_decoder_input_output_embed=shared
    )
    term = crit.terms[0]
    enc = model.encoder(b["net_input"]["src_tokens"], b["net_input"]["src_lengths"])
    target = b["target"]  # sentence 1: 5 tokens + </s>
    masked = torch.zeros_like(target, dtype=torch.bool)
    masked[1, 2] = True

    def predict(tgt):  # the term's way: mask, then predict the masked position
        return log_probs(
            term.cmlm(
                model.decoder, tgt.masked_fill(masked, term.mask_idx), enc, masked
            )
        )

    base = predict(target)
    for pos, changes in (
        (0, True),
        (1, True),
        (3, True),
        (4, True),
        (2, False),
    ):  # left, right, itself
        other = target.clone()
        other[1, pos] = d.nspecial + (int(target[1, pos]) == d.nspecial)
        diff = (predict(other) - base).abs().max().item()
        assert (diff > 1e-4) if changes else (diff < 1e-6), (pos, diff)
    full = term.cmlm(model.decoder, target, enc)  # (B, T, V); sentence 0 is padded
    alone = ragged_batch(d, select=[0])
    enc0 = model.encoder(
        alone["net_input"]["src_tokens"], alone["net_input"]["src_lengths"]
    )
    n = int(target[0].ne(d.pad()).sum())
    torch.testing.assert_close(
        full[0, :n],
        term.cmlm(model.decoder, alone["target"], enc0)[0],
        atol=1e-5,
        rtol=1e-5,
    )
    own = {k for k, _ in term.cmlm.named_parameters()}
    assert (
        {"embed_tokens.weight", "output_projection.weight"} <= own
    ) != shared  # borrowed when shared


def test_random_mask_is_mask_predict_style_never_eos_or_pad():
    d = objective()[1]
    target = ragged_batch(d)["target"]
    real = target.ne(d.pad()) & target.ne(d.eos())
    n = real.sum(1)  # [3, 5, 1]
    counts = [set() for _ in range(3)]
    for _ in range(300):
        m = cm.random_cmlm_mask(target, d.pad(), d.eos())
        assert not (m & ~real).any()
        for i in range(3):
            counts[i].add(int(m[i].sum()))
    # every count in 1..n occurs, nothing else
    assert counts == [set(range(1, int(k) + 1)) for k in n]


def test_threshold_gate_selects_exactly_the_tokens_under_tau_never_pad_or_eos():
    conf = torch.tensor([[0.2, 0.7, 0.5, 0.1], [0.49, 0.3, 0.05, 0.05]])
    # eos at 3 / 2, then pad
    keep = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert cm.gate_threshold(conf, keep, 0.5).tolist() == [
        [True, False, False, False],
        [True, True, False, False],
    ]
    model, b = model_and_batch()
    crit, d = cmlm(**STAGE2)
    conf = torch.rand(b["target"].shape)
    conf[2] = 0.1  # sentence 2: its </s> and pads are low too, but never selected
    sel = crit.terms[0].gate(b, [hand_built_pass(model, b, conf)])
    keep = b["target"].ne(d.pad()) & b["target"].ne(d.eos())
    assert torch.equal(sel, keep & (conf < 0.5)) and sel.any()


def test_lowest_k_selects_ceil_k_percent_per_sentence():
    conf = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.3, 0.7, 0.0],
            [0.2, 0.8, 0.6, 0.4, 0.0, 0.0],
            [0.5, 0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    # n = 5, 4, 1
    keep = torch.tensor(
        [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool
    )

    def rows(m):
        return [sorted(torch.nonzero(r).flatten().tolist()) for r in m]

    # ceil(50% n) = 3, 2, 1; ceil(10% n) = 1, 1, 1 (at least one); 100% = all
    assert rows(cm.gate_lowest_k(conf, keep, 50)) == [[1, 2, 3], [0, 3], [0]]
    assert rows(cm.gate_lowest_k(conf, keep, 10)) == [[1], [0], [0]]
    assert torch.equal(cm.gate_lowest_k(conf, keep, 100), keep)
    model, b = model_and_batch()
    crit, d = cmlm(cmlm_kd_gate="lowest-k", cmlm_kd_lowest_k=40.0, **STAGE2)
    sel = crit.terms[0].gate(
        b, [hand_built_pass(model, b, torch.rand(b["target"].shape))]
    )
    n = (b["target"].ne(d.pad()) & b["target"].ne(d.eos())).sum(1)  # [3, 5, 1]
    assert sel.sum(1).tolist() == [math.ceil(0.4 * k) for k in n.tolist()] == [2, 2, 1]


def test_teacher_pass_masks_exactly_the_gated_positions_in_eval_mode_without_grad(
    monkeypatch,
):
    model, b = model_and_batch()
    crit, _ = cmlm(**STAGE2)
    term = crit.terms[0]
    conf = torch.rand(b["target"].shape)
    conf[2] = 0.9  # sentence 2 has nothing gated: it is left out of the teacher pass
    p = hand_built_pass(model, b, conf)
    monkeypatch.setattr(objective_mod, "run_passes", lambda *a, **k: [p])
    calls = record_cmlm_calls(term)
    _, _, logs = crit(model, b)
    sel = term.gate(b, [p])
    u = sel.any(1)
    assert u.tolist() == [True, True, False]
    assert (
        len(calls) == 1
        and not calls[0]["grad"]
        and not calls[0]["training"]
        and term.cmlm.training
    )
    assert torch.equal(calls[0]["rows"], sel[u])
    assert torch.equal(
        calls[0]["tokens"], b["target"][u].masked_fill(sel[u], term.mask_idx)
    )
    assert (
        float(logs["kd_selected_frac"]) == int(sel.sum()) and float(logs["kd_loss"]) > 0
    )


def test_kd_is_zero_and_no_teacher_pass_runs_when_nothing_is_gated():
    model, b = model_and_batch()
    base, _ = objective()
    for continue_cmlm, n_calls in (
        (False, 0),
        (True, 1),
    ):  # with continue: only the CMLM's training pass
        crit, _ = cmlm(
            cmlm_kd_threshold=0.0,
            cmlm_kd_joint_updates=0,
            cmlm_kd_continue_cmlm=continue_cmlm,
            cmlm_kd_cmlm_weight=0.0 if not continue_cmlm else 1.0,
        )
        calls = record_cmlm_calls(crit.terms[0])
        loss, _, logs = crit(model, b)
        assert len(calls) == n_calls and all(c["training"] for c in calls)
        assert float(logs["kd_loss"]) == 0 and float(logs["kd_selected_frac"]) == 0
        if not continue_cmlm:
            assert loss.item() == pytest.approx(base(model, b)[0].item(), rel=1e-6)


def test_the_teacher_receives_no_gradient_from_kd():
    model, b = model_and_batch()
    grads = {}
    for kd in (
        0.0,
        1.0,
    ):  # live teacher, CMLM CE on in stage 2: the CMLM's gradient is its CE's alone
        torch.manual_seed(0)
        crit, _ = cmlm(
            cmlm_kd_joint_updates=0,
            cmlm_kd_weight=kd,
            cmlm_kd_weight_min=0.0,
            cmlm_kd_threshold=1.0,
        )
        loss_and_grads(crit, model, b, seed=5)  # same random CMLM mask in both runs
        grads[kd] = {n: p.grad.clone() for n, p in crit.named_parameters()}
    assert grads[0.0].keys() == grads[1.0].keys() and grads[0.0]
    for n in grads[0.0]:
        torch.testing.assert_close(grads[1.0][n], grads[0.0][n], atol=0, rtol=0)
    crit, _ = cmlm(cmlm_kd_cmlm_weight=0.0, cmlm_kd_threshold=1.0, **STAGE2)  # KD alone
    _, _, logs = loss_and_grads(crit, model, b)
    assert float(logs["kd_loss"]) > 0 and all(p.grad is None for p in crit.parameters())


@pytest.mark.parametrize(
    "terms", ["", "rdrop"]
)  # the plain fused CE, the multi-pass sweep
def test_gate_reads_the_gold_probabilities_the_ce_sweep_left(monkeypatch, terms):
    """The gate makes no second sweep over the logits: it reads the CE's per-row -log p(gold),
    and the loss is the one a separate gold_probs sweep gives."""
    model, b = model_and_batch(dropout=0.3)
    crit, _ = cmlm(terms=terms, rdrop_alpha=1.0, cmlm_kd_threshold=0.2, **STAGE2)
    with (
        monkeypatch.context() as m
    ):  # the reference: every gate probability from its own sweep
        m.setattr(
            objective_mod.Pass, "gold_probs", lambda self, t: gold_probs(self.logits, t)
        )
        want = loss_and_grads(crit, model, b, seed=3)[0]
    monkeypatch.setattr(
        objective_mod,
        "gold_probs",
        lambda *a: pytest.fail("a second gold-probability sweep"),
    )
    got, _, logs = loss_and_grads(crit, model, b, seed=3)
    # the gate chose some tokens, not all
    assert 0 < float(logs["kd_selected_frac"]) < b["ntokens"]
    assert got.item() == want.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_kl_rows_matches_the_reference_value_and_gradient(dtype):
    logits = torch.randn(2, 5, 11).to(dtype).requires_grad_()
    teacher = torch.randn(4, 11)
    # flat positions in any order; row i of teacher is position idx[i]
    idx = torch.tensor([7, 0, 3, 9])
    kl = kl_rows_from_logits(logits, teacher, idx, chunk=3)
    (2.0 * kl).backward()
    ref_logits = logits.detach().float().requires_grad_()
    rows = log_probs(ref_logits).view(-1, 11)[idx]
    ref = kd_kl(rows, log_probs(teacher), torch.zeros(4, dtype=torch.bool))
    (2.0 * ref).backward()
    tol = (
        dict(rtol=1e-5, atol=1e-6)
        if dtype == torch.float32
        else dict(rtol=2e-2, atol=2e-2)
    )
    assert kl.dtype == torch.float32 and kl.item() == pytest.approx(
        ref.item(), rel=tol["rtol"]
    )
    assert logits.grad.dtype == dtype
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad, **tol)
    assert not logits.grad.view(-1, 11)[
        [1, 2, 4, 5, 6, 8]
    ].any()  # unselected rows: no gradient


@pytest.mark.parametrize(
    "schedule,start,mid,end",
    [
        ("constant", 1.0, 1.0, 1.0),
        ("linear", 1.0, 0.55, 0.1),  # 1 + (0.1 - 1) r
        ("cosine", 1.0, 0.55, 0.1),  # 0.1 + 0.45 (1 + cos(pi r)): cos(pi/2) = 0
        ("exponential", 1.0, 0.1**0.5, 0.1),  # 1 * 0.1^r
    ],
)
def test_annealing_schedules_at_start_middle_and_end(schedule, start, mid, end):
    for step, want in (
        (0, start),
        (10, mid),
        (20, end),
        (35, end),
    ):  # S = 20, clamped after it
        assert cm.anneal(schedule, 1.0, 0.1, step, 20) == pytest.approx(want, rel=1e-12)
    crit, _ = cmlm(
        cmlm_kd_anneal=schedule,
        cmlm_kd_joint_updates=5,
        cmlm_kd_anneal_updates=20,
        cmlm_kd_combine="interpolate",
    )
    term = crit.terms[0]
    assert term.kd_weight(4) == 0.0  # stage 1
    for n, want in ((5, start), (15, mid), (25, end)):
        crit.set_num_updates(n)
        assert term.kd_weight(n) == pytest.approx(
            want
        ) and term.ce_scale == pytest.approx(1 - want)
    with pytest.raises(ValueError, match="unknown schedule"):
        cm.anneal("step", 1.0, 0.1, 0, 10)


@pytest.mark.parametrize("dropout,num_updates", [(0.0, 0), (0.3, 0), (0.3, 80)])
def test_kd_weight_zero_and_cmlm_weight_zero_is_label_smoothed_ce(dropout, num_updates):
    model, b = model_and_batch(dropout=dropout)
    base, _ = objective()
    crit, _ = cmlm(cmlm_kd_weight=0.0, cmlm_kd_cmlm_weight=0.0, dropout=dropout)
    crit.set_num_updates(num_updates)
    l0, g0, _ = loss_and_grads(base, model, b, seed=3)
    l1, g1, logs = loss_and_grads(crit, model, b, seed=3)
    assert l1.item() == pytest.approx(l0.item(), rel=1e-6)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-7, rtol=1e-5)
    assert float(logs["kd_loss"]) == 0 and float(logs["cmlm_nll"]) == 0


def expected_stage2(crit, model, b, passes, lam, norm):
    """CE and lam * KD computed independently of the term (teacher: full CMLM pass, eval)."""
    term, d = crit.terms[0], crit.terms[0].tgt_dict
    v, target = len(d), b["target"]
    ce = sum(
        label_smoothed_nll_loss(p.lprobs.view(-1, v), target.view(-1), 0.1, d.pad())[0]
        for p in passes
    )
    keep = target.ne(d.pad()) & target.ne(d.eos())
    conf = sum(
        p.lprobs.gather(-1, target[..., None]).squeeze(-1).exp() for p in passes
    ) / len(passes)
    sel = keep & (conf < 0.5)
    term.cmlm.eval()
    with torch.no_grad():
        q = log_probs(
            term.cmlm(
                model.decoder,
                target.masked_fill(sel, term.mask_idx),
                passes[0].extra["encoder_out"],
            )
        )
    term.cmlm.train()
    kd = sum(
        kd_kl(p.lprobs[sel], q[sel], torch.zeros(int(sel.sum()), dtype=torch.bool))
        for p in passes
    ) / len(passes)
    if norm == "gated":
        kd = kd / sel.sum() * b["ntokens"]
    return ce, lam * kd, sel


@pytest.mark.parametrize("combine,norm", [("add", "gated"), ("interpolate", "ntokens")])
def test_stage2_loss_is_ce_plus_annealed_kd_on_gated_tokens(monkeypatch, combine, norm):
    model, b = model_and_batch(dropout=0.0)
    crit, _ = cmlm(
        cmlm_kd_joint_updates=10,
        cmlm_kd_anneal_updates=20,
        cmlm_kd_continue_cmlm=False,
        cmlm_kd_combine=combine,
        cmlm_kd_norm=norm,
    )
    passes = run_passes(model, b["net_input"], 1, "concat")
    monkeypatch.setattr(objective_mod, "run_passes", lambda *a, **k: passes)
    crit.set_num_updates(20)  # r = 10 / 20: linear lam = 0.55
    loss, _, logs = crit(model, b)
    ce, kd, sel = expected_stage2(crit, model, b, passes, 0.55, norm)
    scale = 0.45 if combine == "interpolate" else 1.0
    assert 0 < int(sel.sum()) < int(b["ntokens"])
    assert loss.item() == pytest.approx((scale * ce + kd).item(), rel=1e-5)
    assert float(logs["kd_loss"]) == pytest.approx(kd.item() / 0.55, rel=1e-5)
    assert float(logs["kd_lambda"]) == pytest.approx(0.55 * b["ntokens"])
    crit.set_num_updates(9)  # stage 1: CE + CMLM CE, no KD
    loss1, _, logs1 = crit(model, b)
    assert (
        float(logs1["kd_loss"]) == 0
        and float(logs1["cmlm_nll"]) > 0
        and loss1.item() > ce.item()
    )


def test_gate_none_distils_every_token_in_disjoint_mask_groups():
    model, b = model_and_batch()
    crit, d = cmlm(cmlm_kd_gate="none", **STAGE2)
    term = crit.terms[0]
    assert term.cfg.mask_groups == 2  # the default for gate none
    calls = record_cmlm_calls(term)
    _, _, logs = crit(model, b)
    keep = b["target"].ne(d.pad()) & b["target"].ne(d.eos())
    assert len(calls) == 2 and float(logs["kd_selected_frac"]) == int(keep.sum())
    for c in calls:  # each pass masks exactly the positions it predicts
        assert torch.equal(c["tokens"].eq(term.mask_idx), c["rows"])
    assert sum(int(c["rows"].sum()) for c in calls) == int(keep.sum())


def test_finite_gradients_reach_every_parameter_sample_unchanged_and_eval_is_plain_ce():
    model, b = model_and_batch(dropout=0.3)
    before = {k: v.clone() for k, v in b["net_input"].items()}
    target = b["target"].clone()
    for n in (
        0,
        60,
    ):  # stage 1 and stage 2 (default: joint updates = max_update / 2 = 50)
        crit, _ = cmlm(dropout=0.3)
        crit.set_num_updates(n)
        model.zero_grad()
        loss, ss, logs = crit(model, b)
        assert math.isfinite(loss.item()) and ss == b["ntokens"]
        assert {
            "loss",
            "nll_loss",
            "cmlm_nll",
            "kd_loss",
            "kd_selected_frac",
            "kd_lambda",
        } <= set(logs)
        loss.backward()
        for p in [*model.parameters(), *crit.parameters()]:
            assert p.grad is not None and torch.isfinite(p.grad).all()
    assert all(
        torch.equal(before[k], b["net_input"][k]) for k in before
    ) and torch.equal(target, b["target"])
    assert_eval_is_label_smoothed_ce(crit, model, b)


def test_reduce_metrics_over_two_workers_equals_the_whole_batch():
    model, b = model_and_batch(dropout=0.0)
    # sums: additive over sentences
    crit, d = cmlm(cmlm_kd_norm="ntokens", cmlm_kd_threshold=0.9, **STAGE2)
    whole = Objective.reduce_metrics([crit(model, b)[2]])
    parts = [
        crit(model, ragged_batch(d, select=[0, 1]))[2],
        crit(model, ragged_batch(d, select=[2]))[2],
    ]
    split = Objective.reduce_metrics(parts)
    assert (
        set(split)
        == set(whole)
        >= {"kd_loss", "kd_selected_frac", "kd_lambda", "cmlm_nll"}
    )
    assert whole["kd_loss"] > 0 and whole["kd_lambda"] == pytest.approx(1.0)
    for k in whole:
        assert split[k] == pytest.approx(whole[k], rel=1e-5, abs=1e-7), k


def test_combined_with_rdrop_is_the_sum_of_parts_on_the_same_passes(monkeypatch):
    model, b = model_and_batch(dropout=0.3)
    crit, d = cmlm(
        "cmlm_kd",
        terms="rdrop",
        rdrop_alpha=2.0,
        dropout=0.3,
        cmlm_kd_joint_updates=4,
        cmlm_kd_continue_cmlm=False,
        cmlm_kd_anneal="constant",
        cmlm_kd_weight=0.5,
        cmlm_kd_weight_min=0.1,
    )
    torch.manual_seed(4)
    passes = run_passes(model, b["net_input"], 2, "concat")
    monkeypatch.setattr(objective_mod, "run_passes", lambda *a, **k: passes)
    crit.set_num_updates(4)
    loss, _, logs = crit(model, b)
    # confidence: mean of the passes
    ce, kd, _ = expected_stage2(crit, model, b, passes, 0.5, "gated")
    kl = symmetric_kl(passes[0].lprobs, passes[1].lprobs, b["target"].eq(d.pad()))
    assert loss.item() == pytest.approx((ce + 2.0 * kl + kd).item(), rel=1e-5)
    assert float(logs["rdrop_kl"]) > 0 and float(logs["kd_loss"]) > 0


def test_criterion_name_equals_terms_flag():
    model, b = model_and_batch(dropout=0.3)
    losses = []
    for crit_name, terms in (
        ("cmlm_kd", ""),
        ("label_smoothed_cross_entropy", "cmlm_kd"),
    ):
        torch.manual_seed(0)  # same CMLM initialisation
        crit, _ = cmlm(crit_name, terms=terms, dropout=0.3)
        crit.set_num_updates(60)
        torch.manual_seed(7)
        losses.append(crit(model, b)[0].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


@pytest.mark.parametrize("num_updates", [0, 60])
def test_bf16_autocast_is_finite_and_close_to_fp32(num_updates):
    model, b = model_and_batch(dropout=0.0)
    crit, _ = cmlm(cmlm_kd_threshold=1.0)
    crit.set_num_updates(num_updates)
    torch.manual_seed(1)
    ref = crit(model, b)[0]
    torch.manual_seed(1)  # the same random CMLM mask
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = crit(model, b)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.item(), rel=3e-2)
    loss.backward()
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32
        for p in [*model.parameters(), *crit.parameters()]
    )

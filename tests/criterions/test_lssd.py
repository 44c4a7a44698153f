"""LSSD term: teacher bookkeeping on scripted per-language validation losses, gates on
hand-built probabilities, frozen teachers, the loss by hand, w = 0, mixed batches,
restart, bf16, worker reduction and the combination with R-Drop."""

import argparse
import math

import numpy as np
import pytest
import torch

from nmt_sd.criterions import CRITERIONS
from nmt_sd.criterions.lssd import gate_weights
from nmt_sd.criterions.lssd_config import key_side
from nmt_sd.criterions.lssd_teachers import TeacherBook
from nmt_sd.criterions.objective import Objective
from nmt_sd.errors import NmtSdError
from tests.conftest import ragged_batch, tiny_args, tiny_dict
from tests.criterions.helpers import loss_and_grads, model_and_batch, objective

M2O = [("cs", "en"), ("de", "en"), ("fr", "en")]
LSSD_DEFAULTS = dict(
    lssd_weight=1.0,
    lssd_gate="whole",
    lssd_gate_level="token",
    lssd_selective_low=0.2,
    lssd_warmup_epochs=1,
    lssd_interpolate=False,
    lssd_language_aware=False,
    lssd_key="auto",
    lssd_teacher_dtype="auto",
    save_dir=None,
)


class MultiTask:
    """What the term reads from ``multilingual_translation``: pairs, languages, dictionary."""

    def __init__(self, d, pairs):
        self.src_dict = self.tgt_dict = d
        self.lang_pairs, self.langs = pairs, sorted({x for p in pairs for x in p})

    def lang_vocab_mask(
        self, lang
    ):  # the first 12 symbols (incl. specials) are "this language's"
        mask = torch.zeros(len(self.tgt_dict), dtype=torch.bool)
        mask[:12] = True
        return mask


def lssd(pairs=M2O, terms="", **over):
    d = tiny_dict()
    a = dict(
        vars(tiny_args()),
        criterion="lssd",
        terms=terms,
        rdrop_alpha=0.0,
        rdrop_ce="sum",
        rdrop_passes="concat",
        **LSSD_DEFAULTS,
    )
    a.update(over)
    return CRITERIONS.get("lssd")(argparse.Namespace(**a), MultiTask(d, pairs))


def term(crit):
    return next(t for t in crit.terms if type(t).__name__ == "LSSDTerm")


def batch(lang_pair=("de", "en"), pairs=M2O, select=None):
    """The ragged B=3 batch, tagged with one pair's language ids."""
    b = ragged_batch(tiny_dict(), select=select)
    langs = sorted({x for p in pairs for x in p})
    n = b["nsentences"]
    b["src_lang_id"] = torch.full((n,), langs.index(lang_pair[0]))
    b["tgt_lang_id"] = torch.full((n,), langs.index(lang_pair[1]))
    return b


def validate(crit, model, epoch, losses):
    """End-of-epoch validation with per-pair losses {"de": 4.0, ...} (keyed by source)."""
    per_pair = {f"{lang}-en": {"loss": v} for lang, v in losses.items()}
    return crit.on_validation_end(epoch, per_pair, model, True)


def mark(model, epoch):
    """Make the model recognisably 'the model of epoch e'."""
    with torch.no_grad():
        model.decoder.output_projection.weight.fill_(0.01 * epoch)


def distilled(crit, model, epoch):
    crit.on_epoch_begin(epoch, model)
    return term(crit).distilled_langs(epoch)


def ready(crit, model):
    """Every language's teacher set at epoch 1; epoch 3 distils them all."""
    validate(crit, model, 1, {"cs": 5.0, "de": 5.0, "fr": 5.0})
    crit.on_epoch_begin(3, model)
    return crit


# -- bookkeeping ---------------------------------------------------------------------
SCRIPT = [  # epoch, per-language dev loss, teachers replaced, languages distilled in the NEXT epoch
    (
        1,
        {"cs": 5.0, "de": 5.0, "fr": 5.0},
        ["cs", "de", "fr"],
        [],
    ),  # epoch 2: never (2 - 1 = 1)
    (
        2,
        {"cs": 5.2, "de": 4.0, "fr": 4.5},
        ["de", "fr"],
        ["cs"],
    ),  # epoch 3: cs (3 - 1 = 2 > 1)
    (3, {"cs": 5.1, "de": 3.5, "fr": 4.6}, ["de"], ["cs", "fr"]),
    (4, {"cs": 4.9, "de": 3.6, "fr": 4.4}, ["cs", "fr"], ["de"]),
    (
        5,
        {"cs": 4.9, "de": 3.7, "fr": 4.5},
        [],
        ["cs", "de", "fr"],
    ),  # ties do not update
]


def test_bookkeeping_on_scripted_losses_updates_distils_and_shares_copies(tmp_path):
    crit = lssd(save_dir=str(tmp_path))
    t = term(crit)
    model, _ = model_and_batch()
    assert distilled(crit, model, 1) == [] and distilled(crit, model, 2) == []
    for epoch, losses, updated, next_distilled in SCRIPT:
        mark(model, epoch)
        logs = validate(crit, model, epoch, losses)
        assert logs["lssd_updated"] == (",".join(updated) or "-"), epoch
        assert distilled(crit, model, epoch + 1) == next_distilled, epoch
    assert t.book.best_epoch == {"cs": 4, "de": 3, "fr": 4}
    assert t.book.best_loss == {"cs": 4.9, "de": 3.5, "fr": 4.4}
    # cs and fr improved in the same epoch: one shared copy; epochs 1 and 2 are released
    assert sorted(t.copies) == [3, 4] and logs["lssd_teacher_copies"] == 2
    assert t.copies[4].decoder.output_projection.weight.unique().tolist() == [
        pytest.approx(0.04)
    ]
    assert logs["lssd_teacher_mb"] > 0 and logs["lssd_best_epoch_de"] == 3
    # files beside the checkpoint: the current teachers, plus those the last checkpoint references
    assert sorted(p.name for p in tmp_path.glob("lssd_teacher*.pt")) == [
        "lssd_teacher3.pt",
        "lssd_teacher4.pt",
    ]


def test_mid_epoch_validation_and_warmup():
    crit = lssd(lssd_warmup_epochs=3)
    model, _ = model_and_batch()
    # mid-epoch: nothing
    assert crit.on_validation_end(1, {"de-en": {"loss": 1.0}}, model, False) == {}
    assert term(crit).book.best_epoch == {}
    validate(crit, model, 1, {"cs": 5.0, "de": 5.0, "fr": 5.0})
    assert distilled(crit, model, 3) == [] and distilled(crit, model, 4) == [
        "cs",
        "de",
        "fr",
    ]


def test_language_keys_follow_the_direction_and_many_to_many_averages_over_sources():
    assert key_side(M2O, "auto") == "src"
    assert key_side([("en", "de"), ("en", "fr")], "auto") == "tgt"
    m2m = [("de", "en"), ("fr", "en"), ("en", "de"), ("fr", "de")]
    assert key_side(m2m, "auto") == "tgt" and key_side(m2m, "src") == "src"
    crit = lssd(pairs=m2m)
    per_pair = {
        "de-en": {"loss": 2.0},
        "fr-en": {"loss": 4.0},
        "en-de": {"loss": 5.0},
        "fr-de": {"loss": 7.0},
    }
    assert term(crit).language_losses(per_pair) == {"en": 3.0, "de": 6.0}


def test_teacher_book_state_round_trip():
    book = TeacherBook(warmup_epochs=1)
    book.update(1, {"de": 2.0})
    other = TeacherBook(1)
    other.load_state_dict(book.state_dict())
    assert (
        other.best_epoch == {"de": 1}
        and other.distils("de", 3)
        and not other.distils("de", 2)
    )


# -- gates -------------------------------------------------------------------------------
P_S = torch.tensor([[0.5, 0.2, 0.9, 0.3], [0.1, 0.4, 0.6, 0.6]])
P_T = torch.tensor([[0.6, 0.05, 0.9, 0.9], [0.3, 0.2, 0.5, 0.5]])
PAD = torch.tensor([[False, False, False, True], [False, False, False, False]])


def test_gate_weights_on_hand_built_probabilities():
    torch.testing.assert_close(gate_weights(P_S, P_T, PAD, "whole"), (~PAD).float())
    # selective: 1 where the teacher is strictly better on the gold token, else 0.2 (ties: 0.2)
    sel = gate_weights(P_S, P_T, PAD, "selective", "token")
    torch.testing.assert_close(
        sel, torch.tensor([[1.0, 0.2, 0.2, 0.0], [1.0, 0.2, 0.2, 0.2]])
    )
    # sentence sums: row 0 student 1.6 vs teacher 1.55 (pad excluded) -> 0.2; row 1 1.7 vs 1.5 -> 0.2
    sent = gate_weights(P_S, P_T, PAD, "selective", "sentence", low=0.2)
    torch.testing.assert_close(sent, torch.tensor([[0.2, 0.2, 0.2, 0.0], [0.2] * 4]))
    # now the teacher wins both rows
    sent = gate_weights(P_S, P_T * 1.5, PAD, "selective", "sentence")
    torch.testing.assert_close(sent, torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0] * 4]))
    # adaptive: min(p_T / p_S, 1) per token; pads 0
    ada = gate_weights(P_S, P_T, PAD, "adaptive", "token")
    torch.testing.assert_close(
        ada, torch.tensor([[1.0, 0.25, 1.0, 0.0], [1.0, 0.5, 0.5 / 0.6, 0.5 / 0.6]])
    )
    # sentence: ratio of the mean gold probabilities (row 0: (1.55/3)/(1.6/3); row 1: (1.5/4)/(1.7/4))
    ada = gate_weights(P_S, P_T, PAD, "adaptive", "sentence")
    torch.testing.assert_close(
        ada, torch.tensor([[1.55 / 1.6] * 3 + [0.0], [1.5 / 1.7] * 4])
    )
    # p_S underflow: clipped, not inf/nan
    assert (
        gate_weights(
            torch.zeros(1, 1),
            torch.ones(1, 1),
            torch.zeros(1, 1, dtype=torch.bool),
            "adaptive",
        ).item()
        == 1.0
    )


# -- the loss ------------------------------------------------------------------------------
def hand_loss(
    model, teacher, b, w, gate="whole", interpolate=False, mask=None, eps=0.1
):
    """fairseq LS-CE and the gated soft CE, token by token in float64."""
    with torch.no_grad():
        zs = model(**b["net_input"])[0].double().numpy()
        zt = teacher(**b["net_input"])[0].double().numpy()
    tgt, pad, vocab = b["target"].numpy(), 1, zs.shape[-1]
    ce = kd = 0.0
    for i, j in zip(*np.nonzero(tgt != pad)):
        ls = zs[i, j] - np.log(np.exp(zs[i, j]).sum())
        t = zt[i, j] if mask is None else np.where(mask, zt[i, j], -np.inf)
        lt = t - np.log(np.exp(t).sum())
        ce += (1 - eps - eps / (vocab - 1)) * -ls[tgt[i, j]] + eps / (
            vocab - 1
        ) * -ls.sum()
        g = 1.0 if gate == "whole" else min(np.exp(lt[tgt[i, j]] - ls[tgt[i, j]]), 1.0)
        kd += g * -(np.exp(lt) * ls).sum()
    return (1 - w) * ce + w * kd if interpolate else (ce + w * kd) / 2, ce, kd


@pytest.mark.parametrize(
    "gate,interpolate", [("whole", False), ("adaptive", False), ("whole", True)]
)
def test_distilled_batch_loss_matches_hand_computation(gate, interpolate):
    crit = lssd(lssd_weight=0.7, lssd_gate=gate, lssd_interpolate=interpolate)
    model, _ = model_and_batch()
    ready(crit, model)
    with torch.no_grad():
        # the student moves away from its teacher
        model.decoder.output_projection.weight.mul_(1.5)
    b = batch()
    loss, _, logs = crit(model, b)
    want, _, kd = hand_loss(model, term(crit).copies[1], b, 0.7, gate, interpolate)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert float(logs["lssd_kd"]) == pytest.approx(kd, rel=1e-5) and float(
        logs["lssd_kd_de"]
    ) == float(logs["lssd_kd"])
    assert logs["lssd_distilled"] == b["ntokens"] and logs["lssd_kd_fr"] == 0.0


def test_language_aware_restricts_the_teacher_to_the_target_vocabulary():
    crit = lssd(lssd_language_aware=True)
    model, _ = model_and_batch()
    ready(crit, model)
    b = batch()
    mask = np.arange(25) < 12
    want, _, _ = hand_loss(model, term(crit).copies[1], b, 1.0, mask=mask)
    assert crit(model, b)[0].item() == pytest.approx(want, rel=1e-5)


def test_weight_zero_equals_label_smoothed_ce_even_when_distilling():
    model, _ = model_and_batch(dropout=0.0)
    crit = ready(lssd(lssd_weight=0.0), model)
    l0, g0, _ = loss_and_grads(objective()[0], model, batch())
    l1, g1, logs = loss_and_grads(crit, model, batch())
    assert (
        l1.item() == pytest.approx(l0.item(), rel=1e-6) and logs["lssd_distilled"] == 0
    )
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n])


def test_undistilled_batches_are_plain_ce_and_mixed_batches_are_refused():
    model, _ = model_and_batch()
    crit = lssd()
    validate(crit, model, 1, {"cs": 5.0, "de": 5.0, "fr": 5.0})
    crit.on_epoch_begin(2, model)  # nothing distilled in epoch 2
    assert crit(model, batch())[0].item() == pytest.approx(
        objective()[0](model, batch())[0].item(), rel=1e-6
    )
    mixed = batch()
    mixed["src_lang_id"] = torch.tensor([0, 1, 1])
    with pytest.raises(
        NmtSdError, match="lssd: a batch mixes src languages cs and de"
    ) as e:
        crit(model, mixed)
    assert "\n" not in str(e.value)


def test_teachers_are_frozen_in_eval_mode_without_gradient_and_not_saved():
    model, _ = model_and_batch(dropout=0.3)
    crit = ready(lssd(), model)
    teacher = term(crit).copies[1]
    # bookkeeping only, no weights
    assert set(crit.state_dict()) == {"terms.0._extra_state"}
    assert not {id(p) for p in teacher.parameters()} & {
        id(p) for p in crit.parameters()
    }
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model.train()
    crit.train()
    b = batch()
    first = term(crit).teacher_logits(model, b)
    loss, _, _ = crit(model, b)
    loss.backward()
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    torch.testing.assert_close(term(crit).teacher_logits(model, b), first)  # no dropout
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_invariants_sample_gradients_and_worker_reduction():
    model, _ = model_and_batch(dropout=0.3)
    crit = ready(lssd(lssd_gate="selective"), model)
    b = batch()
    before = {k: v.clone() for k, v in b["net_input"].items()}
    loss, _, _ = crit(model, b)
    assert math.isfinite(loss.item())
    loss.backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()
    )
    assert all(torch.equal(before[k], b["net_input"][k]) for k in before)
    model.eval()  # deterministic for the split comparison
    whole = Objective.reduce_metrics([crit(model, batch())[2]])
    split = Objective.reduce_metrics(
        [crit(model, batch(select=s))[2] for s in ([0, 1], [2])]
    )
    for key in ("loss", "nll_loss", "lssd_kd", "lssd_kd_de", "lssd_distilled"):
        assert split[key] == pytest.approx(whole[key], rel=1e-5), key


def test_combines_with_rdrop():
    """Dropout 0: R-Drop's KL is 0 and its two CEs are equal, so the combination is
    (2 CE) / 2 + w KD / 2 on a distilled batch."""
    model, _ = model_and_batch(dropout=0.0)
    crit = ready(lssd(terms="rdrop", rdrop_alpha=5.0, lssd_weight=0.6), model)
    loss, _, logs = crit(model, batch())
    _, ce, kd = hand_loss(model, term(crit).copies[1], batch(), 0.6)
    assert float(logs["rdrop_kl"]) == pytest.approx(0.0, abs=1e-4)
    assert loss.item() == pytest.approx(ce + 0.6 * kd / 2, rel=1e-5)


def test_runs_under_bf16_autocast_with_bf16_teachers():
    model, _ = model_and_batch()
    crit = ready(
        lssd(bf16=True, lssd_gate="adaptive", lssd_gate_level="sentence"), model
    )
    teacher = term(crit).copies[1]
    assert next(teacher.parameters()).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, logs = crit(model, batch())
    loss.backward()
    assert math.isfinite(loss.item()) and float(logs["lssd_kd"]) > 0


# -- restart ---------------------------------------------------------------------------------
def test_restart_after_epoch_k_rebuilds_teachers_and_decisions(tmp_path):
    model, _ = model_and_batch()
    a = lssd(save_dir=str(tmp_path))
    for epoch, losses, _, _ in SCRIPT[:3]:  # "killed" after epoch 3
        mark(model, epoch)
        validate(a, model, epoch, losses)
    state = tmp_path / "criterion.pt"
    torch.save(a.state_dict(), state)
    b = lssd(save_dir=str(tmp_path))
    b.load_state_dict(torch.load(state, weights_only=True))
    # the resumed model is a different one: teachers must come from the files
    mark(model, 99)
    assert distilled(b, model, 4) == distilled(a, model, 4) == ["cs", "fr"]
    assert sorted(term(b).copies) == sorted(term(a).copies) == [1, 2, 3]
    for e in (1, 2, 3):
        for k, v in term(a).copies[e].state_dict().items():
            assert torch.equal(term(b).copies[e].state_dict()[k], v), (e, k)
    for epoch, losses, updated, next_distilled in SCRIPT[
        3:
    ]:  # both continue identically
        for crit in (a, b):
            mark(model, epoch)
            assert validate(crit, model, epoch, losses)["lssd_updated"] == (
                ",".join(updated) or "-"
            )
            assert distilled(crit, model, epoch + 1) == next_distilled


def test_restart_falls_back_to_epoch_checkpoints_and_names_a_missing_teacher(tmp_path):
    model, _ = model_and_batch()
    a = lssd(save_dir=str(tmp_path))
    mark(model, 1)
    validate(a, model, 1, {"cs": 5.0, "de": 5.0, "fr": 5.0})
    # same layout: "model", "args"
    (tmp_path / "lssd_teacher1.pt").rename(tmp_path / "checkpoint1.pt")
    b = lssd(save_dir=str(tmp_path))
    b.load_state_dict(a.state_dict())
    b.on_epoch_begin(3, model)
    assert term(b).copies[1].decoder.output_projection.weight.unique().tolist() == [
        pytest.approx(0.01)
    ]
    (tmp_path / "checkpoint1.pt").unlink()
    c = lssd(save_dir=str(tmp_path))
    c.load_state_dict(a.state_dict())
    with pytest.raises(
        NmtSdError,
        match=r"teacher of cs,de,fr \(epoch 1\) is gone: .*lssd_teacher1.pt not found",
    ):
        c.on_epoch_begin(3, model)


def test_flag_errors_are_one_line():
    with pytest.raises(NmtSdError, match="--lssd-weight must be >= 0"):
        lssd(lssd_weight=-1.0)
    with pytest.raises(NmtSdError, match="<= 1 with --lssd-interpolate"):
        lssd(lssd_weight=2.0, lssd_interpolate=True)
    with pytest.raises(NmtSdError, match="remove --disable-validation"):
        lssd(disable_validation=True)

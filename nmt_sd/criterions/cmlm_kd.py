"""CBBGCA (Zhou, Meng, Zhou, Zhang, Wang, Su: "Confidence Based Bidirectional Global Context
Aware Training Framework for Neural Machine Translation", ACL 2022, arXiv 2202.13663).

L = c(s) CE_nmt + w_cmlm CE_cmlm(M) + lam(s) sum_{t in U} KL(sg[q_t] || p_t),  U = {t : sg[p_t(y_t)] < tau}

(sums over tokens; c(s) = 1, or 1 - lam(s) with ``--cmlm-kd-combine interpolate``). No official
code exists: this is the nmt-sd design of ../shared/docs/methods.md 3(h), documented in docs/cmlm_kd.md.
A training-only CMLM decoder (owned by this term, so it is saved under "criterion" and the
"model" stays a plain Transformer) attends to the shared encoder without a causal mask,
borrowing the decoder's target embeddings and output projection when they are shared.
Its input is ``target`` with a Mask-Predict subset M replaced by ``<mask>`` (|M| uniform in
1..n, never </s>), and position t predicts target[t], aligned with the NMT decoder.
Stage 1 (update < ``--cmlm-kd-joint-updates``): joint training, lam = 0. Stage 2: the gate U
picks the tokens whose detached NMT gold probability is low (``threshold`` / ``lowest-k``
per sentence / ``none``); the teacher CMLM (``live``: this decoder on the pass's encoder
output; ``frozen``: the stage-1 snapshot or ``--cmlm-kd-teacher-path``, held outside the
module tree) re-predicts exactly U masked, in eval mode under no_grad, only for sentences
with a gated token. lam(s) anneals from ``--cmlm-kd-weight`` to ``--cmlm-kd-weight-min``.
Every choice is a function of the update number, so a resumed run is the same run.
"""

import argparse
import logging

import torch

from nmt_sd.criterions.cmlm_kd_config import add_args, anneal, check_config
from nmt_sd.criterions.fused import fused_label_smoothed_nll_loss, kl_rows_from_logits
from nmt_sd.criterions.objective import TERMS, Term, register_preset, unwrap
from nmt_sd.models.cmlm import (
    CMLMDecoder,
    build_frozen_teacher,
    frozen_stage1_teacher,
    predict_masked,
    random_cmlm_mask,
    rank_within_rows,
)
from nmt_sd.models.transformer import EncoderOut
from nmt_sd.training.checkpoint import plain_args

logger = logging.getLogger(__name__)


# -- pure functions: the gates (the KD weight's annealing is cmlm_kd_config.anneal) ------
def gate_threshold(conf: torch.Tensor, keep: torch.Tensor, tau: float) -> torch.Tensor:
    """(B, T) bool: the kept tokens (non-pad, non-EOS) with confidence < tau."""
    return keep & (conf < tau)


def gate_lowest_k(
    conf: torch.Tensor, keep: torch.Tensor, k_percent: float
) -> torch.Tensor:
    """(B, T) bool: per sentence the ceil(k% n) lowest-confidence kept tokens (at least one
    when n > 0; ties broken by position)."""
    n = keep.sum(1)  # (B,)
    # exact for integer k%
    k = torch.ceil(n.double() * k_percent / 100.0).long().clamp(min=1)
    return keep & (rank_within_rows(conf, keep) < torch.minimum(k, n)[:, None])


def split_groups(selected: torch.Tensor, groups: int) -> list:
    """``selected`` (B, T) split into ``groups`` random disjoint masks of near-equal size per
    sentence (round robin over a random order); empty masks are dropped."""
    if groups == 1:
        return [selected]
    noise = torch.rand(selected.shape, device=selected.device)
    rank = rank_within_rows(noise, selected) % groups  # round robin over a random order
    masks = [selected & rank.eq(g) for g in range(groups)]
    return [m for m in masks if m.any()]


# -- the term -----------------------------------------------------------------------------
@TERMS.register("cmlm_kd")
class CMLMKDTerm(Term):
    def __init__(self, args, cfg: argparse.Namespace, task, teacher=None):
        super().__init__()
        d = task.tgt_dict
        self.cfg, self.eps, self.num_updates = cfg, args.label_smoothing, 0
        self.padding_idx, self.eos_idx, self.mask_idx = d.pad(), d.eos(), cfg.mask_idx
        self.src_dict, self.tgt_dict = task.src_dict, d
        shared = bool(
            args.share_decoder_input_output_embed or args.share_all_embeddings
        )
        self.cmlm = CMLMDecoder(args, cfg.layers, d, shared)
        object.__setattr__(self, "teacher", teacher)  # plain attribute: never saved
        # the stage-1 snapshot's architecture
        self.saved_args = plain_args(args)

    add_args = staticmethod(add_args)  # the --cmlm-kd-* flags: cmlm_kd_config.py

    @classmethod
    def from_args(cls, args, task) -> "CMLMKDTerm":
        cfg = check_config(args, task)
        teacher = None
        if cfg.teacher == "frozen" and cfg.teacher_path:
            from nmt_sd.training.checkpoint import load_checkpoint_file

            state, flag = (
                load_checkpoint_file(cfg.teacher_path),
                "--cmlm-kd-teacher-path",
            )
            dicts = (task.src_dict, task.tgt_dict)
            teacher = build_frozen_teacher(state, cfg.teacher_path, flag, *dicts)
        return cls(args, cfg, task, teacher)

    # -- schedule
    def set_num_updates(self, num_updates: int) -> None:
        self.num_updates = num_updates

    def kd_weight(self, num_updates: int) -> float:
        """lam(s): 0 in stage 1 or with KD off, then annealed over the stage-2 updates."""
        c = self.cfg
        if c.weight == 0 or num_updates < c.joint_updates:
            return 0.0
        return anneal(
            c.anneal,
            c.weight,
            c.weight_min,
            num_updates - c.joint_updates,
            c.anneal_updates,
        )

    @property
    def ce_scale(self) -> float:  # the NMT CE's multiplier: 1 - lam when interpolating
        return (
            1.0 - self.kd_weight(self.num_updates)
            if self.cfg.combine == "interpolate"
            else 1.0
        )

    # -- stage 1 (and stage 2 with --cmlm-kd-continue-cmlm): the CMLM's own CE
    def cmlm_loss(self, model, sample, enc: EncoderOut):
        """(label-smoothed CE, NLL) summed over a random Mask-Predict subset of the target."""
        target = sample["target"]  # (B, T)
        masked = random_cmlm_mask(target, self.padding_idx, self.eos_idx)  # (B, T)
        # (N, V)
        logits = self.cmlm(
            unwrap(model).decoder,
            target.masked_fill(masked, self.mask_idx),
            enc,
            masked,
        )
        return fused_label_smoothed_nll_loss(
            logits, target[masked], self.eps, self.padding_idx
        )

    # -- stage 2: gate, teacher, KD
    def gate(self, sample, passes) -> torch.Tensor:
        """(B, T) bool: the tokens to distil (never pad or EOS)."""
        target = sample["target"]
        keep = target.ne(self.padding_idx) & target.ne(self.eos_idx)  # (B, T)
        if self.cfg.gate == "none":
            return keep
        # (B, T), detached
        conf = sum(p.gold_probs(target) for p in passes) / len(passes)
        if self.cfg.gate == "threshold":
            return gate_threshold(conf, keep, self.cfg.threshold)
        return gate_lowest_k(conf, keep, self.cfg.lowest_k)

    @torch.no_grad()
    def teacher_logits(
        self, model, sample, passes, selected: torch.Tensor, groups: list
    ) -> torch.Tensor:
        """The teacher's (N, V) logits at the selected positions, group after group, each
        group masked exactly; only sentences with a gated token run."""
        u = selected.any(1)  # (B,)
        if self.cfg.teacher == "live":
            decoder, cmlm, e = (
                unwrap(model).decoder,
                self.cmlm,
                passes[0].extra["encoder_out"],
            )
            # the student pass's encoder output
            enc = EncoderOut(e.out[u], e.padding_mask[u])
        else:
            t_model, cmlm = self.teacher
            if next(t_model.parameters()).device != selected.device:
                t_model.to(selected.device), cmlm.to(selected.device)
            net = sample["net_input"]
            enc, decoder = (
                t_model.encoder(net["src_tokens"][u], net["src_lengths"][u]),
                t_model.decoder,
            )
        return predict_masked(
            cmlm,
            decoder,
            sample["target"][u],
            enc,
            [g[u] for g in groups],
            self.mask_idx,
        )

    def kd_loss(self, model, sample, passes):
        """(sum over gated tokens of KL(q || p), averaged over the passes; gated count)."""
        selected = self.gate(sample, passes)
        n_sel = int(selected.sum())
        if n_sel == 0:  # nothing to distil: no teacher pass
            return passes[0].logits.new_zeros((), dtype=torch.float32), 0
        groups = split_groups(selected, self.cfg.mask_groups)
        teacher = self.teacher_logits(model, sample, passes, selected, groups)  # (N, V)
        # (N,) flat positions, same order
        idx = torch.cat([g.reshape(-1).nonzero().squeeze(1) for g in groups])
        kd = sum(kl_rows_from_logits(p.logits, teacher, idx) for p in passes)
        return kd / len(passes), n_sel

    def frozen_teacher(self, model, num_updates: int):
        """The frozen teacher, built on first use in stage 2 (``frozen_stage1_teacher``)."""
        if self.teacher is None:
            teacher = frozen_stage1_teacher(
                unwrap(model),
                self.cmlm,
                self.saved_args,
                num_updates,
                self.cfg,
                self.src_dict,
                self.tgt_dict,
            )
            object.__setattr__(self, "teacher", teacher)
        return self.teacher

    def forward(self, model, sample, passes, num_updates: int):
        c, ntokens = self.cfg, sample["ntokens"]
        zero = passes[0].logits.new_zeros((), dtype=torch.float32)
        loss, cmlm_nll, kd, n_sel = zero, zero, zero, 0
        stage2 = num_updates >= c.joint_updates
        if c.cmlm_weight > 0 and (not stage2 or c.continue_cmlm):
            ce, cmlm_nll = self.cmlm_loss(model, sample, passes[0].extra["encoder_out"])
            loss = loss + c.cmlm_weight * ce
        if stage2 and c.teacher == "frozen" and c.weight > 0:
            # the stage-1 snapshot is taken at the boundary
            self.frozen_teacher(model, num_updates)
        lam = self.kd_weight(num_updates)
        if lam > 0:
            kd, n_sel = self.kd_loss(model, sample, passes)
            if c.norm == "gated" and n_sel > 0:
                # the trainer's / ntokens then gives the mean per gated token
                kd = kd * (ntokens / n_sel)
            loss = loss + lam * kd
        # sums: reduce_metrics divides them by ntokens
        logs = {
            "cmlm_nll": cmlm_nll.detach(),
            "kd_loss": kd.detach(),
            "kd_selected_frac": float(n_sel),
            "kd_lambda": lam * ntokens,
        }
        return loss, logs


register_preset("cmlm_kd", ["cmlm_kd"])

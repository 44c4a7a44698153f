"""CBBGCA (Zhou, Meng, Zhou, Zhang, Wang, Su: "Confidence Based Bidirectional Global Context
Aware Training Framework for Neural Machine Translation", ACL 2022, arXiv 2202.13663).

L = c(s) CE_nmt + w_cmlm CE_cmlm(M) + lam(s) sum_{t in U} KL(sg[q_t] || p_t),  U = {t : sg[p_t(y_t)] < tau}

(sums over tokens; c(s) = 1, or 1 - lam(s) with ``--cmlm-kd-combine interpolate``). No official
code exists: this is the nmt-sd design of docs/methods.md 3(h), documented in docs/cmlm_kd.md.
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
import math
import os

import torch

from nmt_sd.criterions.fused import fused_label_smoothed_nll_loss, log_probs_and_probs, times_upstream
from nmt_sd.criterions.objective import TERMS, Term, register_preset, unwrap
from nmt_sd.errors import NmtSdError
from nmt_sd.models.cmlm import CMLMDecoder, build_frozen_teacher, random_cmlm_mask, rank_within_rows
from nmt_sd.models.transformer import EncoderOut

logger = logging.getLogger(__name__)
GATES = ("threshold", "lowest-k", "none")
SCHEDULES = ("constant", "linear", "cosine", "exponential")
STAGE1_CHECKPOINT = "checkpoint_stage1.pt"


# -- pure functions: gates, annealing, KL ---------------------------------------------------
def gate_threshold(conf: torch.Tensor, keep: torch.Tensor, tau: float) -> torch.Tensor:
    """(B, T) bool: the kept tokens (non-pad, non-EOS) with confidence < tau."""
    return keep & (conf < tau)


def gate_lowest_k(conf: torch.Tensor, keep: torch.Tensor, k_percent: float) -> torch.Tensor:
    """(B, T) bool: per sentence the ceil(k% n) lowest-confidence kept tokens (at least one
    when n > 0; ties broken by position)."""
    n = keep.sum(1)  # (B,)
    k = torch.ceil(n.double() * k_percent / 100.0).long().clamp(min=1)  # exact for integer k%
    return keep & (rank_within_rows(conf, keep) < torch.minimum(k, n)[:, None])


def split_groups(selected: torch.Tensor, groups: int) -> list:
    """``selected`` (B, T) split into ``groups`` random disjoint masks of near-equal size per
    sentence (round robin over a random order); empty masks are dropped."""
    if groups == 1:
        return [selected]
    rank = rank_within_rows(torch.rand(selected.shape, device=selected.device), selected) % groups
    masks = [selected & rank.eq(g) for g in range(groups)]
    return [m for m in masks if m.any()]


def anneal(schedule: str, start: float, end: float, step: int, total: int) -> float:
    """The KD weight ``step`` updates into stage 2; r = min(step / total, 1) (1 if total <= 0)."""
    r = 1.0 if total <= 0 else min(max(step / total, 0.0), 1.0)
    if schedule == "constant":
        return start
    if schedule == "linear":
        return start + (end - start) * r
    if schedule == "cosine":
        return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * r))
    if schedule == "exponential":
        return start * (end / start) ** r
    raise ValueError(f"unknown schedule {schedule!r} (choose from: {', '.join(SCHEDULES)})")


class _KLRowsFromLogits(torch.autograd.Function):
    """sum over the rows ``idx`` of z of KL(softmax(teacher) || softmax(z)), float32, in one
    chunked sweep (one exp per element) that also forms the gradient p - q, written in z's
    dtype into a zero tensor of z's shape: backward returns it, no softmax recomputed and
    no float32 (N, V) copies kept."""

    @staticmethod
    def forward(ctx, z, teacher, idx, chunk: int):
        total = torch.zeros((), dtype=torch.float32, device=z.device)
        grad = torch.zeros_like(z) if ctx.needs_input_grad[0] else None  # (B*T, V)
        for s in range(0, idx.numel(), chunk):
            rows = idx[s : s + chunk]
            a, p, _ = log_probs_and_probs(z.index_select(0, rows).float())  # log p, p
            b, q, _ = log_probs_and_probs(teacher[s : s + chunk].to(torch.float32, copy=True))  # log q, q
            total += torch.linalg.vecdot(q, b.sub_(a)).sum()
            if grad is not None:
                grad.index_copy_(0, rows, p.sub_(q).to(grad.dtype))
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad):
        (g,) = ctx.saved_tensors
        return times_upstream(g, grad), None, None, None


def kl_rows_from_logits(logits: torch.Tensor, teacher: torch.Tensor, idx: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """sum_i KL(softmax(teacher_i) || softmax(logits_{idx_i})): the teacher is detached.

    Args:
        logits: (B, T, V) student logits, any float dtype.
        teacher: (N, V) teacher logits, row i for flat position idx[i].
        idx: (N,) flat indices into the B * T positions.
    """
    return _KLRowsFromLogits.apply(logits.reshape(-1, logits.size(-1)), teacher.detach(), idx, chunk)


# -- the term -----------------------------------------------------------------------------
@TERMS.register("cmlm_kd")
class CMLMKDTerm(Term):
    def __init__(self, args, cfg: argparse.Namespace, task, teacher=None):
        super().__init__()
        d = task.tgt_dict
        self.cfg, self.eps, self.num_updates = cfg, args.label_smoothing, 0
        self.padding_idx, self.eos_idx, self.mask_idx = d.pad(), d.eos(), cfg.mask_idx
        self.src_dict, self.tgt_dict = task.src_dict, d
        shared = bool(args.share_decoder_input_output_embed or args.share_all_embeddings)
        self.cmlm = CMLMDecoder(args, cfg.layers, d, shared)
        object.__setattr__(self, "teacher", teacher)  # plain attribute: never optimised nor saved
        from nmt_sd.options import plain_args

        self.saved_args = plain_args(args)  # rebuilds the stage-1 snapshot's architecture

    @staticmethod
    def add_args(parser) -> None:
        g = parser.add_argument_group("CBBGCA: CMLM joint training + confidence-gated KD (docs/cmlm_kd.md)")
        g.add_argument("--cmlm-kd-decoder-layers", type=int, metavar="N", help="CMLM depth (default: --decoder-layers)")
        g.add_argument("--cmlm-kd-cmlm-weight", type=float, default=1.0, metavar="W",
                       help="weight of the CMLM's label-smoothed CE on masked tokens (0: CMLM CE off)")
        g.add_argument("--cmlm-kd-joint-updates", type=int, metavar="N",
                       help="stage 1 (joint training) length in updates (default: --max-update / 2; 0: no stage 1)")
        g.add_argument("--cmlm-kd-gate", choices=GATES, default="threshold",
                       help="which tokens get KD: confidence < tau, the k%% least confident per sentence, or all")
        g.add_argument("--cmlm-kd-threshold", type=float, default=0.5, metavar="TAU", help="tau of the threshold gate")
        g.add_argument("--cmlm-kd-lowest-k", type=float, default=50.0, metavar="K", help="percent for lowest-k, in (0, 100]")
        g.add_argument("--cmlm-kd-mask-groups", type=int, metavar="G",
                       help="teacher passes over disjoint groups of the gated tokens (default: 1; 2 with gate none)")
        g.add_argument("--cmlm-kd-norm", choices=["gated", "ntokens"], default="gated",
                       help="KD as the mean over gated tokens, or summed like CE (divided by ntokens)")
        g.add_argument("--cmlm-kd-teacher", choices=["live", "frozen"], default="live",
                       help="live: the jointly trained CMLM (detached); frozen: the stage-1 snapshot or a path")
        g.add_argument("--cmlm-kd-teacher-path", metavar="CKPT", help="frozen teacher: a checkpoint of a cmlm_kd run")
        g.add_argument("--cmlm-kd-continue-cmlm", action=argparse.BooleanOptionalAction, default=None,
                       help="keep training the CMLM in stage 2 (default: on with live, off with frozen)")
        g.add_argument("--cmlm-kd-weight", type=float, default=1.0, metavar="W", help="KD weight at stage-2 start (0: KD off)")
        g.add_argument("--cmlm-kd-weight-min", type=float, default=0.1, metavar="W", help="KD weight after annealing")
        g.add_argument("--cmlm-kd-anneal", choices=SCHEDULES, default="linear", help="KD weight schedule")
        g.add_argument("--cmlm-kd-anneal-updates", type=int, metavar="N",
                       help="annealing length (default: --max-update minus stage 1)")
        g.add_argument("--cmlm-kd-combine", choices=["add", "interpolate"], default="add",
                       help="add: CE + lam KD; interpolate: (1 - lam) CE + lam KD")

    @classmethod
    def from_args(cls, args, task) -> "CMLMKDTerm":
        cfg = check_config(args, task)
        teacher = None
        if cfg.teacher == "frozen" and cfg.teacher_path:
            from nmt_sd.training.checkpoint import load_checkpoint_file

            teacher = build_frozen_teacher(load_checkpoint_file(cfg.teacher_path), cfg.teacher_path,
                                           "--cmlm-kd-teacher-path", task.src_dict, task.tgt_dict)
        return cls(args, cfg, task, teacher)

    # -- schedule
    def set_num_updates(self, num_updates: int) -> None:
        self.num_updates = num_updates

    def kd_weight(self, num_updates: int) -> float:
        """lam(s): 0 in stage 1 or with KD off, then annealed over the stage-2 updates."""
        c = self.cfg
        if c.weight == 0 or num_updates < c.joint_updates:
            return 0.0
        return anneal(c.anneal, c.weight, c.weight_min, num_updates - c.joint_updates, c.anneal_updates)

    @property
    def ce_scale(self) -> float:  # the NMT CE's multiplier: 1 - lam when interpolating
        return 1.0 - self.kd_weight(self.num_updates) if self.cfg.combine == "interpolate" else 1.0

    # -- stage 1 (and stage 2 with --cmlm-kd-continue-cmlm): the CMLM's own CE
    def cmlm_loss(self, model, sample, enc: EncoderOut):
        """(label-smoothed CE, NLL) summed over a random Mask-Predict subset of the target."""
        target = sample["target"]  # (B, T)
        masked = random_cmlm_mask(target, self.padding_idx, self.eos_idx)  # (B, T)
        logits = self.cmlm(unwrap(model).decoder, target.masked_fill(masked, self.mask_idx), enc, masked)  # (N, V)
        return fused_label_smoothed_nll_loss(logits, target[masked], self.eps, self.padding_idx)

    # -- stage 2: gate, teacher, KD
    def gate(self, sample, passes) -> torch.Tensor:
        """(B, T) bool: the tokens to distil (never pad or EOS)."""
        target = sample["target"]
        keep = target.ne(self.padding_idx) & target.ne(self.eos_idx)  # (B, T)
        if self.cfg.gate == "none":
            return keep
        conf = sum(p.gold_probs(target) for p in passes) / len(passes)  # (B, T), detached
        if self.cfg.gate == "threshold":
            return gate_threshold(conf, keep, self.cfg.threshold)
        return gate_lowest_k(conf, keep, self.cfg.lowest_k)

    @torch.no_grad()
    def teacher_logits(self, model, sample, passes, selected: torch.Tensor, groups: list) -> torch.Tensor:
        """The teacher's (N, V) logits at the selected positions, group after group (row-major
        within a group), each group masked exactly; only sentences with a gated token run."""
        u = selected.any(1)  # (B,)
        if self.cfg.teacher == "live":
            decoder, cmlm, e = unwrap(model).decoder, self.cmlm, passes[0].extra["encoder_out"]
            enc = EncoderOut(e.out[u], e.padding_mask[u])  # the student pass's encoder output
        else:
            t_model, cmlm = self.teacher
            if next(t_model.parameters()).device != selected.device:
                t_model.to(selected.device), cmlm.to(selected.device)
            net = sample["net_input"]
            enc, decoder = t_model.encoder(net["src_tokens"][u], net["src_lengths"][u]), t_model.decoder
        target, was_training = sample["target"][u], cmlm.training
        cmlm.eval()  # no dropout in the teacher pass
        out = []
        for g in groups:
            g = g[u]  # (B_u, T)
            r = g.any(1)
            tokens = target[r].masked_fill(g[r], self.mask_idx)
            out.append(cmlm(decoder, tokens, EncoderOut(enc.out[r], enc.padding_mask[r]), g[r]))
        cmlm.train(was_training)
        return out[0] if len(out) == 1 else torch.cat(out)

    def kd_loss(self, model, sample, passes):
        """(sum over gated tokens of KL(q || p), averaged over the passes; gated count)."""
        selected = self.gate(sample, passes)
        n_sel = int(selected.sum())
        if n_sel == 0:  # nothing to distil: no teacher pass
            return passes[0].logits.new_zeros((), dtype=torch.float32), 0
        groups = split_groups(selected, self.cfg.mask_groups)
        teacher = self.teacher_logits(model, sample, passes, selected, groups)  # (N, V)
        idx = torch.cat([g.reshape(-1).nonzero().squeeze(1) for g in groups])  # (N,) flat positions, same order
        kd = sum(kl_rows_from_logits(p.logits, teacher, idx) for p in passes)
        return kd / len(passes), n_sel

    def frozen_teacher(self, model, num_updates: int):
        """The frozen teacher; built on first use in stage 2: at the boundary from the model
        as it is now (saved to SAVE_DIR/checkpoint_stage1.pt), after it from that file."""
        if self.teacher is None:
            from nmt_sd.training import distributed as dist_utils
            from nmt_sd.training.checkpoint import atomic_save, load_checkpoint_file

            path = self.cfg.stage1_path
            if num_updates == self.cfg.joint_updates:
                state = self.stage1_state(model, num_updates)
                if path and dist_utils.is_master():
                    atomic_save(state, path)
                    logger.info(f"stage 1 done at {num_updates} updates: frozen CMLM teacher saved to {path}")
            elif path and os.path.isfile(path):
                state = load_checkpoint_file(path)
            else:
                raise NmtSdError(f"--cmlm-kd-teacher frozen: the stage-1 teacher {path or '(no --save-dir)'} is "
                                 "missing (it is written when training crosses --cmlm-kd-joint-updates); "
                                 "give --cmlm-kd-teacher-path")
            teacher = build_frozen_teacher(state, path or "stage-1 snapshot", "--cmlm-kd-teacher frozen",
                                           self.src_dict, self.tgt_dict)
            object.__setattr__(self, "teacher", teacher)
        return self.teacher

    def stage1_state(self, model, num_updates: int) -> dict:
        """A checkpoint-shaped copy of the model and the CMLM as they are now (CPU tensors)."""
        from nmt_sd.training.checkpoint import CHECKPOINT_VERSION

        copy = lambda sd, prefix="": {prefix + k: v.detach().to("cpu", copy=True) for k, v in sd.items()}
        return {"version": CHECKPOINT_VERSION, "args": self.saved_args, "num_updates": num_updates,
                "model": copy(unwrap(model).state_dict()), "criterion": copy(self.cmlm.state_dict(), "cmlm.")}

    def forward(self, model, sample, passes, num_updates: int):
        c, ntokens = self.cfg, sample["ntokens"]
        zero = passes[0].logits.new_zeros((), dtype=torch.float32)
        loss, cmlm_nll, kd, n_sel = zero, zero, zero, 0
        stage2 = num_updates >= c.joint_updates
        if c.cmlm_weight > 0 and (not stage2 or c.continue_cmlm):
            ce, cmlm_nll = self.cmlm_loss(model, sample, passes[0].extra["encoder_out"])
            loss = loss + c.cmlm_weight * ce
        if stage2 and c.teacher == "frozen" and c.weight > 0:
            self.frozen_teacher(model, num_updates)  # the stage-1 snapshot is taken at the boundary
        lam = self.kd_weight(num_updates)
        if lam > 0:
            kd, n_sel = self.kd_loss(model, sample, passes)
            if c.norm == "gated" and n_sel > 0:
                kd = kd * (ntokens / n_sel)  # the trainer's / ntokens then gives the mean per gated token
            loss = loss + lam * kd
        logs = {"cmlm_nll": cmlm_nll.detach(), "kd_loss": kd.detach(), "kd_selected_frac": float(n_sel),
                "kd_lambda": lam * ntokens}  # sums: reduce_metrics divides them by ntokens
        return loss, logs


def check_config(args, task) -> argparse.Namespace:
    """Validate the ``--cmlm-kd-*`` flags (one-line NmtSdError naming the flag) and resolve
    their defaults."""
    a, max_update = args, getattr(args, "max_update", 0) or 0
    if "<mask>" not in task.tgt_dict.indices:
        raise NmtSdError("--criterion cmlm_kd needs a '<mask>' symbol in the target dictionary (re-run nmt-sd-preprocess)")
    joint = a.cmlm_kd_joint_updates
    if joint is None:
        if max_update <= 0:
            raise NmtSdError("--cmlm-kd-joint-updates must be given when --max-update is not")
        joint = max_update // 2
    anneal_updates = a.cmlm_kd_anneal_updates
    if anneal_updates is None:
        if max_update <= 0 and a.cmlm_kd_anneal != "constant" and a.cmlm_kd_weight > 0:
            raise NmtSdError(f"--cmlm-kd-anneal-updates must be given with --cmlm-kd-anneal {a.cmlm_kd_anneal} "
                             "when --max-update is not")
        anneal_updates = max(max_update - joint, 0)
    layers = a.cmlm_kd_decoder_layers if a.cmlm_kd_decoder_layers is not None else a.decoder_layers
    groups = a.cmlm_kd_mask_groups if a.cmlm_kd_mask_groups is not None else (2 if a.cmlm_kd_gate == "none" else 1)
    checks = [
        (joint < 0, f"--cmlm-kd-joint-updates must be >= 0, got {joint}"),
        (anneal_updates < 0, f"--cmlm-kd-anneal-updates must be >= 0, got {anneal_updates}"),
        (layers < 1, f"--cmlm-kd-decoder-layers must be >= 1, got {layers}"),
        (a.cmlm_kd_cmlm_weight < 0, f"--cmlm-kd-cmlm-weight must be >= 0, got {a.cmlm_kd_cmlm_weight}"),
        (a.cmlm_kd_gate not in GATES, f"--cmlm-kd-gate must be one of {', '.join(GATES)}, got {a.cmlm_kd_gate!r}"),
        (not 0.0 <= a.cmlm_kd_threshold <= 1.0, f"--cmlm-kd-threshold must be in [0, 1], got {a.cmlm_kd_threshold}"),
        (not 0.0 < a.cmlm_kd_lowest_k <= 100.0, f"--cmlm-kd-lowest-k must be a percent in (0, 100], got {a.cmlm_kd_lowest_k}"),
        (groups < 1, f"--cmlm-kd-mask-groups must be >= 1, got {groups}"),
        (a.cmlm_kd_norm not in ("gated", "ntokens"), f"--cmlm-kd-norm must be gated or ntokens, got {a.cmlm_kd_norm!r}"),
        (a.cmlm_kd_teacher not in ("live", "frozen"), f"--cmlm-kd-teacher must be live or frozen, got {a.cmlm_kd_teacher!r}"),
        (a.cmlm_kd_anneal not in SCHEDULES, f"--cmlm-kd-anneal must be one of {', '.join(SCHEDULES)}, got {a.cmlm_kd_anneal!r}"),
        (a.cmlm_kd_combine not in ("add", "interpolate"), f"--cmlm-kd-combine must be add or interpolate, got {a.cmlm_kd_combine!r}"),
        (a.cmlm_kd_weight < 0 or a.cmlm_kd_weight_min < 0, "--cmlm-kd-weight and --cmlm-kd-weight-min must be >= 0"),
    ]
    kd_on = a.cmlm_kd_weight > 0
    checks += [
        (kd_on and a.cmlm_kd_weight_min > a.cmlm_kd_weight,
         f"--cmlm-kd-weight-min ({a.cmlm_kd_weight_min}) must be <= --cmlm-kd-weight ({a.cmlm_kd_weight}): the weight decays"),
        (kd_on and a.cmlm_kd_anneal == "exponential" and a.cmlm_kd_weight_min <= 0,
         "--cmlm-kd-anneal exponential needs --cmlm-kd-weight-min > 0"),
        (a.cmlm_kd_combine == "interpolate" and a.cmlm_kd_weight > 1,
         f"--cmlm-kd-combine interpolate needs --cmlm-kd-weight <= 1 (CE gets 1 - weight), got {a.cmlm_kd_weight}"),
        (a.cmlm_kd_teacher_path and a.cmlm_kd_teacher != "frozen", "--cmlm-kd-teacher-path needs --cmlm-kd-teacher frozen"),
        (a.cmlm_kd_teacher_path and not os.path.isfile(a.cmlm_kd_teacher_path),
         f"--cmlm-kd-teacher-path not found: {a.cmlm_kd_teacher_path}"),
        (kd_on and a.cmlm_kd_teacher == "frozen" and joint == 0 and not a.cmlm_kd_teacher_path,
         "--cmlm-kd-teacher frozen with --cmlm-kd-joint-updates 0 needs --cmlm-kd-teacher-path"),
    ]
    for bad, msg in checks:
        if bad:
            raise NmtSdError(msg)
    continue_cmlm = a.cmlm_kd_continue_cmlm if a.cmlm_kd_continue_cmlm is not None else a.cmlm_kd_teacher == "live"
    if kd_on and a.cmlm_kd_teacher == "live" and (joint == 0 or a.cmlm_kd_cmlm_weight == 0):
        logger.warning("cmlm_kd: the live CMLM teacher starts KD untrained (--cmlm-kd-joint-updates 0 or "
                       "--cmlm-kd-cmlm-weight 0)")
    save_dir = getattr(args, "save_dir", None)
    stage1_path = os.path.join(save_dir, STAGE1_CHECKPOINT) if save_dir and not getattr(args, "no_save", False) else None
    return argparse.Namespace(
        layers=layers, cmlm_weight=a.cmlm_kd_cmlm_weight, joint_updates=joint, gate=a.cmlm_kd_gate,
        threshold=a.cmlm_kd_threshold, lowest_k=a.cmlm_kd_lowest_k, mask_groups=groups, norm=a.cmlm_kd_norm,
        teacher=a.cmlm_kd_teacher, teacher_path=a.cmlm_kd_teacher_path, continue_cmlm=continue_cmlm,
        weight=a.cmlm_kd_weight, weight_min=a.cmlm_kd_weight_min, anneal=a.cmlm_kd_anneal,
        anneal_updates=anneal_updates, combine=a.cmlm_kd_combine, mask_idx=task.tgt_dict.index("<mask>"),
        stage1_path=stage1_path)


register_preset("cmlm_kd", ["cmlm_kd"])

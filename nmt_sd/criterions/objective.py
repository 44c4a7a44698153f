"""The composite training objective (style guide 2.3).

    L = ce_scale * CE(passes) + sum_terms term(model, sample, passes)

CE is label-smoothed cross-entropy over the student's K stochastic passes, summed or
averaged over passes as the active consistency term states (R-Drop sums, Intra-
Distillation averages). K is set by the consistency term (1 without one). Terms are
one file each, registered in ``TERMS``; ``--criterion NAME`` is a preset of terms and
``--terms a,b`` adds more. The objective never mutates ``sample`` and never calls
backward. In eval mode (validation) it is plain single-pass label-smoothed CE.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from nmt_sd.criterions import CRITERIONS, Criterion
from nmt_sd.criterions.functional import label_smoothed_nll_loss, log_probs
from nmt_sd.criterions.fused import fused_label_smoothed_nll_loss, gold_probs
from nmt_sd.criterions.multi_pass import multi_pass_ce_from_logits
from nmt_sd.errors import NmtSdError
from nmt_sd.registry import Registry


class Term(nn.Module):
    """One component of the objective. Subclasses set the class attributes below and
    implement ``forward(model, sample, passes, num_updates) -> (loss sum, logs)``."""

    n_passes: int = 1  # stochastic passes this term needs (consistency terms: K)
    consistency: bool = False  # a term across passes (at most one per run)
    ce_reduction: str = "sum"  # how CE combines over passes when this term sets K
    needs_lprobs: bool = False  # passes must carry float32 log-probs
    ce_scale: float = 1.0  # multiplier on the CE part (e.g. Seer's alpha)
    pass_mode: str = "concat"  # "concat" (one forward on K copies) or "sequential"
    needs_hiddens: bool = False  # passes must carry encoder_states / inner_states
    needs_attn: bool = False  # passes must carry per-layer attention maps
    # a consistency term whose value is a divergence of the passes to their mean ("x" or
    # "js") names it here and implements ``from_divergence``: the objective then computes
    # it in the same fused sweep as the CE (one log-softmax per chunk, one gradient tensor)
    divergence: Optional[str] = None

    def from_divergence(self, div: torch.Tensor, sample, num_updates: int):
        """(loss sum, logs) of this term given the passes' divergence sum ``div``."""
        raise NotImplementedError

    def divergence_weight(self, num_updates: int) -> float:
        """d from_divergence(div) / d div (the term is linear in the divergence)."""
        raise NotImplementedError

    def ce_scale_for(self, sample) -> float:
        """The multiplier on the CE part for this batch (LSSD's 1/2 applies to distilled
        batches only); the constant ``ce_scale`` by default."""
        return self.ce_scale

    def on_epoch_begin(self, epoch: int, model) -> None:
        """Forwarded from the training loop (see ``Criterion.on_epoch_begin``)."""

    def on_validation_end(
        self, epoch: int, per_pair: dict, model, end_of_epoch: bool
    ) -> dict:
        """Forwarded from the training loop (see ``Criterion.on_validation_end``)."""
        return {}

    def set_num_updates(self, num_updates: int) -> None:
        """Called before each update (and on resume): a term whose ``ce_scale`` depends
        on the update number (``cmlm_kd`` interpolating) reads it here."""

    @staticmethod
    def add_args(parser) -> None:
        pass


TERMS = Registry("term", Term)


def unwrap(model):
    """The model itself, also when wrapped in DistributedDataParallel (to reach
    ``model.encoder`` / ``model.decoder`` from a term)."""
    return getattr(model, "module", model)


PRESET_TERMS: Dict[str, List[str]] = {}


@dataclass
class Pass:
    """One stochastic forward pass: logits (B, T, V) and lazily computed log-probs."""

    logits: torch.Tensor
    extra: Dict = field(default_factory=dict)
    _lprobs: Optional[torch.Tensor] = None
    group: Optional[torch.Tensor] = (
        None  # (K*B, T, V) concatenated forward these logits come from
    )
    gold_nll: Optional[torch.Tensor] = (
        None  # (B, T) detached -log p(gold), left by the fused CE sweep
    )

    @property
    def lprobs(self) -> torch.Tensor:  # (B, T, V) float32
        if self._lprobs is None:
            self._lprobs = log_probs(self.logits)
        return self._lprobs

    def gold_probs(self, target: torch.Tensor) -> torch.Tensor:
        """(B, T) detached float32 p(gold) (gates): from the CE's sweep when it left them,
        else one chunked sweep over the logits."""
        if self.gold_nll is not None:
            return torch.exp(-self.gold_nll)
        return gold_probs(self.logits, target)


def split_batch(obj, k: int, i: int):
    """The i-th of k equal batch chunks of a tensor, or of every tensor inside lists,
    tuples (incl. EncoderOut) and dicts; anything else is returned as is."""
    if torch.is_tensor(obj):
        return obj.chunk(k, dim=0)[i]
    if isinstance(obj, dict):
        return {key: split_batch(v, k, i) for key, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(split_batch(v, k, i) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(split_batch(v, k, i) for v in obj)
    return obj


def run_passes(model, net_input: Dict, k: int, mode: str, **model_kw) -> List[Pass]:
    """K passes with independent dropout masks: one forward over the batch repeated K
    times (``concat``, R-Drop's official way) or K forwards (``sequential``). Each Pass
    carries its own logits (B, T, V) and extras (``encoder_out``, hidden states, ...).
    """
    if k == 1 or mode == "sequential":
        return [Pass(*model(**net_input, **model_kw)) for _ in range(k)]
    rep = {name: t.repeat(k, *([1] * (t.dim() - 1))) for name, t in net_input.items()}
    logits, extra = model(**rep, **model_kw)  # (K*B, T, V)
    return [
        Pass(logits.chunk(k, dim=0)[i], split_batch(extra, k, i), group=logits)
        for i in range(k)
    ]


def pass_logits(passes: List[Pass]):
    """The passes' logits for a fused multi-pass loss: a (K, B, T, V) view of the
    concatenated forward when they share one, else the list of K (B, T, V) tensors."""
    group = passes[0].group
    if group is not None and all(p.group is group for p in passes):
        return group.view(len(passes), *passes[0].logits.shape)
    return [p.logits for p in passes]


def register_preset(name: str, terms: List[str]) -> None:
    """``--criterion name`` = the objective with these terms."""
    PRESET_TERMS[name] = list(terms)
    CRITERIONS.register(name)(Objective)


def resolve_terms(criterion: str, extra: str) -> List[str]:
    names = list(PRESET_TERMS.get(criterion, []))
    for name in (x.strip() for x in (extra or "").split(",") if x.strip()):
        TERMS.get(name)  # unknown names fail here, listing the valid ones
        if name not in names:
            names.append(name)
    return names


class Objective(Criterion):
    def __init__(self, args, task):
        super().__init__()
        self.eps = args.label_smoothing
        self.padding_idx = task.tgt_dict.pad()
        names = resolve_terms(args.criterion, getattr(args, "terms", ""))
        self.terms = nn.ModuleList(TERMS.get(n).from_args(args, task) for n in names)
        consistency = [t for t in self.terms if t.consistency]
        if len(consistency) > 1:
            raise NmtSdError(
                f"--terms: choose one consistency term, got {[type(t).__name__ for t in consistency]}"
            )
        self.consistency = consistency[0] if consistency else None
        self.num_updates = 0

    @staticmethod
    def add_args(parser) -> None:
        parser.add_argument(
            "--label-smoothing",
            type=float,
            default=0.0,
            metavar="D",
            help="epsilon for label smoothing, 0 means none",
        )

    @staticmethod
    def add_term_args(parser, criterion: str, terms: str) -> None:
        for name in resolve_terms(criterion, terms):
            TERMS.get(name).add_args(parser)

    def set_num_updates(self, num_updates: int) -> None:
        self.num_updates = num_updates
        for t in self.terms:
            t.set_num_updates(num_updates)

    def on_epoch_begin(self, epoch: int, model) -> None:
        for t in self.terms:
            t.on_epoch_begin(epoch, model)

    def on_validation_end(
        self, epoch: int, per_pair: dict, model, end_of_epoch: bool
    ) -> dict:
        out = {}
        for t in self.terms:
            out.update(t.on_validation_end(epoch, per_pair, model, end_of_epoch))
        return out

    def ce(self, p: Pass, target: torch.Tensor, lprobs_needed: bool):
        """Summed label-smoothed CE of one pass (fused from logits when possible)."""
        flat_t = target.reshape(-1)
        if lprobs_needed:
            return label_smoothed_nll_loss(
                p.lprobs.reshape(-1, p.lprobs.size(-1)),
                flat_t,
                self.eps,
                self.padding_idx,
            )
        p.gold_nll = torch.empty(
            target.shape, dtype=torch.float32, device=target.device
        )
        return fused_label_smoothed_nll_loss(
            p.logits.reshape(-1, p.logits.size(-1)),
            flat_t,
            self.eps,
            self.padding_idx,
            nll_rows=p.gold_nll.view(-1),
        )

    def forward(self, model, sample, reduce: bool = True):
        terms = list(self.terms) if self.training else []
        k = self.consistency.n_passes if (self.training and self.consistency) else 1
        mode = self.consistency.pass_mode if self.consistency else "concat"
        kw = {}
        if any(t.needs_hiddens for t in terms):
            kw["return_all_hiddens"] = True
        if any(t.needs_attn for t in terms):
            kw["need_attn"] = True
        passes = run_passes(model, sample["net_input"], k, mode, **kw)
        need_lp = any(t.needs_lprobs for t in terms)
        fused = k > 1 and not need_lp and self.consistency.divergence is not None
        scale = math.prod(t.ce_scale_for(sample) for t in terms)
        mean_ce = k > 1 and self.consistency.ce_reduction == "mean"
        if fused:  # CE of every pass and the consistency divergence in one sweep
            ce_loss, nll, div = self._fused_ce(passes, sample, scale, mean_ce)
        else:
            ce_parts = [self.ce(p, sample["target"], need_lp) for p in passes]
            ce_loss = sum(c[0] for c in ce_parts)
            nll = sum(c[1] for c in ce_parts) / k
        if mean_ce:
            ce_loss = ce_loss / k
        loss = ce_loss * scale if scale != 1.0 else ce_loss
        ntokens = sample["ntokens"]
        logs = {
            "nll_loss": nll.detach(),
            "ntokens": ntokens,
            "nsentences": sample["nsentences"],
            "sample_size": ntokens,
        }
        for t in terms:
            if fused and t is self.consistency:
                t_loss, t_logs = t.from_divergence(div, sample, self.num_updates)
            else:
                t_loss, t_logs = t(model, sample, passes, self.num_updates)
            loss = loss + t_loss
            logs.update(t_logs)
        logs["loss"] = loss.detach()
        return loss, ntokens, logs

    def _fused_ce(self, passes, sample, scale, mean_ce):
        """Every pass's CE and the divergence in one sweep; returns (ce_sum, nll, div).

        The weights the loss puts on the CE sum and the divergence go in, so the fused
        loss makes its gradient in the forward pass.
        """
        k = len(passes)
        weights = (
            scale / k if mean_ce else scale,
            self.consistency.divergence_weight(self.num_updates),
        )
        target = sample["target"]  # (B, T)
        rows = torch.empty(
            (k,) + target.shape, dtype=torch.float32, device=target.device
        )
        ce_loss, nll, div = multi_pass_ce_from_logits(
            pass_logits(passes),
            target,
            self.eps,
            self.padding_idx,
            self.consistency.divergence,
            weights=weights,
            nll_rows=rows.view(k, -1),
        )
        for p, r in zip(passes, rows):
            p.gold_nll = r  # (B, T)
        return ce_loss, nll / k, div

    @staticmethod
    def reduce_metrics(logs: List[Dict]) -> Dict[str, float]:
        """Base metrics as fairseq's LS-CE; every term metric is a sum over tokens,
        reported per token (``sample_size``)."""
        from nmt_sd.criterions.label_smoothed_cross_entropy import reduce_ce_metrics

        out = reduce_ce_metrics(logs)
        base = {"loss", "nll_loss", "ntokens", "nsentences", "sample_size", "gnorm"}
        for key in sorted({k for log in logs for k in log} - base):
            out[key] = sum(float(log.get(key, 0)) for log in logs) / max(
                out["sample_size"], 1
            )
        return out

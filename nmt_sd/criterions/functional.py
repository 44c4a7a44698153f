"""Pure loss functions shared by every criterion and term (no state, no inheritance): the
reference definitions on float32 log-probs. ``fused.py`` computes the same values and
gradients straight from logits, chunked, for training."""

import math
from typing import Tuple

import torch


def label_smoothed_nll_loss(
    lprobs: torch.Tensor, target: torch.Tensor, epsilon: float, ignore_index: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """fairseq's label-smoothed NLL, summed over non-pad tokens.

    loss_t = (1 - eps - eps/(V-1)) * nll_t + eps/(V-1) * sum_v -log p_t(v)
    (eps/(V-1) on every wrong class, 1-eps on the gold one).

    Args:
        lprobs: (N, V) float32 log-probabilities.
        target: (N,) gold indices; ``ignore_index`` positions contribute 0.
    Returns:
        (loss, nll_loss), both scalar sums.
    """
    nll = -lprobs.gather(dim=-1, index=target.unsqueeze(-1)).squeeze(-1)  # (N,)
    smooth = -lprobs.sum(dim=-1)  # (N,)
    pad = target.eq(ignore_index)
    nll = nll.masked_fill(pad, 0.0).sum()
    smooth = smooth.masked_fill(pad, 0.0).sum()
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    return loss, nll


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """float32 log-softmax over the last dim (logits may be bf16/fp16 under autocast)."""
    return torch.log_softmax(logits.float(), dim=-1)


def symmetric_kl(
    lprobs_p: torch.Tensor, lprobs_q: torch.Tensor, pad_mask: torch.Tensor
) -> torch.Tensor:
    """R-Drop's consistency: 1/2 [KL(p||q) + KL(q||p)] summed over non-pad tokens and vocab.

    1/2 sum_v (p - q)(log p - log q). No stop-gradient: both sides get gradient.

    Args:
        lprobs_p, lprobs_q: (B, T, V) float32 log-probabilities of two passes.
        pad_mask: (B, T) bool, True at pad targets (excluded).
    """
    diff = (lprobs_p.exp() - lprobs_q.exp()) * (lprobs_p - lprobs_q)  # (B, T, V)
    return 0.5 * diff.sum(-1).masked_fill(pad_mask, 0.0).sum()


def kd_kl(
    student_lprobs: torch.Tensor, teacher_lprobs: torch.Tensor, pad_mask: torch.Tensor
) -> torch.Tensor:
    """Teacher-student KD: KL(q || p) = sum_v q (log q - log p), summed over non-pad tokens.

    Pass log-probs at temperature T (log_softmax(z / T)); the caller applies T^2
    (Hinton et al. 2015). The teacher side should be detached; KL differs from the
    soft-target CE only by the teacher's entropy, a constant for the student.

    Args:
        student_lprobs, teacher_lprobs: (B, T, V) float32 log-probabilities.
        pad_mask: (B, T) bool, True at pad targets (excluded).
    """
    per = (teacher_lprobs.exp() * (teacher_lprobs - student_lprobs)).sum(-1)  # (B, T)
    return per.masked_fill(pad_mask, 0.0).sum()


def hidden_mse(
    student: torch.Tensor, teacher: torch.Tensor, pad_mask: torch.Tensor
) -> torch.Tensor:
    """Squared error of hidden states, mean over channels, summed over non-pad positions.

    Args:
        student, teacher: (B, T, C) (the student already projected to the teacher's C).
        pad_mask: (B, T) bool, True at pad positions (excluded).
    """
    per = (student.float() - teacher.float()).pow(2).mean(-1)  # (B, T)
    return per.masked_fill(pad_mask, 0.0).sum()


def attn_mse(
    student: torch.Tensor, teacher: torch.Tensor, pad_mask: torch.Tensor
) -> torch.Tensor:
    """Squared error of attention maps, summed over keys (a padded key has weight 0 on
    both sides, so the value does not depend on the batch's padding) and over non-pad queries.

    Args:
        student, teacher: (B, Tq, Tk) head-averaged attention probabilities.
        pad_mask: (B, Tq) bool, True at pad query positions (excluded).
    """
    per = (student.float() - teacher.float()).pow(2).sum(-1)  # (B, Tq)
    return per.masked_fill(pad_mask, 0.0).sum()


def x_divergence(lprobs: list, pad_mask: torch.Tensor, kind: str = "x") -> torch.Tensor:
    """Intra-Distillation's divergence of K passes to their (not detached) mean p_bar.

    x:  (1/K) sum_i sum_v (p_i - p_bar)(log p_i - log p_bar) = (1/K) sum_i [KL(p_i||p_bar) + KL(p_bar||p_i)]
    js: (1/K) sum_i sum_v p_i (log p_i - log p_bar)          = (1/K) sum_i KL(p_i||p_bar)
    Summed over non-pad tokens. log p_bar is a logsumexp of the log-probs, so nothing
    takes the log of an underflowed probability (the official code's NaN risk).

    Args:
        lprobs: K tensors (B, T, V) float32 log-probabilities.
        pad_mask: (B, T) bool, True at pad targets.
    """
    k = len(lprobs)
    stacked = torch.stack(lprobs, dim=0)  # (K, B, T, V)
    log_mean = torch.logsumexp(stacked, dim=0) - math.log(k)  # (B, T, V)
    probs = stacked.exp()
    if kind == "x":
        per = (probs - log_mean.exp()) * (stacked - log_mean)
    elif kind == "js":
        per = probs * (stacked - log_mean)
    else:
        raise ValueError(f"unknown divergence {kind!r} (x or js)")
    return per.sum(dim=(0, -1)).masked_fill(pad_mask, 0.0).sum() / k


def soft_cross_entropy(
    teacher_lprobs: torch.Tensor, student_lprobs: torch.Tensor, pad_mask: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of a student against a teacher distribution (T = 1, no smoothing).

    -sum_v p_T(v) log p_S(v), summed over non-pad tokens. Equals KL(p_T||p_S) plus the
    teacher's entropy, so with a detached teacher it has KL's gradient. The caller
    decides whether the teacher is detached (Seer Forcing detaches it).

    Args:
        teacher_lprobs, student_lprobs: (B, T, V) float32 log-probabilities.
        pad_mask: (B, T) bool, True at pad targets (excluded).
    """
    per = -(teacher_lprobs.exp() * student_lprobs).sum(-1)  # (B, T)
    return per.masked_fill(pad_mask, 0.0).sum()

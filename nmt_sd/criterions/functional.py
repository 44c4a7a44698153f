"""Pure loss functions shared by every criterion and term (no state, no inheritance)."""
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

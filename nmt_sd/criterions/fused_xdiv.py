"""The X-divergence of Intra-Distillation (and its JS form) from K passes' logits, chunked
with analytic gradients, plus the pass reductions the fused multi-pass loss shares with it.
Same value and gradients as ``functional.x_divergence`` on ``log_probs(logits)``."""

import math

import torch


def sum_over_passes(x: torch.Tensor) -> torch.Tensor:
    """x.sum(0) for a (K, c, V) tensor, as K-1 adds of contiguous slices (a reduction over
    the leading dim is several times slower on CPU)."""
    if x.size(0) == 1:
        return x[0].clone()
    out = torch.add(x[0], x[1])
    for i in range(2, x.size(0)):
        out.add_(x[i])
    return out


def mean_over_passes(x: torch.Tensor) -> torch.Tensor:
    """x.mean(0) for a (K, c, V) tensor (see ``sum_over_passes``)."""
    return sum_over_passes(x).div_(x.size(0))


def x_centre(a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Centre the log-probs in place, a_i <- a_i - a_bar, and return
    s_i = sum_v p_i (a_i - a_bar), (K, c, 1). The X-divergence of each row is
    sum_i s_i / K, since sum_i sum_v p_bar a_i = sum_i sum_v p_i a_bar."""
    a.sub_(sum_over_passes(a), alpha=1.0 / a.size(0))  # one pass: a_i - (sum_j a_j) / K
    return torch.linalg.vecdot(p, a).unsqueeze(-1)


def _xdiv_chunk(zs, kind: str, need_grad: bool):
    """X/JS divergence rows (c,) of K logit chunks (c, V), and d rows / d z_i if asked."""
    a = torch.stack([torch.log_softmax(z.float(), -1) for z in zs])  # (K, c, V)
    return xdiv_from_lprobs(a, a.exp(), kind, need_grad)


def xdiv_from_lprobs(a, p, kind: str, need_grad: bool):
    """X/JS divergence rows (c,) from log-probs ``a`` and probs ``p`` (K, c, V) float32,
    and d rows / d logits (K, c, V) if asked. For "x", ``a`` is centred in place."""
    k = a.size(0)
    if kind == "x":  # the log p_bar terms cancel: X = 1/K sum_i s_i (see x_centre)
        s_i = x_centre(a, p)  # (K, c, 1)
        rows = s_i.sum(0).squeeze(-1) / k
        if not need_grad:
            return rows, None
        return rows, (p * (a + 1.0 - s_i) - mean_over_passes(p)) / k
    log_m = torch.logsumexp(a, 0) - math.log(k)  # (c, V)
    kl = (p * (a - log_m)).sum(-1, keepdim=True)  # (K, c, 1): KL(p_i || p_bar)
    rows = kl.sum(0).squeeze(-1) / k
    return rows, ((p * (a - log_m) - p * kl) / k if need_grad else None)


class _XDivergenceFromLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, keep, kind: str, chunk: int, *zs):
        total = torch.zeros((), dtype=torch.float32, device=zs[0].device)
        for s in range(0, zs[0].size(0), chunk):
            rows, _ = _xdiv_chunk([z[s : s + chunk] for z in zs], kind, False)
            total += rows.masked_fill(~keep[s : s + chunk], 0.0).sum()
        ctx.save_for_backward(keep, *zs)
        ctx.kind, ctx.chunk = kind, chunk
        return total

    @staticmethod
    def backward(ctx, grad):
        keep, *zs = ctx.saved_tensors
        grads = [torch.empty_like(z) for z in zs]
        for s in range(0, zs[0].size(0), ctx.chunk):
            _, g = _xdiv_chunk([z[s : s + ctx.chunk] for z in zs], ctx.kind, True)
            g = g * (keep[s : s + ctx.chunk].unsqueeze(-1).to(g.dtype) * grad)
            for i, gi in enumerate(grads):
                gi[s : s + ctx.chunk] = g[i].to(gi.dtype)
        return (None, None, None, *grads)


def x_divergence_from_logits(
    logits: list, pad_mask: torch.Tensor, kind: str = "x", chunk: int = 64
) -> torch.Tensor:
    """``x_divergence([log_softmax(z) for z in logits], pad_mask, kind)`` from the logits,
    chunked with analytic gradients (no float32 (K, B, T, V) tensors kept for backward).

    Args:
        logits: K tensors (B, T, V), any float dtype; pad_mask: (B, T) True at pads.
    """
    if kind not in ("x", "js"):
        raise ValueError(f"unknown divergence {kind!r} (x or js)")
    v = logits[0].size(-1)
    keep = ~pad_mask.reshape(-1)
    return _XDivergenceFromLogits.apply(
        keep, kind, chunk, *(z.reshape(-1, v) for z in logits)
    )

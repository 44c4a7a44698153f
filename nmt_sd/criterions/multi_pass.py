"""Cross-entropy over K stochastic passes plus their consistency term (R-Drop's symmetric KL
or Intra-Distillation's X-divergence) in one chunked sweep over the passes' logits: the
objective's fast path, with the values and gradients of the references in ``functional.py``.
"""

import math
from typing import Optional, Tuple

import torch

from nmt_sd.criterions.fused import log_probs_and_probs, zero_rows
from nmt_sd.criterions.fused_xdiv import sum_over_passes, x_centre, xdiv_from_lprobs


def _float_chunk(
    zs, s: int, c: int, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Rows s..s+c of the K passes as one float32 (K, c, V) tensor, written into ``out``
    when it has the right shape: ``zs`` is one (K, N, V) tensor or K (N, V) tensors. Each
    pass is copied on its own (contiguous rows convert bf16 -> float32 fastest)."""
    rows = zs[0][0, s : s + c] if len(zs) == 1 else zs[0][s : s + c]
    k = zs[0].size(0) if len(zs) == 1 else len(zs)
    if out is None or out.shape != (k,) + rows.shape:
        out = torch.empty((k,) + rows.shape, dtype=torch.float32, device=rows.device)
    for i in range(k):
        out[i].copy_(zs[0][i, s : s + c] if len(zs) == 1 else zs[i][s : s + c])
    return out


def _softmax_parts(z: torch.Tensor, t: torch.Tensor):
    """One exp per element: overwrite the float32 logits ``z`` (K, c, V) with log-probs.

    Returns:
        (a, p, lse, nll, smooth): a = z (log-probs), p = their exp (K, c, V), the
        log-sum-exp (K, c), and per row -log p(gold) and -sum_v log p(v) (K, c).
    """
    z_gold = z.gather(-1, t.view(1, -1, 1).expand(z.size(0), -1, 1)).squeeze(-1)
    z_sum = z.sum(-1)
    a, p, lse = log_probs_and_probs(z)
    return a, p, lse, lse - z_gold, z.size(-1) * lse - z_sum


def _multi_pass_chunk_grad(
    a, p, t, drop, kind, eps_i: float, g_gold, g_all, g_div, s_i=None
):
    """d (g_loss * CE + g_nll * NLL + g_div * divergence) / d logits for one chunk of the
    K passes, where g_gold = g_loss (1 - eps - eps_i) + g_nll and g_all = g_loss eps_i.

    Args:
        a: (K, c, V) float32 log-probs (overwritten), or for kind "x" with ``s_i`` given,
            log-probs already centred by ``x_centre``; p: exp(a) (overwritten for
            kinds other than "x"); t: (c,) gold; drop: (c,) True at pad rows (their
            gradient is 0).
    Returns:
        (K, c, V) float32.
    """
    k, vocab = a.size(0), a.size(-1)
    g_ce = g_gold + g_all * vocab  # CE: d/dz = g_ce p - g_all - g_gold onehot
    gd = g_div / k
    if kind == "x":
        # d X / d z_i = (1/K) [p_i (a_i - a_bar + 1 - s_i) - p_bar], s_i = sum_v p_i (a_i - a_bar)
        if s_i is None:
            s_i = x_centre(a, p)
        row = g_ce + gd * (1.0 - s_i)  # (K, c, 1)
        if isinstance(gd, float):  # one pass: row + gd (a_i - a_bar)
            g = torch.add(row, a, alpha=gd, out=a).mul_(p)
        else:
            g = a.mul_(gd).add_(row).mul_(p)
        # the p_bar and CE's -g_all terms in one pass
        g.sub_(sum_over_passes(p).mul_(gd / k).add_(g_all))
    elif kind == "js":
        _, g_div_z = xdiv_from_lprobs(a, p, kind, True)
        g = p.mul(g_ce).add_(g_div_z.mul_(g_div)).sub_(g_all)
    else:
        g = p.mul_(g_ce).sub_(g_all)
    gold = torch.as_tensor(-g_gold, dtype=g.dtype, device=g.device).expand(
        k, t.size(0), 1
    )
    g.scatter_add_(-1, t.view(1, -1, 1).expand(k, -1, 1), gold)
    return zero_rows(g, drop, dim=1)


def _same(grad: torch.Tensor, weight: float) -> bool:
    """An incoming scalar gradient equals the hinted weight up to float32 rounding (the
    caller's float32 arithmetic may round 1/K or alpha differently from Python's)."""
    return math.isclose(grad.item(), weight, rel_tol=1e-6, abs_tol=1e-12)


def _store_chunk(grads, g: torch.Tensor, s: int, chunk: int) -> None:
    """Write a (K, c, V) chunk gradient into one (K, N, V) or K (N, V) gradient tensors."""
    for i in range(g.size(0)):
        if len(grads) == 1:
            grads[0][i, s : s + chunk] = g[i]
        else:
            grads[i][s : s + chunk] = g[i]


class _MultiPassCE(torch.autograd.Function):
    """K passes' label-smoothed CE (summed over passes) and their X/JS divergence in one
    chunked sweep: each chunk's log-softmax is computed once for both. The passes come as
    one (K, N, V) tensor (a view of the concatenated forward: its gradient is one tensor,
    nothing to concatenate) or as K (N, V) tensors (sequential passes: nothing is stacked).

    With ``weights = (w_loss, w_div)``, the weights the caller will put on the loss and the
    divergence, the gradient is made in the forward pass while each chunk is in cache
    (on CPU); backward returns it when the incoming gradients are those weights (to
    float32 rounding; the nll unused), and otherwise recomputes the exact gradient.
    """

    @staticmethod
    def forward(
        ctx, target, keep, epsilon: float, kind, chunk: int, weights, rows_out, *zs
    ):
        k = zs[0].size(0) if len(zs) == 1 else len(zs)
        n, vocab = target.size(0), zs[0].size(-1)
        eps_i = epsilon / (vocab - 1)
        early = (
            weights is not None
            and ctx.needs_input_grad[7]
            and target.device.type == "cpu"
        )
        grads = [torch.empty_like(z) for z in zs] if early else None
        lse = torch.empty(k, n, dtype=torch.float32, device=target.device)
        nll = torch.zeros((), dtype=torch.float32, device=target.device)
        smooth, div = torch.zeros_like(nll), torch.zeros_like(nll)
        buf = None
        for s in range(0, n, chunk):
            t = target[s : s + chunk]
            drop = ~keep[s : s + chunk]
            buf = _float_chunk(zs, s, chunk, buf)  # (K, c, V), reused across chunks
            a, p, lse[:, s : s + chunk], nll_rows, smooth_rows = _softmax_parts(buf, t)
            if rows_out is not None:
                rows_out[:, s : s + chunk] = nll_rows
            nll += nll_rows.masked_fill(drop, 0.0).sum()
            smooth += smooth_rows.masked_fill(drop, 0.0).sum()
            s_i = None
            if (
                kind == "x"
            ):  # X = 1/K sum_i s_i, s_i = sum_v p_i (a_i - a_bar) (a is centred in place)
                s_i = x_centre(a, p)
                div += s_i.sum(0).squeeze(-1).masked_fill(drop, 0.0).sum() / k
            elif kind == "js":
                rows, _ = xdiv_from_lprobs(a, p, kind, False)
                div += rows.masked_fill(drop, 0.0).sum()
            if early:
                w_loss, w_div = weights
                g = _multi_pass_chunk_grad(
                    a,
                    p,
                    t,
                    drop,
                    kind,
                    eps_i,
                    w_loss * (1.0 - epsilon - eps_i),
                    w_loss * eps_i,
                    w_div,
                    s_i,
                )
                _store_chunk(grads, g, s, chunk)
        ctx.set_materialize_grads(False)  # unused outputs' gradients arrive as None
        ctx.save_for_backward(target, keep, lse, *zs)
        ctx.params = (epsilon, kind, chunk, weights if early else None)
        ctx.early = grads
        loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
        return loss, nll, div

    @staticmethod
    def backward(ctx, grad_loss, grad_nll, grad_div):
        target, keep, lse, *zs = ctx.saved_tensors
        epsilon, kind, chunk, weights = ctx.params
        early, ctx.early = ctx.early, None
        zero = torch.zeros((), dtype=torch.float32, device=target.device)
        grad_loss = zero if grad_loss is None else grad_loss
        grad_div = zero if grad_div is None else grad_div
        if (
            early is not None
            and grad_nll is None
            and _same(grad_loss, weights[0])
            and _same(grad_div, weights[1])
        ):
            return (None,) * 7 + tuple(early)
        grad_nll = zero if grad_nll is None else grad_nll
        k, n = lse.shape
        eps_i = epsilon / (zs[0].size(-1) - 1)
        # weight on -log p(gold)
        g_gold = grad_loss * (1.0 - epsilon - eps_i) + grad_nll
        g_all = grad_loss * eps_i  # weight on -log p(v), every v
        grads = [torch.empty_like(z) for z in zs]
        for s in range(0, n, chunk):
            # (K, c, V) log-probs
            a = _float_chunk(zs, s, chunk).sub_(lse[:, s : s + chunk].unsqueeze(-1))
            g = _multi_pass_chunk_grad(
                a,
                a.exp(),
                target[s : s + chunk],
                ~keep[s : s + chunk],
                kind,
                eps_i,
                g_gold,
                g_all,
                grad_div,
            )
            _store_chunk(grads, g, s, chunk)
        return (None,) * 7 + tuple(grads)


def multi_pass_ce_from_logits(
    logits,
    target: torch.Tensor,
    epsilon: float,
    ignore_index: int,
    divergence=None,
    chunk: int = 32,
    weights: Optional[Tuple[float, float]] = None,
    nll_rows: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Label-smoothed CE of K passes and their divergence to the mean, fused.

    Values and gradients equal ``sum_i label_smoothed_nll_loss(log_softmax(z_i), ...)``
    and ``x_divergence([log_softmax(z_i)], pad, divergence)``; R-Drop's symmetric KL is
    twice the X-divergence of its two passes.

    Args:
        logits: one (K, B, T, V) or (K, N, V) tensor (a view of the concatenated
            forward's output: no copy, one gradient tensor), or a list of K (B, T, V)
            tensors (sequential passes), any float dtype.
        target: (B, T) or (N,) gold indices; ``ignore_index`` rows are excluded.
        divergence: "x", "js" or None (CE only; the returned divergence is 0).
        weights: (w_loss, w_div), the caller's weights on loss and divergence: a hint
            that lets the gradient be made in the forward pass (exact either way).
        nll_rows: optional (K, N) float32 tensor, filled with each pass's per-row
            -log p(gold) (no gradient).
    Returns:
        (loss, nll_loss, divergence) scalar float32 sums; loss and nll summed over passes.
    """
    if divergence not in (None, "x", "js"):
        raise ValueError(f"unknown divergence {divergence!r} (x or js)")
    flat_t = target.reshape(-1)
    keep = flat_t.ne(ignore_index)
    if torch.is_tensor(logits):
        zs = (logits.reshape(logits.size(0), -1, logits.size(-1)),)
    else:
        zs = tuple(z.reshape(-1, z.size(-1)) for z in logits)
    return _MultiPassCE.apply(
        flat_t, keep, epsilon, divergence, chunk, weights, nll_rows, *zs
    )

"""Fused, chunked losses from logits: each gives the same value and gradients as its
reference in ``functional.py`` on ``log_probs(logits)``, without keeping float32 (N, V)
tensors for backward. Rows are taken in chunks whose float32 temporaries stay in cache;
most gradients are made during forward, so backward only scales or scatters them."""

from typing import Optional, Tuple

import torch


def zero_rows(g: torch.Tensor, rows: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Zero g's rows along ``dim`` where the bool mask ``rows`` is True; on CPU only the
    selected rows are written."""
    if g.device.type == "cpu":
        return g.index_fill_(dim, rows.nonzero().squeeze(-1), 0.0)
    shape = [1] * g.dim()
    shape[dim] = rows.numel()
    return g.masked_fill_(rows.view(shape), 0.0)


def times_upstream(g: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A gradient made in forward times the scalar upstream gradient; on CPU an upstream 1
    (the trainer's case) returns ``g`` itself, with no extra pass over it."""
    if g.device.type == "cpu" and grad.item() == 1.0:
        return g
    return g * grad


LOG2E = 1.4426950408889634


def exp_(x: torch.Tensor, inplace: bool = True) -> torch.Tensor:
    """exp(x), in place or not, as 2^(x log2 e): on CPU torch's float32 ``exp2`` is about 3x faster
    than its ``exp`` (AVX512, torch 2.13). Callers pass x = z - max(z) <= 0, where rounding
    x log2 e adds a relative error of at most |x| 2^-24 (6e-7 at p = e^-10). Every
    softmax sweep uses this one function, so equal logits still give bit-equal values.
    """
    return (x.mul_(LOG2E) if inplace else x * LOG2E).exp2_()


def log_probs_and_probs(z: torch.Tensor):
    """Log-softmax and softmax of float32 logits z (..., V) with one exp per element; z (the
    caller's own copy, never a view of the logits) is overwritten with the log-probs.

    Returns:
        (a, p, lse): log-probs (z itself), probs, and the log-sum-exp (...,).
    """
    m = z.amax(-1, keepdim=True)
    p = exp_(z.sub_(m), inplace=False)  # exp(z - max); z keeps z - max
    se = p.sum(-1, keepdim=True)
    p.div_(se)
    log_se = se.log_()
    return z.sub_(log_se), p, (m + log_se).squeeze(-1)


class _FusedLabelSmoothedCE(torch.autograd.Function):
    """Label-smoothed CE straight from logits, chunked over rows.

    The gradient is made in the forward pass, while each float32 chunk is in cache,
    and kept instead of the logits: d loss / d z = p - w, where w is the smoothed
    target distribution (1-eps-eps_i on gold, eps_i elsewhere; sums to 1). One exp per
    element: e = exp(z - max), lse = max + log sum e, p = e / sum e.
    Backward returns the stored gradient itself when only the loss is used with an
    upstream gradient of 1 (the trainer's case on CPU).
    """

    @staticmethod
    def forward(
        ctx, logits, target, epsilon: float, ignore_index: int, chunk: int, rows_out
    ):
        n, vocab = logits.shape
        eps_i = epsilon / (vocab - 1)
        keep = target.ne(ignore_index)
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(logits) if need_grad else None
        nll = torch.empty(n, dtype=torch.float32, device=logits.device)
        smooth = torch.empty(n, dtype=torch.float32, device=logits.device)
        for s in range(0, n, chunk):
            t = target[s : s + chunk]
            # (c, V), ours to overwrite
            z = logits[s : s + chunk].to(torch.float32, copy=True)
            z_gold = z.gather(-1, t.unsqueeze(-1)).squeeze(-1)
            z_sum = z.sum(-1)
            m = z.amax(-1, keepdim=True)
            e = exp_(z.sub_(m))  # (c, V) exp(z - max), in place
            se = e.sum(-1)
            lse = m.squeeze(-1) + se.log()
            nll[s : s + chunk] = lse - z_gold
            smooth[s : s + chunk] = vocab * lse - z_sum
            if (
                need_grad
            ):  # p - eps_i everywhere, -(1 - eps - eps_i) more on gold, 0 on pad rows
                g = e.div_(se.unsqueeze(-1)).sub_(eps_i)
                g.scatter_add_(
                    -1,
                    t.unsqueeze(-1),
                    g.new_full((t.size(0), 1), -(1.0 - epsilon - eps_i)),
                )
                grad[s : s + chunk] = zero_rows(g, ~keep[s : s + chunk])
        if rows_out is not None:
            rows_out.copy_(nll)
        nll = nll.masked_fill(~keep, 0.0).sum()
        smooth = smooth.masked_fill(~keep, 0.0).sum()
        loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        ctx.save_for_backward(grad, target)
        ctx.params = (epsilon, eps_i, ignore_index)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        grad, target = ctx.saved_tensors
        epsilon, eps_i, ignore_index = ctx.params
        if grad_loss is None:
            grad_loss = torch.zeros((), device=grad.device)
        if grad_nll is None:  # the usual case: the nll is only logged
            return times_upstream(grad, grad_loss), None, None, None, None, None
        # d nll / dz = p - onehot = (p - w) + (w - onehot); w - onehot is eps_i off gold, -eps on gold
        out = grad * (grad_loss + grad_nll)
        out.add_(grad_nll * eps_i)
        gold = (-(epsilon + eps_i) * grad_nll).to(out.dtype).expand(target.size(0), 1)
        out.scatter_add_(-1, target.unsqueeze(-1), gold)
        return zero_rows(out, target.eq(ignore_index)), None, None, None, None, None


def fused_label_smoothed_nll_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    epsilon: float,
    ignore_index: int,
    chunk: int = 64,
    nll_rows: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Same values and gradients as ``label_smoothed_nll_loss(log_probs(logits), ...)``
    without materialising float32 log-probs for backward.

    Args:
        logits: (N, V) in any float dtype; target: (N,).
        nll_rows: optional (N,) float32 tensor, filled with each row's -log p(gold)
            (pad rows included; no gradient): a by-product of the sweep, for gates.
    Returns:
        (loss, nll_loss) scalar float32 sums over non-pad rows.
    """
    return _FusedLabelSmoothedCE.apply(
        logits, target, epsilon, ignore_index, chunk, nll_rows
    )


@torch.no_grad()
def gold_probs(
    logits: torch.Tensor, target: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """Detached float32 probability of the gold token, target's shape, from logits (..., V),
    chunked over rows so each chunk's float32 temporaries stay in cache. The arithmetic is
    the CE sweeps' (``nll_rows``: max + log sum exp(z - max) - z_gold), so equal logits
    give bit-equal values whichever computed them (gates compare them). Pad positions hold
    a meaningless value."""
    z, t = logits.reshape(-1, logits.size(-1)), target.reshape(-1)
    out = torch.empty(t.shape, dtype=torch.float32, device=logits.device)
    for s in range(0, t.numel(), chunk):
        zc = z[s : s + chunk].to(torch.float32, copy=True)  # (c, V)
        z_gold = zc.gather(-1, t[s : s + chunk, None]).squeeze(-1)
        m = zc.amax(-1, keepdim=True)
        lse = m.squeeze(-1) + exp_(zc.sub_(m)).sum(-1).log()
        out[s : s + chunk] = z_gold - lse
    return out.exp_().view_as(target)


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
            # log q, q
            b, q, _ = log_probs_and_probs(
                teacher[s : s + chunk].to(torch.float32, copy=True)
            )
            total += torch.linalg.vecdot(q, b.sub_(a)).sum()
            if grad is not None:
                grad.index_copy_(0, rows, p.sub_(q).to(grad.dtype))
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad):
        (g,) = ctx.saved_tensors
        return times_upstream(g, grad), None, None, None


def kl_rows_from_logits(
    logits: torch.Tensor, teacher: torch.Tensor, idx: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """sum_i KL(softmax(teacher_i) || softmax(logits_{idx_i})): the teacher is detached.

    Args:
        logits: (B, T, V) student logits, any float dtype.
        teacher: (N, V) teacher logits, row i for flat position idx[i].
        idx: (N,) flat indices into the B * T positions.
    """
    return _KLRowsFromLogits.apply(
        logits.reshape(-1, logits.size(-1)), teacher.detach(), idx, chunk
    )


class _SymmetricKLFromLogits(torch.autograd.Function):
    """1/2 sum_v (p - q)(log p - log q) over kept rows, from logits, chunked.

    With a = log p, b = log q: d/dz_p = 1/2 [p (a - b) + p - q] - 1/2 p KL(p||q), and
    symmetrically for z_q; backward recomputes the softmaxes chunk by chunk.
    """

    @staticmethod
    def forward(ctx, z_p, z_q, keep, chunk: int):
        total = torch.zeros((), dtype=torch.float32, device=z_p.device)
        for s in range(0, z_p.size(0), chunk):
            a = torch.log_softmax(z_p[s : s + chunk].float(), -1)
            b = torch.log_softmax(z_q[s : s + chunk].float(), -1)
            rows = ((a.exp() - b.exp()) * (a - b)).sum(-1)  # (c,)
            total += rows.masked_fill(~keep[s : s + chunk], 0.0).sum()
        ctx.save_for_backward(z_p, z_q, keep)
        ctx.chunk = chunk
        return 0.5 * total

    @staticmethod
    def backward(ctx, grad):
        z_p, z_q, keep = ctx.saved_tensors
        g_p, g_q = torch.empty_like(z_p), torch.empty_like(z_q)
        for s in range(0, z_p.size(0), ctx.chunk):
            a = torch.log_softmax(z_p[s : s + ctx.chunk].float(), -1)
            b = torch.log_softmax(z_q[s : s + ctx.chunk].float(), -1)
            p, q, d = a.exp(), b.exp(), a - b
            # (c, 1)
            k = keep[s : s + ctx.chunk].unsqueeze(-1).to(p.dtype) * (0.5 * grad)
            pd, qd = p * d, q * d
            kl_pq, kl_qp = pd.sum(-1, keepdim=True), -qd.sum(-1, keepdim=True)
            g_p[s : s + ctx.chunk] = ((pd + p - q - p * kl_pq) * k).to(g_p.dtype)
            g_q[s : s + ctx.chunk] = ((q - p - qd - q * kl_qp) * k).to(g_q.dtype)
        return g_p, g_q, None, None


def symmetric_kl_from_logits(
    logits_p: torch.Tensor,
    logits_q: torch.Tensor,
    pad_mask: torch.Tensor,
    chunk: int = 64,
) -> torch.Tensor:
    """``symmetric_kl(log_softmax(logits_p), log_softmax(logits_q), pad_mask)`` without
    keeping float32 (B, T, V) tensors for backward (same value and gradients).

    Args:
        logits_p, logits_q: (B, T, V) any float dtype; pad_mask: (B, T) True at pads.
    """
    v = logits_p.size(-1)
    keep = ~pad_mask.reshape(-1)
    return _SymmetricKLFromLogits.apply(
        logits_p.reshape(-1, v), logits_q.reshape(-1, v), keep, chunk
    )


class _SoftCEFromLogits(torch.autograd.Function):
    """sum_rows w_r * -sum_v q_v log softmax(z)_v with q = softmax(teacher logits),
    chunked; d/dz = w (softmax(z) - q) (q sums to 1). The teacher gets no gradient.
    Rows with w = 0 (pads) contribute exactly 0. The gradient is made in the forward
    pass, while each chunk is in cache, and kept instead of the logits."""

    @staticmethod
    def forward(ctx, z, teacher, weights, chunk: int):
        need_grad = ctx.needs_input_grad[0]
        g = torch.empty_like(z) if need_grad else None
        total = torch.zeros((), dtype=torch.float32, device=z.device)
        for s in range(0, z.size(0), chunk):
            # (c, V), ours to overwrite
            zc = z[s : s + chunk].to(torch.float32, copy=True)
            q = torch.softmax(teacher[s : s + chunk].float(), -1)
            qz = (q * zc).sum(-1)
            m = zc.amax(-1, keepdim=True)
            e = exp_(zc.sub_(m))  # exp(z - max), in place
            se = e.sum(-1)
            rows = m.squeeze(-1) + se.log() - qz  # logsumexp(z) - sum_v q_v z_v
            w = weights[s : s + chunk]
            total += torch.where(w != 0, rows * w, 0.0).sum()
            if need_grad:
                g[s : s + chunk] = (
                    e.div_(se.unsqueeze(-1)).sub_(q).mul_(w.unsqueeze(-1))
                )
        ctx.save_for_backward(g)
        return total

    @staticmethod
    def backward(ctx, grad):
        (g,) = ctx.saved_tensors
        return times_upstream(g, grad), None, None, None


def soft_cross_entropy_from_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    pad_mask: torch.Tensor,
    chunk: int = 64,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``soft_cross_entropy(log_softmax(teacher), log_softmax(student), pad_mask)`` from
    logits (chunked; the teacher is treated as detached), optionally weighting each
    token (LSSD's gates).

    Args:
        student_logits, teacher_logits: (B, T, V); pad_mask: (B, T) True at pads.
        weights: (B, T) per-token weights (detached), default 1.
    """
    v = student_logits.size(-1)
    keep = (~pad_mask.reshape(-1)).float()
    w = keep if weights is None else weights.detach().reshape(-1).float() * keep
    return _SoftCEFromLogits.apply(
        student_logits.reshape(-1, v), teacher_logits.detach().reshape(-1, v), w, chunk
    )

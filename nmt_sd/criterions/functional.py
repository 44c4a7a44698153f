"""Pure loss functions shared by every criterion and term (no state, no inheritance)."""
import math
from typing import Optional, Tuple

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


def _zero_rows(g: torch.Tensor, rows: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Zero g's rows along ``dim`` where the bool mask ``rows`` is True; on CPU only the
    selected rows are written."""
    if g.device.type == "cpu":
        return g.index_fill_(dim, rows.nonzero().squeeze(-1), 0.0)
    shape = [1] * g.dim()
    shape[dim] = rows.numel()
    return g.masked_fill_(rows.view(shape), 0.0)


def _times_upstream(g: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A gradient made in forward times the scalar upstream gradient; on CPU an upstream 1
    (the trainer's case) returns ``g`` itself, with no extra pass over it."""
    if g.device.type == "cpu" and grad.item() == 1.0:
        return g
    return g * grad


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
    def forward(ctx, logits, target, epsilon: float, ignore_index: int, chunk: int):
        n, vocab = logits.shape
        eps_i = epsilon / (vocab - 1)
        keep = target.ne(ignore_index)
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(logits) if need_grad else None
        nll = torch.empty(n, dtype=torch.float32, device=logits.device)
        smooth = torch.empty(n, dtype=torch.float32, device=logits.device)
        for s in range(0, n, chunk):
            t = target[s : s + chunk]
            z = logits[s : s + chunk].to(torch.float32, copy=True)  # (c, V), ours to overwrite
            z_gold = z.gather(-1, t.unsqueeze(-1)).squeeze(-1)
            z_sum = z.sum(-1)
            m = z.amax(-1, keepdim=True)
            e = z.sub_(m).exp_()  # (c, V) exp(z - max), in place
            se = e.sum(-1)
            lse = m.squeeze(-1) + se.log()
            nll[s : s + chunk] = lse - z_gold
            smooth[s : s + chunk] = vocab * lse - z_sum
            if need_grad:  # p - eps_i everywhere, -(1 - eps - eps_i) more on gold, 0 on pad rows
                g = e.div_(se.unsqueeze(-1)).sub_(eps_i)
                g.scatter_add_(-1, t.unsqueeze(-1), g.new_full((t.size(0), 1), -(1.0 - epsilon - eps_i)))
                grad[s : s + chunk] = _zero_rows(g, ~keep[s : s + chunk])
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
            return _times_upstream(grad, grad_loss), None, None, None, None
        # d nll / dz = p - onehot = (p - w) + (w - onehot); w - onehot is eps_i off gold, -eps on gold
        out = grad * (grad_loss + grad_nll)
        out.add_(grad_nll * eps_i)
        gold = (-(epsilon + eps_i) * grad_nll).to(out.dtype).expand(target.size(0), 1)
        out.scatter_add_(-1, target.unsqueeze(-1), gold)
        return _zero_rows(out, target.eq(ignore_index)), None, None, None, None


def fused_label_smoothed_nll_loss(
    logits: torch.Tensor, target: torch.Tensor, epsilon: float, ignore_index: int, chunk: int = 64
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Same values and gradients as ``label_smoothed_nll_loss(log_probs(logits), ...)``
    without materialising float32 log-probs for backward.

    Args:
        logits: (N, V) in any float dtype; target: (N,).
    Returns:
        (loss, nll_loss) scalar float32 sums over non-pad rows.
    """
    return _FusedLabelSmoothedCE.apply(logits, target, epsilon, ignore_index, chunk)


def symmetric_kl(lprobs_p: torch.Tensor, lprobs_q: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """R-Drop's consistency: 1/2 [KL(p||q) + KL(q||p)] summed over non-pad tokens and vocab.

    1/2 sum_v (p - q)(log p - log q). No stop-gradient: both sides get gradient.

    Args:
        lprobs_p, lprobs_q: (B, T, V) float32 log-probabilities of two passes.
        pad_mask: (B, T) bool, True at pad targets (excluded).
    """
    diff = (lprobs_p.exp() - lprobs_q.exp()) * (lprobs_p - lprobs_q)  # (B, T, V)
    return 0.5 * diff.sum(-1).masked_fill(pad_mask, 0.0).sum()


def kd_kl(student_lprobs: torch.Tensor, teacher_lprobs: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
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


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """Squared error of hidden states, mean over channels, summed over non-pad positions.

    Args:
        student, teacher: (B, T, C) (the student already projected to the teacher's C).
        pad_mask: (B, T) bool, True at pad positions (excluded).
    """
    per = (student.float() - teacher.float()).pow(2).mean(-1)  # (B, T)
    return per.masked_fill(pad_mask, 0.0).sum()


def attn_mse(student: torch.Tensor, teacher: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
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


def soft_cross_entropy(teacher_lprobs: torch.Tensor, student_lprobs: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
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
            k = keep[s : s + ctx.chunk].unsqueeze(-1).to(p.dtype) * (0.5 * grad)  # (c, 1)
            pd, qd = p * d, q * d
            kl_pq, kl_qp = pd.sum(-1, keepdim=True), -qd.sum(-1, keepdim=True)
            g_p[s : s + ctx.chunk] = ((pd + p - q - p * kl_pq) * k).to(g_p.dtype)
            g_q[s : s + ctx.chunk] = ((q - p - qd - q * kl_qp) * k).to(g_q.dtype)
        return g_p, g_q, None, None


def symmetric_kl_from_logits(
    logits_p: torch.Tensor, logits_q: torch.Tensor, pad_mask: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """``symmetric_kl(log_softmax(logits_p), log_softmax(logits_q), pad_mask)`` without
    keeping float32 (B, T, V) tensors for backward (same value and gradients).

    Args:
        logits_p, logits_q: (B, T, V) any float dtype; pad_mask: (B, T) True at pads.
    """
    v = logits_p.size(-1)
    keep = ~pad_mask.reshape(-1)
    return _SymmetricKLFromLogits.apply(logits_p.reshape(-1, v), logits_q.reshape(-1, v), keep, chunk)


def _mean_over_passes(x: torch.Tensor) -> torch.Tensor:
    """x.mean(0) for a (K, c, V) tensor, as K-1 adds of contiguous slices (a reduction over
    the leading dim is several times slower on CPU)."""
    out = x[0].clone()
    for i in range(1, x.size(0)):
        out.add_(x[i])
    return out.div_(x.size(0))


def _x_centre(a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Centre the log-probs in place, a_i <- a_i - a_bar, and return
    s_i = sum_v p_i (a_i - a_bar), (K, c, 1). The X-divergence of each row is
    sum_i s_i / K, since sum_i sum_v p_bar a_i = sum_i sum_v p_i a_bar."""
    a.sub_(_mean_over_passes(a))
    return torch.linalg.vecdot(p, a).unsqueeze(-1)


def _xdiv_chunk(zs, kind: str, need_grad: bool):
    """X/JS divergence rows (c,) of K logit chunks (c, V), and d rows / d z_i if asked."""
    a = torch.stack([torch.log_softmax(z.float(), -1) for z in zs])  # (K, c, V)
    return _xdiv_from_lprobs(a, a.exp(), kind, need_grad)


def _xdiv_from_lprobs(a, p, kind: str, need_grad: bool):
    """X/JS divergence rows (c,) from log-probs ``a`` and probs ``p`` (K, c, V) float32,
    and d rows / d logits (K, c, V) if asked. For "x", ``a`` is centred in place."""
    k = a.size(0)
    if kind == "x":  # the log p_bar terms cancel: X = 1/K sum_i s_i (see _x_centre)
        s_i = _x_centre(a, p)  # (K, c, 1)
        rows = s_i.sum(0).squeeze(-1) / k
        if not need_grad:
            return rows, None
        return rows, (p * (a + 1.0 - s_i) - _mean_over_passes(p)) / k
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


def x_divergence_from_logits(logits: list, pad_mask: torch.Tensor, kind: str = "x", chunk: int = 64) -> torch.Tensor:
    """``x_divergence([log_softmax(z) for z in logits], pad_mask, kind)`` from the logits,
    chunked with analytic gradients (no float32 (K, B, T, V) tensors kept for backward).

    Args:
        logits: K tensors (B, T, V), any float dtype; pad_mask: (B, T) True at pads.
    """
    if kind not in ("x", "js"):
        raise ValueError(f"unknown divergence {kind!r} (x or js)")
    v = logits[0].size(-1)
    keep = ~pad_mask.reshape(-1)
    return _XDivergenceFromLogits.apply(keep, kind, chunk, *(z.reshape(-1, v) for z in logits))


def row_logsumexp(logits: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """logsumexp over the last dim in float32, row chunk by row chunk, no gradient.

    Args:
        logits: (..., V) any float dtype.
    Returns:
        (...) float32.
    """
    z = logits.detach().reshape(-1, logits.size(-1))
    out = torch.empty(z.size(0), dtype=torch.float32, device=z.device)
    for s in range(0, z.size(0), chunk):
        out[s : s + chunk] = torch.logsumexp(z[s : s + chunk].float(), -1)
    return out.view(logits.shape[:-1])


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
            zc = z[s : s + chunk].to(torch.float32, copy=True)  # (c, V), ours to overwrite
            q = torch.softmax(teacher[s : s + chunk].float(), -1)
            qz = (q * zc).sum(-1)
            m = zc.amax(-1, keepdim=True)
            e = zc.sub_(m).exp_()  # exp(z - max), in place
            se = e.sum(-1)
            rows = m.squeeze(-1) + se.log() - qz  # logsumexp(z) - sum_v q_v z_v
            w = weights[s : s + chunk]
            total += torch.where(w != 0, rows * w, 0.0).sum()
            if need_grad:
                g[s : s + chunk] = e.div_(se.unsqueeze(-1)).sub_(q).mul_(w.unsqueeze(-1))
        ctx.save_for_backward(g)
        return total

    @staticmethod
    def backward(ctx, grad):
        (g,) = ctx.saved_tensors
        return _times_upstream(g, grad), None, None, None


def soft_cross_entropy_from_logits(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, pad_mask: torch.Tensor, chunk: int = 64,
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
    return _SoftCEFromLogits.apply(student_logits.reshape(-1, v), teacher_logits.detach().reshape(-1, v), w, chunk)


def _float_chunk(zs, s: int, c: int) -> torch.Tensor:
    """Rows s..s+c of the K passes as one float32 (K, c, V) tensor: ``zs`` is one
    (K, N, V) tensor or K (N, V) tensors."""
    if len(zs) == 1:
        return zs[0][:, s : s + c].float()
    rows = zs[0][s : s + c]
    out = torch.empty(len(zs), rows.size(0), rows.size(1), dtype=torch.float32, device=rows.device)
    for i, z in enumerate(zs):
        out[i].copy_(z[s : s + c])
    return out


def _multi_pass_chunk_grad(a, p, t, drop, kind, eps_i: float, g_gold, g_all, g_div, s_i=None):
    """d (g_loss * CE + g_nll * NLL + g_div * divergence) / d logits for one chunk of the
    K passes, where g_gold = g_loss (1 - eps - eps_i) + g_nll and g_all = g_loss eps_i.

    Args:
        a: (K, c, V) float32 log-probs (overwritten), or for kind "x" with ``s_i`` given,
            log-probs already centred by ``_x_centre``; p: exp(a) (overwritten for
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
            s_i = _x_centre(a, p)
        g = a.mul_(gd).add_(g_ce + gd * (1.0 - s_i)).mul_(p)
        g.sub_(_mean_over_passes(p).mul_(gd).add_(g_all))  # the p_bar and CE's -g_all terms in one pass
    elif kind == "js":
        _, g_div_z = _xdiv_from_lprobs(a, p, kind, True)
        g = p.mul(g_ce).add_(g_div_z.mul_(g_div)).sub_(g_all)
    else:
        g = p.mul_(g_ce).sub_(g_all)
    gold = torch.as_tensor(-g_gold, dtype=g.dtype, device=g.device).expand(k, t.size(0), 1)
    g.scatter_add_(-1, t.view(1, -1, 1).expand(k, -1, 1), gold)
    return _zero_rows(g, drop, dim=1)


def _same(grad: torch.Tensor, weight: float) -> bool:
    """An incoming scalar gradient equals the hinted weight up to float32 rounding (the
    caller's float32 arithmetic may round 1/K or alpha differently from Python's)."""
    return math.isclose(grad.item(), weight, rel_tol=1e-6, abs_tol=1e-12)


def _store_chunk(grads, g: torch.Tensor, s: int, chunk: int) -> None:
    """Write a (K, c, V) chunk gradient into one (K, N, V) or K (N, V) gradient tensors."""
    if len(grads) == 1:
        grads[0][:, s : s + chunk] = g
    else:
        for i, gi in enumerate(grads):
            gi[s : s + chunk] = g[i]


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
    def forward(ctx, target, keep, epsilon: float, kind, chunk: int, weights, *zs):
        k = zs[0].size(0) if len(zs) == 1 else len(zs)
        n, vocab = target.size(0), zs[0].size(-1)
        eps_i = epsilon / (vocab - 1)
        early = weights is not None and ctx.needs_input_grad[6] and target.device.type == "cpu"
        grads = [torch.empty_like(z) for z in zs] if early else None
        lse = torch.empty(k, n, dtype=torch.float32, device=target.device)
        nll = torch.zeros((), dtype=torch.float32, device=target.device)
        smooth, div = torch.zeros_like(nll), torch.zeros_like(nll)
        for s in range(0, n, chunk):
            zc = _float_chunk(zs, s, chunk)  # (K, c, V)
            a = torch.log_softmax(zc, -1)
            lse[:, s : s + chunk] = zc[..., 0] - a[..., 0]  # log-sum-exp, kept for backward
            t = target[s : s + chunk]
            drop = ~keep[s : s + chunk]
            gold = a.gather(-1, t.view(1, -1, 1).expand(k, -1, 1)).squeeze(-1)  # (K, c)
            nll -= gold.masked_fill(drop, 0.0).sum()
            smooth -= a.sum(-1).masked_fill(drop, 0.0).sum()
            p = a.exp() if (early or kind == "x") else None
            s_i = None
            if kind == "x":  # X = 1/K sum_i s_i, s_i = sum_v p_i (a_i - a_bar) (a is centred in place)
                s_i = _x_centre(a, p)
                div += s_i.sum(0).squeeze(-1).masked_fill(drop, 0.0).sum() / k
            elif kind == "js":
                rows, _ = _xdiv_from_lprobs(a, a.exp() if p is None else p, kind, False)
                div += rows.masked_fill(drop, 0.0).sum()
            if early:
                w_loss, w_div = weights
                g = _multi_pass_chunk_grad(a, p, t, drop, kind, eps_i, w_loss * (1.0 - epsilon - eps_i),
                                           w_loss * eps_i, w_div, s_i)
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
        if early is not None and grad_nll is None and _same(grad_loss, weights[0]) and _same(grad_div, weights[1]):
            return (None, None, None, None, None, None, *early)
        grad_nll = zero if grad_nll is None else grad_nll
        k, n = lse.shape
        eps_i = epsilon / (zs[0].size(-1) - 1)
        g_gold = grad_loss * (1.0 - epsilon - eps_i) + grad_nll  # weight on -log p(gold)
        g_all = grad_loss * eps_i  # weight on -log p(v), every v
        grads = [torch.empty_like(z) for z in zs]
        for s in range(0, n, chunk):
            a = _float_chunk(zs, s, chunk).sub_(lse[:, s : s + chunk].unsqueeze(-1))  # (K, c, V) log-probs
            g = _multi_pass_chunk_grad(a, a.exp(), target[s : s + chunk], ~keep[s : s + chunk], kind, eps_i,
                                       g_gold, g_all, grad_div)
            _store_chunk(grads, g, s, chunk)
        return (None, None, None, None, None, None, *grads)


def multi_pass_ce_from_logits(
    logits, target: torch.Tensor, epsilon: float, ignore_index: int,
    divergence=None, chunk: int = 32, weights: Optional[Tuple[float, float]] = None,
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
    return _MultiPassCE.apply(flat_t, keep, epsilon, divergence, chunk, weights, *zs)

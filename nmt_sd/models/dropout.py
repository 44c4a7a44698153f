"""Inverted dropout (Srivastava et al., JMLR 2014) with fast CPU masks.

    y = x * m / (1 - p),  m_i ~ Bernoulli(1 - p)

On CPU the mask is drawn as 15-bit integers, four per 64-bit ``random_()`` draw, which
makes the dropout op about 4.8x faster than ``F.dropout`` on this project's CPUs
(docs/benchmarks.md); p is rounded to a multiple of 2^-15 and the scale is exact for the
rounded p, so E[y] = x. Elsewhere (CUDA) it is ``F.dropout``.
"""

import math

import torch
import torch.nn.functional as F


class _MaskDropout(torch.autograd.Function):
    """y = x * mask * scale with mask holding 0/1 (or 0/scale with scale 1): the
    backward is the same product, and only the mask is kept for it."""

    @staticmethod
    def forward(ctx, x, mask, scale: float):
        ctx.save_for_backward(mask)
        ctx.scale = scale
        y = x * mask
        return y if scale == 1.0 else y.mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        g = grad * mask
        return (g if ctx.scale == 1.0 else g.mul_(ctx.scale)), None, None


_LANE = 1 << 15  # CPU dropout masks compare 15-bit uniform integers


def _cpu_keep_mask(shape, p: float, device) -> tuple:
    """A 0/1 int16 mask with P(1) = 1 - t / 2^15, t = round(p 2^15), and its scale
    1 / P(1). Each 64-bit draw of ``random_()`` (uniform on [0, 2^63)) gives four
    15-bit uniform lanes, so the serial generator runs once per four elements; torch.rand
    runs it once per element and the bool/float masks convert slowly (about 5x slower).
    """
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_()
    t = round(p * _LANE)
    lanes = words.view(torch.int16)[:n].view(shape)  # four 15-bit lanes per draw
    keep = lanes.bitwise_and_(_LANE - 1).ge_(t)  # int16 0/1
    return keep, _LANE / (_LANE - t)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout. On CPU the mask comes from ``_cpu_keep_mask`` (p rounded to a
    multiple of 2^-15, the scale exact for the rounded p, so E[y] = x); elsewhere
    ``F.dropout``."""
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    if round(p * _LANE) >= _LANE:
        return x * 0.0
    keep, scale = _cpu_keep_mask(x.shape, p, x.device)
    if x.dtype == torch.float32:
        return _MaskDropout.apply(x, keep.to(torch.float32).mul_(scale), 1.0)
    # a bf16/fp16 mask would round the scale (a ~0.1% bias): keep 0/1 and scale in float
    return _MaskDropout.apply(x, keep.to(x.dtype), scale)

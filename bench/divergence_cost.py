"""What Intra-Distillation's X-divergence costs on top of its K passes' cross-entropy.

    python bench/divergence_cost.py                 # loss sweeps on one step's logits
    python bench/divergence_cost.py --compile       # also a torch.compile'd divergence chunk

Times, on random logits of one step's shape (N target tokens x V, K passes, bf16), with the
training allocator on one thread:
  - K separate fused label-smoothed CEs (what K baseline steps do),
  - ``multi_pass_ce_from_logits`` without the divergence, and with the X-divergence
    (forward + backward, the gradient made in forward as in training),
  - one cache-hot (K, chunk, V) float32 chunk's gradient from its log-probs, CE only and
    with the divergence: eager (the code's) and, with ``--compile``, the same maths fused
    by torch.compile (inductor).
The difference between the last two multi-pass figures is what the divergence adds to a step.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nmt_sd.criterions.fused import (  # noqa: E402
    fused_label_smoothed_nll_loss,
    log_probs_and_probs,
)
from nmt_sd.criterions.fused_xdiv import sum_over_passes, x_centre  # noqa: E402
from nmt_sd.criterions.multi_pass import multi_pass_ce_from_logits  # noqa: E402
from nmt_sd.training.cpu_allocator import setup_cpu_allocator  # noqa: E402


def median_ms(fn, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[rounds // 2] * 1000


def divergence_chunk(a, p, gd: float, g_ce: float, g_all: float):
    """The X-divergence part of one chunk's gradient, as ``_multi_pass_chunk_grad``."""
    s_i = x_centre(a, p)
    g = torch.add(g_ce + gd * (1.0 - s_i), a, alpha=gd, out=a).mul_(p)
    return s_i, g.sub_(sum_over_passes(p).mul_(gd / a.size(0)).add_(g_all))


def divergence_chunk_plain(a, p, gd: float, g_ce: float, g_all: float):
    """The same maths written plainly, for torch.compile to fuse."""
    ac = a - a.mean(0, keepdim=True)
    s_i = (p * ac).sum(-1, keepdim=True)
    return s_i, p * (g_ce + gd * (ac + 1.0 - s_i)) - (
        gd * p.mean(0, keepdim=True) + g_all
    )


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--tokens",
        type=int,
        default=1700,
        help="target tokens per step (2,048-token batches hold ~1,700)",
    )
    ap.add_argument("--vocab", type=int, default=8004)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument(
        "--chunk",
        type=int,
        default=32,
        help="rows per chunk (multi_pass_ce_from_logits' default)",
    )
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    setup_cpu_allocator("retain", "cpu")
    torch.manual_seed(0)
    k, n, v = a.k, a.tokens, a.vocab
    zs = [(torch.randn(n, v) * 3).bfloat16().requires_grad_() for _ in range(k)]
    target = torch.randint(4, v, (n,))
    target[-n // 16 :] = 1  # some padding

    def clear():
        for z in zs:
            z.grad = None

    def separate_ce():
        clear()
        for z in zs:
            fused_label_smoothed_nll_loss(z, target, 0.1, 1)[0].backward()

    def multi(kind):
        def run():
            clear()
            loss, _, div = multi_pass_ce_from_logits(
                zs,
                target,
                0.1,
                1,
                kind,
                chunk=a.chunk,
                weights=(1.0 / k, 5.0 if kind else 0.0),
            )
            (loss / k + (5.0 * div if kind else 0.0)).backward()

        return run

    rows = [
        (f"{k} separate fused LS-CEs", separate_ce),
        ("multi-pass CE, no divergence", multi(None)),
        ("multi-pass CE + X-divergence", multi("x")),
    ]
    print(
        f"# {k} passes x {n} tokens x {v} vocab, bf16 logits, one thread, median of {a.rounds}"
    )
    for name, fn in rows:
        print(f"{name:40s} {median_ms(fn, a.rounds):8.1f} ms")

    z = torch.randn(k, a.chunk, v) * 3
    a0, p0, _ = log_probs_and_probs(z)
    buf = torch.empty_like(a0)
    gd, g_ce, g_all = 5.0 / k, 1.0 / k, 1e-5
    chunk_fns = [
        (
            "chunk gradient, CE only",
            lambda a_, p_, gd_, c_, g_: (None, p_.mul(c_).sub_(g_)),
        ),
        ("chunk gradient + divergence, eager", divergence_chunk),
    ]
    if a.compile:
        chunk_fns.append(
            (
                "same, torch.compile (inductor)",
                torch.compile(divergence_chunk_plain, dynamic=False),
            )
        )
    base = median_ms(lambda: buf.copy_(a0), 50 * a.rounds)
    chunks = -(-n // a.chunk)
    for name, fn in chunk_fns:
        ms = (
            median_ms(lambda: fn(buf.copy_(a0), p0, gd, g_ce, g_all), 50 * a.rounds)
            - base
        )
        print(
            f"{name:40s} {ms * 1000:8.0f} us (x {chunks} chunks = {ms * chunks:.1f} ms per step)"
        )


if __name__ == "__main__":
    main()

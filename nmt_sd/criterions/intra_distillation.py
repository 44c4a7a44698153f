"""Intra-Distillation (Xu, Koehn, Murray; EMNLP 2022, arXiv 2205.11416).

L = (1/K) sum_i CE_i + alpha_t * (1/K) sum_i [KL(p_i||p_bar) + KL(p_bar||p_i)],  p_bar = mean_i p_i

K passes with independent dropout (sequential forwards, as in the official code; ``concat``
runs one forward over K copies), mean CE over passes, the X-divergence to the not-detached
mean (``--intra-divergence js`` keeps only the KL(p_i||p_bar) half). Computed from
log-softmax, so an underflowed probability cannot give NaN (the official code takes the
log of probabilities). Adaptive alpha (``--intra-adaptive``):
gamma = log(1/alpha) / log(p/q), alpha_t = alpha * (p t / N)^gamma for t < N/p, else alpha
(so alpha_0 = 0, alpha_{N/q} = 1, alpha_{N/p} = alpha); N defaults to --max-update.
With K = 2 the X-divergence is exactly half of R-Drop's symmetric KL.
"""

import logging
import math

from nmt_sd.criterions.fused_xdiv import x_divergence_from_logits
from nmt_sd.criterions.objective import TERMS, Term, register_preset
from nmt_sd.errors import NmtSdError

logger = logging.getLogger(__name__)


def adaptive_alpha(alpha: float, t: int, n: int, p: float, q: float) -> float:
    """Intra-Distillation's schedule; constant ``alpha`` when alpha <= 1 (as the official code)."""
    if alpha <= 1.0 or t >= n / p:
        return alpha
    gamma = math.log(1.0 / alpha) / math.log(p / q)
    return alpha * (p * t / n) ** gamma


@TERMS.register("intra_distillation")
class IntraDistillationTerm(Term):
    consistency = True
    ce_reduction = "mean"

    def __init__(self, k, alpha, divergence, adaptive, p, q, n, pass_mode, padding_idx):
        super().__init__()
        # divergence: fused with the CE
        self.n_passes, self.alpha, self.divergence = (
            k,
            alpha,
            divergence,
        )
        self.adaptive, self.p, self.q, self.n = adaptive, p, q, n
        self.pass_mode, self.padding_idx = pass_mode, padding_idx

    @staticmethod
    def add_args(parser) -> None:
        g = parser.add_argument_group("Intra-Distillation")
        g.add_argument(
            "--intra-k", type=int, default=3, metavar="K", help="stochastic passes"
        )
        g.add_argument(
            "--intra-alpha",
            type=float,
            default=0.0,
            metavar="A",
            help="(maximum) divergence weight",
        )
        g.add_argument("--intra-divergence", choices=["x", "js"], default="x")
        g.add_argument(
            "--intra-adaptive", action="store_true", help="adaptive alpha schedule"
        )
        g.add_argument(
            "--intra-p",
            type=float,
            default=5.0,
            help="alpha reaches its maximum at N/p",
        )
        g.add_argument(
            "--intra-q", type=float, default=10.0, help="alpha reaches 1 at N/q"
        )
        g.add_argument(
            "--intra-max-updates",
            type=int,
            default=None,
            metavar="N",
            help="schedule length N (default: --max-update)",
        )
        g.add_argument(
            "--intra-passes", choices=["sequential", "concat"], default="sequential"
        )

    @classmethod
    def from_args(cls, args, task) -> "IntraDistillationTerm":
        if args.intra_k < 2:
            raise NmtSdError(f"--intra-k must be >= 2, got {args.intra_k}")
        n = args.intra_max_updates or args.max_update
        if args.intra_adaptive:
            if not n:
                raise NmtSdError(
                    "--intra-adaptive needs --max-update or --intra-max-updates"
                )
            if args.intra_q <= args.intra_p:
                raise NmtSdError(
                    "--intra-adaptive needs --intra-q > --intra-p (else alpha never ramps up)"
                )
            if args.intra_max_updates and args.intra_max_updates != args.max_update:
                logger.warning(
                    f"--intra-max-updates {args.intra_max_updates} differs from --max-update {args.max_update}"
                )
        return cls(
            args.intra_k,
            args.intra_alpha,
            args.intra_divergence,
            args.intra_adaptive,
            args.intra_p,
            args.intra_q,
            n,
            args.intra_passes,
            task.tgt_dict.pad(),
        )

    def alpha_at(self, num_updates: int) -> float:
        if not self.adaptive:
            return self.alpha
        return adaptive_alpha(self.alpha, num_updates, self.n, self.p, self.q)

    def forward(self, model, sample, passes, num_updates: int):
        pad_mask = sample["target"].eq(self.padding_idx)  # (B, T)
        # from the logits (chunked, analytic gradients): no float32 (K, B, T, V) copies kept
        x = x_divergence_from_logits(
            [p.logits for p in passes], pad_mask, self.divergence
        )
        return self.from_divergence(x, sample, num_updates)

    def divergence_weight(self, num_updates: int) -> float:
        return self.alpha_at(num_updates)

    def from_divergence(self, x, sample, num_updates: int):
        alpha = self.alpha_at(num_updates)
        # alpha logged token-weighted, so the per-token reduction gives its mean
        return alpha * x, {
            "intra_x": x.detach(),
            "intra_alpha": alpha * sample["ntokens"],
        }


register_preset("intra_distillation", ["intra_distillation"])

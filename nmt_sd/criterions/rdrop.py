"""R-Drop (Liang, Wu et al., NeurIPS 2021, arXiv 2106.14448).

L = CE(pass 1) + CE(pass 2) + alpha * 1/2 [KL(p1||p2) + KL(p2||p1)]   (summed over tokens)

Two dropout passes run as one forward over the doubled batch, as in the official code
(``--rdrop-passes sequential`` runs two forwards when memory is short). CE is summed over
the passes (the official fairseq convention, so published alphas keep their meaning);
``--rdrop-ce mean`` gives the README snippet's 0.5 (CE1 + CE2). No stop-gradient.
Unlike the official code, alpha is a float (the official ``--reg-alpha`` is an int).
"""

from nmt_sd.criterions.fused import symmetric_kl_from_logits
from nmt_sd.criterions.objective import TERMS, Term, register_preset


@TERMS.register("rdrop")
class RDropTerm(Term):
    n_passes = 2
    consistency = True
    divergence = (
        "x"  # symmetric KL = 2 X-divergence of the two passes (fused with the CE)
    )

    def __init__(
        self, alpha: float, ce_reduction: str, pass_mode: str, padding_idx: int
    ):
        super().__init__()
        self.alpha, self.ce_reduction, self.pass_mode = alpha, ce_reduction, pass_mode
        self.padding_idx = padding_idx

    @staticmethod
    def add_args(parser) -> None:
        g = parser.add_argument_group("R-Drop")
        g.add_argument(
            "--rdrop-alpha",
            type=float,
            default=0.0,
            metavar="A",
            help="weight of the symmetric KL",
        )
        g.add_argument(
            "--rdrop-ce",
            choices=["sum", "mean"],
            default="sum",
            help="combine the two CEs by sum (official fairseq code) or mean (README)",
        )
        g.add_argument(
            "--rdrop-passes",
            choices=["concat", "sequential"],
            default="concat",
            help="one forward over the doubled batch, or two forwards",
        )

    @classmethod
    def from_args(cls, args, task) -> "RDropTerm":
        return cls(
            args.rdrop_alpha, args.rdrop_ce, args.rdrop_passes, task.tgt_dict.pad()
        )

    def forward(self, model, sample, passes, num_updates: int):
        pad_mask = sample["target"].eq(self.padding_idx)  # (B, T)
        # straight from the logits (chunked, analytic gradient): no float32 (B, T, V) copies
        kl = symmetric_kl_from_logits(passes[0].logits, passes[1].logits, pad_mask)
        return self.alpha * kl, {"rdrop_kl": kl.detach()}

    def divergence_weight(self, num_updates: int) -> float:
        return 2.0 * self.alpha

    def from_divergence(self, div, sample, num_updates: int):
        # 1/2 sum (p-q)(log p - log q) = 2 * 1/2 sum_i (p_i - p_bar) log p_i
        kl = 2.0 * div
        return self.alpha * kl, {"rdrop_kl": kl.detach()}


register_preset("rdrop", ["rdrop"])
register_preset("label_smoothed_cross_entropy_with_rdrop", ["rdrop"])

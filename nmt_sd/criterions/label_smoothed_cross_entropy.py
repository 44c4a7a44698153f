"""Label-smoothed cross-entropy (Szegedy et al., 2016, arXiv 1512.00567), fairseq's convention.

L = sum_t [(1 - eps - eps/(V-1)) * -log p(y_t) + eps/(V-1) * sum_v -log p(v)],
summed over non-pad target tokens; the trainer divides by ``sample_size`` (= ntokens).
"""
import math
from typing import Dict, List

import torch

from nmt_sd.criterions import CRITERIONS, Criterion
from nmt_sd.criterions.functional import label_smoothed_nll_loss, log_probs


@CRITERIONS.register("label_smoothed_cross_entropy")
class LabelSmoothedCrossEntropy(Criterion):
    def __init__(self, args, task):
        super().__init__()
        self.eps = args.label_smoothing
        self.padding_idx = task.tgt_dict.pad()

    @staticmethod
    def add_args(parser) -> None:
        parser.add_argument("--label-smoothing", type=float, default=0.0, metavar="D",
                            help="epsilon for label smoothing, 0 means none")

    def forward(self, model, sample, reduce: bool = True):
        logits, _ = model(**sample["net_input"])  # (B, T, V)
        lprobs = log_probs(logits).view(-1, logits.size(-1))  # (B*T, V) float32
        loss, nll = label_smoothed_nll_loss(lprobs, sample["target"].view(-1), self.eps, self.padding_idx)
        ntokens = sample["ntokens"]
        logging_output = {
            "loss": loss.detach(),
            "nll_loss": nll.detach(),
            "ntokens": ntokens,
            "nsentences": sample["nsentences"],
            "sample_size": ntokens,
        }
        return loss, ntokens, logging_output

    @staticmethod
    def reduce_metrics(logs: List[Dict]) -> Dict[str, float]:
        return reduce_ce_metrics(logs)


def _total(logs: List[Dict], key: str) -> float:
    return float(sum(float(log.get(key, 0)) for log in logs))


def reduce_ce_metrics(logs: List[Dict]) -> Dict[str, float]:
    """Normalise summed logs: loss per sample_size and nll per token, in base 2."""
    sample_size = _total(logs, "sample_size")
    ntokens = _total(logs, "ntokens")
    loss = _total(logs, "loss") / max(sample_size, 1) / math.log(2)
    nll = _total(logs, "nll_loss") / max(ntokens, 1) / math.log(2)
    return {
        "loss": loss,
        "nll_loss": nll,
        "ppl": 2**nll if nll < 64 else float("inf"),
        "ntokens": ntokens,
        "nsentences": _total(logs, "nsentences"),
        "sample_size": sample_size,
    }

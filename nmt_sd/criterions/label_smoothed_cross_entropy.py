"""Label-smoothed cross-entropy (Szegedy et al., 2016, arXiv 1512.00567), fairseq's convention.

L = sum_t [(1 - eps - eps/(V-1)) * -log p(y_t) + eps/(V-1) * sum_v -log p(v)],
summed over non-pad target tokens; the trainer divides by ``sample_size`` (= ntokens).
It is the composite objective with no terms (``nmt_sd/criterions/objective.py``).
"""

import math
from typing import Dict, List

from nmt_sd.criterions.objective import register_preset

register_preset("label_smoothed_cross_entropy", [])


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

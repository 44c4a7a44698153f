"""Training criteria. ``objective.py`` is the composite objective; each method is one
term file that registers its term and its ``--criterion`` preset. Add one import line
below per file."""

import torch.nn as nn

from nmt_sd.registry import Registry


class Criterion(nn.Module):
    """Contract (fairseq's): ``forward(model, sample) -> (loss, sample_size, logging_output)``
    with the loss and logs as **unnormalised sums**; ``reduce_metrics(logs)`` normalises.
    """

    @staticmethod
    def add_args(parser) -> None:
        pass

    def set_num_updates(self, num_updates: int) -> None:
        pass

    def on_epoch_begin(self, epoch: int, model) -> None:
        """Called by the training loop before each epoch's first update (also on resume)."""

    def on_validation_end(
        self, epoch: int, per_pair: dict, model, end_of_epoch: bool
    ) -> dict:
        """Called after each validation with the valid stats of every language pair
        ({"de-en": {"loss": ..., "nll_loss": ...}}); returns extra stats to log."""
        return {}


CRITERIONS = Registry("criterion", Criterion)

# registration by import (pyproject.toml exempts this file from E402/F401)
from nmt_sd.criterions import (
    cmlm_kd,
    intra_distillation,
    kd,
    label_smoothed_cross_entropy,
    lssd,
    objective,
    rdrop,
    seer,
)

"""Training criteria. Each lives in its own file and is registered by name; add one
import line below per criterion."""
import torch.nn as nn

from nmt_sd.registry import Registry


class Criterion(nn.Module):
    """Contract (fairseq's): ``forward(model, sample) -> (loss, sample_size, logging_output)``
    with the loss and logs as **unnormalised sums**; ``reduce_metrics(logs)`` normalises."""

    @staticmethod
    def add_args(parser) -> None:
        pass


CRITERIONS = Registry("criterion", Criterion)

from nmt_sd.criterions import label_smoothed_cross_entropy  # noqa: E402,F401

"""Learning-rate schedules, as functions of the update number (so resuming is exact)."""


class InverseSqrtSchedule:
    """fairseq's inverse_sqrt: linear warmup from ``warmup_init_lr`` to ``lr`` over
    ``warmup_updates``, then lr * sqrt(warmup_updates / num_updates)."""

    def __init__(self, lr: float, warmup_updates: int, warmup_init_lr: float):
        self.lr, self.warmup = lr, max(warmup_updates, 0)
        self.init_lr = (
            warmup_init_lr if warmup_init_lr >= 0 else (0.0 if self.warmup > 0 else lr)
        )

    def __call__(self, num_updates: int) -> float:
        if self.warmup > 0 and num_updates < self.warmup:
            return self.init_lr + (self.lr - self.init_lr) * num_updates / self.warmup
        return self.lr * (max(self.warmup, 1) ** 0.5) * max(num_updates, 1) ** -0.5


class FixedSchedule:
    """Constant lr, with an optional linear warmup."""

    def __init__(self, lr: float, warmup_updates: int = 0, warmup_init_lr: float = -1):
        self.lr, self.warmup = lr, warmup_updates
        self.init_lr = warmup_init_lr if warmup_init_lr >= 0 else 0.0

    def __call__(self, num_updates: int) -> float:
        if self.warmup > 0 and num_updates < self.warmup:
            return self.init_lr + (self.lr - self.init_lr) * num_updates / self.warmup
        return self.lr


def build_lr_schedule(args):
    if args.lr_scheduler == "inverse_sqrt":
        return InverseSqrtSchedule(args.lr, args.warmup_updates, args.warmup_init_lr)
    return FixedSchedule(args.lr, 0, args.warmup_init_lr)

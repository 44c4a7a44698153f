"""The training loop: epochs of updates, validation every epoch / N updates,
checkpoints, patience, ETA. All decisions are functions of (epoch, num_updates), so a
run resumed from ``checkpoint_last.pt`` continues exactly where it stopped."""

import itertools
import logging
import math
import time
from typing import Dict, Optional

from nmt_sd.training import distributed as dist_utils
from nmt_sd.training.checkpoint import save_checkpoint
from nmt_sd.training.trainer import sum_logs
from nmt_sd.training.validate import valid_bleu, valid_stats

logger = logging.getLogger("nmt_sd.train")


class RunState:
    """What a checkpoint must remember besides weights (kept in ``extra_state``)."""

    def __init__(self):
        self.best: Optional[float] = None
        self.num_bad_validations = 0
        self.train_wall = 0.0

    def to_dict(self, epoch_itr) -> Dict:
        return {
            "best": self.best,
            "num_bad_validations": self.num_bad_validations,
            "train_wall": self.train_wall,
            "train_iterator": epoch_itr.state_dict(),
        }

    def load(self, d: Dict, epoch_itr) -> None:
        self.best = d.get("best")
        self.num_bad_validations = int(d.get("num_bad_validations", 0))
        self.train_wall = float(d.get("train_wall", 0.0))
        if "train_iterator" in d:
            epoch_itr.load_state_dict(d["train_iterator"])
            if epoch_itr.iterations_in_epoch >= len(epoch_itr):
                epoch_itr.end_epoch()


def is_better(args, a: float, b: Optional[float]) -> bool:
    if b is None:
        return True
    return a > b if args.maximize_best_checkpoint_metric else a < b


def train(args, trainer, epoch_itr, valid_itr, progress, state: RunState) -> None:
    max_epoch = args.max_epoch or math.inf
    max_update = args.max_update or math.inf
    while epoch_itr.epoch <= max_epoch and trainer.num_updates < max_update:
        if train_epoch(args, trainer, epoch_itr, valid_itr, progress, state):
            break
        epoch_itr.end_epoch()
    logger.info(f"done training in {state.train_wall:.1f} seconds")


def train_epoch(args, trainer, epoch_itr, valid_itr, progress, state: RunState) -> bool:
    """Returns True when training should stop."""
    epoch = epoch_itr.epoch
    n_batches = len(epoch_itr)
    total = math.ceil(n_batches / args.update_freq)
    itr = epoch_itr.next_epoch_itr()
    interval, gnorms, epoch_logs = [], [], []
    t_interval = time.time()
    prefix = f"epoch {epoch:03d}"
    # e.g. LSSD: which languages to distil
    trainer.criterion.on_epoch_begin(epoch, trainer.model)
    while True:
        samples = list(itertools.islice(itr, args.update_freq))
        if not samples:
            break
        t0 = time.time()
        logs, gnorm = trainer.train_step(samples)
        state.train_wall += time.time() - t0
        interval += logs
        gnorms.append(gnorm)
        epoch_logs += logs
        n = trainer.num_updates
        step = math.ceil(epoch_itr.iterations_in_epoch / args.update_freq)
        if n % args.log_interval == 0:
            stats = interval_stats(trainer, interval, gnorms, time.time() - t_interval)
            progress.update(
                prefix,
                stats,
                step,
                total,
                eta(args, state, trainer, epoch, step, total),
            )
            interval, gnorms, t_interval = [], [], time.time()
        end_of_epoch = epoch_itr.iterations_in_epoch >= n_batches
        if not end_of_epoch and validate_and_save(
            args, trainer, epoch_itr, valid_itr, progress, state, False
        ):
            return True
    if epoch_logs:
        stats = summarize(trainer, epoch_logs)
        stats.update(
            num_updates=trainer.num_updates,
            lr=trainer.get_lr(),
            train_wall=round(state.train_wall, 1),
        )
        progress.log("train", f"epoch {epoch:03d} | train", dict(epoch=epoch, **stats))
    return validate_and_save(args, trainer, epoch_itr, valid_itr, progress, state, True)


def summarize(trainer, logs) -> Dict:
    totals = sum_logs(logs)
    keys = sorted(totals)
    summed = dist_utils.all_reduce_sums([totals[k] for k in keys], trainer.device)
    return trainer.criterion.reduce_metrics([dict(zip(keys, summed))])


def interval_stats(trainer, logs, gnorms, elapsed: float) -> Dict:
    """Metrics of the updates since the last log point (one host sync here, none per step)."""
    stats = summarize(trainer, logs)
    n_upd = max(len(gnorms), 1)
    stats.update(
        wps=stats["ntokens"] / max(elapsed, 1e-9),
        ups=n_upd / max(elapsed, 1e-9),
        wpb=stats["ntokens"] / n_upd,
        bsz=stats["nsentences"] / n_upd,
        num_updates=trainer.num_updates,
        lr=trainer.get_lr(),
        gnorm=float(sum(float(g) for g in gnorms)) / n_upd,
    )
    for k in ("ntokens", "nsentences", "sample_size"):
        stats.pop(k, None)
    return stats


def eta(
    args, state: RunState, trainer, epoch: int, step: int, total: int
) -> Optional[float]:
    per_update = state.train_wall / max(trainer.num_updates, 1)
    remaining = []
    if args.max_update:
        remaining.append(args.max_update - trainer.num_updates)
    if args.max_epoch:
        remaining.append((args.max_epoch - epoch) * total + (total - step))
    return min(remaining) * per_update if remaining else None


def due(args, n: int, epoch: int, end_of_epoch: bool, every: int, updates: int) -> bool:
    """At an epoch end every ``every`` epochs, every ``updates`` updates, or at --max-update."""
    hit_max = bool(args.max_update) and n >= args.max_update
    at_update = updates > 0 and n % updates == 0
    return (end_of_epoch and epoch % every == 0) or at_update or hit_max


def validate(args, trainer, valid_itr, progress, state: RunState, epoch, end_of_epoch):
    """Validate, update the best metric and log; returns (is_best, early stop)."""
    stats, per_pair = valid_stats(trainer, valid_itr)
    if args.eval_bleu:
        stats.update(valid_bleu(args, trainer, valid_itr))
    # criterion hook (LSSD: per-language teachers), before the checkpoint saving its state
    model = trainer.model
    stats.update(
        trainer.criterion.on_validation_end(epoch, per_pair, model, end_of_epoch)
    )
    metric = stats.get(args.best_checkpoint_metric, stats["loss"])
    is_best = is_better(args, metric, state.best)
    if is_best:
        state.best, state.num_bad_validations = metric, 0
    else:
        state.num_bad_validations += 1
    best = {f"best_{args.best_checkpoint_metric}": state.best}
    stats.update(num_updates=trainer.num_updates, **best)
    header = f"epoch {epoch:03d} | valid on '{args.valid_subset}' subset"
    progress.log("valid", header, dict(epoch=epoch, **stats))
    stop = args.patience > 0 and state.num_bad_validations >= args.patience
    if stop:
        logger.info(
            f"early stop since valid performance hasn't improved for last {args.patience} runs"
        )
    return is_best, stop


def validate_and_save(
    args, trainer, epoch_itr, valid_itr, progress, state: RunState, end_of_epoch: bool
) -> bool:
    """Validate and checkpoint when due; returns True when training should stop."""
    n, epoch = trainer.num_updates, epoch_itr.epoch
    hit_max = bool(args.max_update) and n >= args.max_update
    stop_lr = args.stop_min_lr > 0 and trainer.get_lr() <= args.stop_min_lr
    every_valid = (args.validate_interval, args.validate_interval_updates)
    do_valid = not args.disable_validation and valid_itr is not None
    do_valid = do_valid and due(args, n, epoch, end_of_epoch, *every_valid)
    every_save = (args.save_interval, args.save_interval_updates)
    do_save = not args.no_save and due(args, n, epoch, end_of_epoch, *every_save)
    is_best, stop = False, hit_max or stop_lr
    if do_valid:
        is_best, early = validate(
            args, trainer, valid_itr, progress, state, epoch, end_of_epoch
        )
        stop = stop or early
    if do_save and dist_utils.is_master():
        t0 = time.time()
        ckpt = trainer.state_dict(state.to_dict(epoch_itr))
        paths = save_checkpoint(
            ckpt, args.save_dir, epoch, n, end_of_epoch, is_best, args
        )
        if paths:
            logger.info(
                f"saved checkpoint {paths[0]} (epoch {epoch} @ {n} updates) "
                f"({time.time() - t0:.1f}s)"
            )
    dist_utils.barrier()
    return stop

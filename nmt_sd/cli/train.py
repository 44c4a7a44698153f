"""nmt-sd-train DATA [flags]: train a translation model (fairseq-train's flags)."""

import logging
import os
import random

import numpy as np
import torch

from nmt_sd.cli.common import run_cli
from nmt_sd.errors import NmtSdError
from nmt_sd.options import parse_training_args
from nmt_sd.tasks import TASKS
from nmt_sd.training import distributed as dist_utils
from nmt_sd.training.checkpoint import find_restore_file, load_checkpoint_file
from nmt_sd.training.cpu_allocator import setup_cpu_allocator
from nmt_sd.training.init_from_teacher import init_from_teacher
from nmt_sd.training.loop import RunState, train
from nmt_sd.training.progress import Progress
from nmt_sd.training.trainer import Trainer

logger = logging.getLogger("nmt_sd.train")


def default_threads() -> int:
    cores = (
        len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count()
    )
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, (cores or 1) // local)


def setup_device(args) -> torch.device:
    use_cuda = torch.cuda.is_available() and not args.cpu
    if args.fp16 and not use_cuda:
        raise NmtSdError("--fp16 needs a CUDA device; on CPU use --bf16")
    device = dist_utils.init_from_env(use_cuda)
    if not dist_utils.is_master() and not os.environ.get("NMT_SD_LOG_ALL_RANKS"):
        # as fairseq: only rank 0 logs INFO
        logging.getLogger().setLevel(logging.WARNING)
    threads = args.num_threads or default_threads()
    torch.set_num_threads(threads)
    setup_cpu_allocator(args.cpu_allocator, device.type)
    amp = "bf16" if args.bf16 else ("fp16" if args.fp16 else "fp32")
    logger.info(
        f"device: {device}, threads: {threads}, precision: {amp}, world size: {dist_utils.world_size()}"
    )
    return device


def add_file_log(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    h = logging.FileHandler(path)
    h.setFormatter(
        logging.getLogger().handlers[0].formatter
        if logging.getLogger().handlers
        else None
    )
    logging.getLogger().addHandler(h)


def batch_iterators(args, task, train_ds, model):
    """(training iterator, validation iterator or None), sharded over the workers."""
    rank, world = dist_utils.rank(), dist_utils.world_size()
    shard = dict(num_shards=world, shard_id=rank, seed=args.seed)
    multiple = args.required_batch_size_multiple
    epoch_itr = task.get_batch_iterator(
        train_ds,
        args.max_tokens,
        args.batch_size,
        model.max_positions(),
        shuffle=True,
        required_batch_size_multiple=multiple,
        **shard,
    )
    if args.disable_validation:
        return epoch_itr, None
    valid_itr = task.get_batch_iterator(
        task.load_dataset(args.valid_subset),
        args.max_tokens_valid or args.max_tokens,
        args.batch_size_valid or args.batch_size,
        model.max_positions(),
        shuffle=False,
        required_batch_size_multiple=multiple,
        skip_invalid=args.skip_invalid_size_inputs_valid_test,
        **shard,
    )
    return epoch_itr, valid_itr


def main(argv=None) -> None:
    args = parse_training_args(argv)
    if args.log_file:
        add_file_log(args.log_file)
    device = setup_device(args)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    logger.info(args)

    task = TASKS.get(args.task).setup_task(args)
    train_ds = task.load_dataset(args.train_subset)
    if len(train_ds) == 0:
        raise NmtSdError(f"training set '{args.train_subset}' in {args.data} is empty")
    if train_ds.tgt is None:
        raise NmtSdError(
            f"training set '{args.train_subset}' in {args.data} has no target side"
        )
    model = task.build_model(args)
    criterion = task.build_criterion(args)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        f"model {args.arch}, criterion {args.criterion}, {n_params:,} parameters"
    )

    trainer = Trainer(args, task, model, criterion, device)
    epoch_itr, valid_itr = batch_iterators(args, task, train_ds, model)
    state = RunState()
    restore = find_restore_file(args)
    if restore:
        extra = trainer.load_state_dict(
            load_checkpoint_file(restore), restore, args.reset_optimizer
        )
        state.load(extra, epoch_itr)
        logger.info(
            f"loaded checkpoint {restore} (epoch {epoch_itr.epoch} @ {trainer.num_updates} updates)"
        )
    else:
        logger.info(
            f"no existing checkpoint found in {args.save_dir}, starting from scratch"
        )
        init_from_teacher(args, model, task)  # --init-from-teacher: fresh runs only
    logger.info(
        f"max tokens per batch = {args.max_tokens}, {len(epoch_itr)} batches per epoch"
    )
    progress = Progress(args, enabled=dist_utils.is_master())
    try:
        train(args, trainer, epoch_itr, valid_itr, progress, state)
    finally:
        dist_utils.cleanup()


def cli_main(argv=None) -> None:
    run_cli("nmt-sd-train", main, argv)


if __name__ == "__main__":
    cli_main()

"""Profile nmt-sd training steps with torch.profiler and print the top operators.

    python bench/profile_step.py --arch transformer_iwslt_de_en --precision bf16 --updates 4

Used to find what a training step spends its time on (docs/profile.md keeps the summary).
"""

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nmt_sd.options import parse_training_args  # noqa: E402
from nmt_sd.tasks import TranslationTask  # noqa: E402
from nmt_sd.training.cpu_allocator import setup_cpu_allocator  # noqa: E402
from nmt_sd.training.trainer import Trainer  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="data/multi30k_de_en/bin")
    p.add_argument("--arch", default="transformer_cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--criterion", default="label_smoothed_cross_entropy")
    p.add_argument("--extra", default="")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--updates", type=int, default=4)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument(
        "--by-shape", action="store_true", help="group operators by input shapes"
    )
    a = p.parse_args()
    argv = [
        a.data,
        "--arch",
        a.arch,
        "--share-all-embeddings",
        "--max-tokens",
        str(a.max_tokens),
        "--max-update",
        "1",
        "--label-smoothing",
        "0.1",
        "--criterion",
        a.criterion,
        *a.extra.split(),
    ]
    if a.precision == "bf16":
        argv.append("--bf16")
    args = parse_training_args(argv)
    setup_cpu_allocator(args.cpu_allocator, "cpu")  # as nmt-sd-train does
    torch.manual_seed(1)
    task = TranslationTask.setup_task(args)
    ds = task.load_dataset("train")
    model, crit = task.build_model(args), task.build_criterion(args)
    trainer = Trainer(args, task, model, crit, torch.device("cpu"))
    itr = task.get_batch_iterator(
        ds, a.max_tokens, None, model.max_positions(), 1, True, 1, 0, 8
    )
    gen = itr.next_epoch_itr()
    batches = [next(gen) for _ in range(2 + a.updates)]
    for b in batches[:2]:
        trainer.train_step([b])
    with profile(activities=[ProfilerActivity.CPU], record_shapes=a.by_shape) as prof:
        for b in batches[2:]:
            trainer.train_step([b])
    ntok = sum(b["ntokens"] for b in batches[2:])
    print(
        f"# {a.arch} {a.precision} {a.criterion}: {a.updates} updates, {ntok} target tokens, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        prof.key_averages(group_by_input_shape=a.by_shape).table(
            sort_by="self_cpu_time_total", row_limit=a.rows
        )
    )


if __name__ == "__main__":
    main()

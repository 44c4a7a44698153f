"""Training and generation speed of nmt-sd on this machine.

    python bench/bench_speed.py train --data data/multi30k_de_en/bin \
        --archs transformer_cpu transformer_iwslt_de_en --precisions fp32 bf16
    python bench/bench_speed.py generate --data data/multi30k_de_en/bin \
        --path checkpoints/multi30k_baseline/checkpoint_best.pt --precisions fp32 bf16

    python bench/bench_speed.py ratios --criteria label_smoothed_cross_entropy \
        "rdrop=--rdrop-alpha 5" --precision bf16 --updates 10

    python bench/bench_speed.py ratios --data data/multi30k_multi/bin --criteria \
        label_smoothed_cross_entropy "lssd=--lssd-weight 2.5" --precision bf16 \
        --extra "--task multilingual_translation --lang-pairs de-en,fr-en,cs-en --encoder-langtok src --decoder-langtok"

Every ``train``/``generate`` figure comes from one subprocess per configuration (so peak memory is that
configuration's own): ``train`` times real ``Trainer.train_step`` calls on the same
batches (after warm-up updates) and reports target tokens/s, updates/s and peak RSS;
``generate`` translates the split with beam 5 and reports sentences/s; ``ratios`` times
several criteria in one process, interleaved on the same batches (ratios to the first; LSSD
is timed with every batch distilled, its worst case). With
``--append FILE`` the Markdown table is appended to FILE with the command and commit.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_one(a) -> dict:
    import torch

    from nmt_sd.options import parse_training_args
    from nmt_sd.tasks import TASKS
    from nmt_sd.training.cpu_allocator import setup_cpu_allocator
    from nmt_sd.training.trainer import Trainer

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
        "--no-save",
        "--dropout",
        str(a.dropout),
        *a.extra.split(),
    ]
    if a.precision == "bf16":
        argv.append("--bf16")
    args = parse_training_args(argv)
    # as nmt-sd-train does ("--extra '--cpu-allocator system'")
    setup_cpu_allocator(args.cpu_allocator, "cpu")
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    task = TASKS.get(args.task).setup_task(args)
    ds = task.load_dataset("train")
    model, crit = task.build_model(args), task.build_criterion(args)
    trainer = Trainer(args, task, model, crit, torch.device("cpu"))
    prime_teachers(task, trainer)
    itr = task.get_batch_iterator(
        ds, a.max_tokens, None, model.max_positions(), 1, True, 1, 0, 8
    )
    gen = itr.next_epoch_itr()
    batches = [next(gen) for _ in range(a.warmup + a.updates)]
    for b in batches[: a.warmup]:
        trainer.train_step([b])
    t0 = time.perf_counter()
    for b in batches[a.warmup :]:
        trainer.train_step([b])
    dt = time.perf_counter() - t0
    ntok = sum(b["ntokens"] for b in batches[a.warmup :])
    return {
        "arch": a.arch,
        "criterion": a.criterion,
        "precision": a.precision,
        "threads": a.threads,
        "max_tokens": a.max_tokens,
        "updates": a.updates,
        "tokens_per_s": ntok / dt,
        "updates_per_s": a.updates / dt,
        "ms_per_update": 1000 * dt / a.updates,
        "target_tokens_per_update": ntok / a.updates,
        "peak_rss_mb": peak_rss_mb(),
        "params": sum(p.numel() for p in model.parameters()),
    }


def build_trainer(a, crit: str, flags: str):
    import torch

    from nmt_sd.options import parse_training_args
    from nmt_sd.tasks import TASKS
    from nmt_sd.training.cpu_allocator import setup_cpu_allocator
    from nmt_sd.training.trainer import Trainer

    argv = [
        a.data,
        "--arch",
        a.arch,
        "--share-all-embeddings",
        "--max-tokens",
        str(a.max_tokens),
        "--max-update",
        "1000",
        "--label-smoothing",
        "0.1",
        "--criterion",
        crit,
        "--no-save",
        "--dropout",
        str(a.dropout),
        *a.extra.split(),
        *flags.split(),
    ]
    if a.precision == "bf16":
        argv.append("--bf16")
    args = parse_training_args(argv)
    setup_cpu_allocator(args.cpu_allocator, "cpu")
    torch.manual_seed(1)
    # e.g. --extra "--task multilingual_translation ..."
    task = TASKS.get(args.task).setup_task(args)
    model, criterion = task.build_model(args), task.build_criterion(args)
    trainer = Trainer(args, task, model, criterion, torch.device("cpu"))
    if a.init_from:
        init_from(trainer, a.init_from)
    prime_teachers(task, trainer)
    return task, trainer


def init_from(trainer, path: str) -> None:
    """Start every timed criterion from a trained checkpoint's model weights (and its
    criterion's weights, e.g. a CBBGCA CMLM decoder, when they fit this criterion), so that
    data-dependent costs (CBBGCA's gated fraction) are those of a real run, not of a
    random model. The optimizer and update count start fresh."""
    from nmt_sd.training.checkpoint import load_checkpoint_file, load_model_state

    state = load_checkpoint_file(path)
    load_model_state(trainer.model, state["model"], path)
    own, saved = trainer.criterion.state_dict(), state.get("criterion") or {}
    if own and own.keys() == saved.keys():
        trainer.criterion.load_state_dict(saved)
    elif own:
        print(
            f"init_from: {path} has no weights for this criterion's own modules: they start random",
            file=sys.stderr,
        )


def prime_teachers(task, trainer) -> None:
    """Worst case for criteria with per-language teachers (LSSD): every language gets its
    teacher at epoch 1 and every batch of epoch 3 is distilled (a no-op for the others).
    """
    pairs = getattr(task, "pair_names", None) or [
        f"{task.args.source_lang}-{task.args.target_lang}"
    ]
    trainer.criterion.on_validation_end(
        1, {p: {"loss": 1.0} for p in pairs}, trainer.model, True
    )
    trainer.criterion.on_epoch_begin(3, trainer.model)


def ratios(a) -> list:
    """Step time of every criterion on the same batches, interleaved in one process (so
    machine-speed drift hits all criteria alike); median ms per update and ratio to the first.
    The first warm-up batch counts each step's matmul FLOPs (forward and backward, with
    torch's FlopCounterMode): the FLOP ratio is the floor a time ratio can reach when
    matmuls dominate."""
    import statistics

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(a.threads)
    specs = [spec.partition("=")[::2] for spec in a.criteria]
    built = [build_trainer(a, crit, flags) for crit, flags in specs]
    task = built[0][0]
    ds = task.load_dataset("train")
    itr = task.get_batch_iterator(
        ds, a.max_tokens, None, built[0][1].model.max_positions(), 1, True, 1, 0, 8
    )
    gen = itr.next_epoch_itr()
    batches = [next(gen) for _ in range(a.warmup + a.updates)]
    times = [[] for _ in specs]
    flops = [0] * len(specs)
    for i, b in enumerate(batches):
        for j, (_, trainer) in enumerate(built):
            if (
                i == 0
            ):  # the first warm-up batch also counts the step's matmul FLOPs (not timed)
                with FlopCounterMode(display=False) as counter:
                    trainer.train_step([b])
                flops[j] = counter.get_total_flops()
                continue
            t0 = time.perf_counter()
            trainer.train_step([b])
            if i >= a.warmup:
                times[j].append(time.perf_counter() - t0)
    base = statistics.median(times[0])
    ntok = statistics.mean(b["ntokens"] for b in batches[a.warmup :])
    return [
        {
            "criterion": crit,
            "flags": flags,
            "precision": a.precision,
            "arch": a.arch,
            "ms_per_update": 1000 * statistics.median(t),
            "ratio": statistics.median(t) / base,
            "tokens_per_s": ntok / statistics.median(t),
            "gflop": f / 1e9,
            "flop_ratio": f / flops[0],
        }
        for (crit, flags), t, f in zip(specs, times, flops)
    ]


RATIO_COLS = [
    ("arch", lambda r: r["arch"]),
    ("criterion", lambda r: r["criterion"]),
    ("flags", lambda r: f"`{r['flags']}`" if r["flags"] else ""),
    ("precision", lambda r: r["precision"]),
    ("median ms/update", lambda r: f"{r['ms_per_update']:.0f}"),
    ("tokens/s", lambda r: f"{r['tokens_per_s']:.0f}"),
    ("ratio to first", lambda r: f"{r['ratio']:.2f}"),
    ("matmul GFLOP/update", lambda r: f"{r['gflop']:.0f}"),
    ("FLOP ratio", lambda r: f"{r['flop_ratio']:.2f}"),
]


def generate_one(a) -> dict:
    import torch

    from nmt_sd.generation.inference import decode_batch
    from nmt_sd.generation.load import (
        half_precision_linears,
        inference_autocast,
        load_model_for_inference,
    )
    from nmt_sd.generation.search import special_ids

    torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    model, task, _ = load_model_for_inference(a.path, a.data)
    half_precision_linears(model, a.precision == "bf16", False)
    ds = task.load_dataset(a.subset)
    itr = task.get_batch_iterator(
        ds, a.max_tokens, None, model.max_positions(), shuffle=False
    )
    gargs = argparse.Namespace(
        beam=a.beam,
        nbest=1,
        max_len_a=1.2,
        max_len_b=10,
        min_len=1,
        lenpen=1.0,
        unkpen=0.0,
    )
    ids = special_ids(task.tgt_dict)
    t0 = time.perf_counter()
    n = 0
    for sample in itr.next_epoch_itr():
        decode_batch(
            model,
            sample,
            gargs,
            ids,
            inference_autocast(device, a.precision == "bf16", False),
        )
        n += len(sample["id"])
    dt = time.perf_counter() - t0
    return {
        "subset": a.subset,
        "beam": a.beam,
        "precision": a.precision,
        "threads": a.threads,
        "sentences": n,
        "seconds": dt,
        "sentences_per_s": n / dt,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_child(mode: str, a, **over) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), mode, "--child"]
    for k, v in {**vars(a), **over}.items():
        if (
            k in ("mode", "child", "append", "archs", "precisions", "criteria")
            or v is None
            or v is False
        ):
            continue
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows, cols) -> str:
    head = "| " + " | ".join(c for c, _ in cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join(
        "| " + " | ".join(f(r) for _, f in cols) + " |\n" for r in rows
    )


TRAIN_COLS = [
    ("arch", lambda r: r["arch"]),
    ("criterion", lambda r: r["criterion"]),
    ("precision", lambda r: r["precision"]),
    ("threads", lambda r: str(r["threads"])),
    ("tgt tokens/update", lambda r: f"{r['target_tokens_per_update']:.0f}"),
    ("tokens/s", lambda r: f"{r['tokens_per_s']:.0f}"),
    ("updates/s", lambda r: f"{r['updates_per_s']:.2f}"),
    ("ms/update", lambda r: f"{r['ms_per_update']:.0f}"),
    ("peak RSS MB", lambda r: f"{r['peak_rss_mb']:.0f}"),
]
GEN_COLS = [
    ("subset", lambda r: r["subset"]),
    ("beam", lambda r: str(r["beam"])),
    ("precision", lambda r: r["precision"]),
    ("threads", lambda r: str(r["threads"])),
    ("sentences", lambda r: str(r["sentences"])),
    ("seconds", lambda r: f"{r['seconds']:.1f}"),
    ("sentences/s", lambda r: f"{r['sentences_per_s']:.1f}"),
    ("peak RSS MB", lambda r: f"{r['peak_rss_mb']:.0f}"),
]


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("mode", choices=["train", "generate", "ratios"])
    p.add_argument("--data", default=os.path.join(REPO, "data/multi30k_de_en/bin"))
    p.add_argument("--archs", nargs="+", default=["transformer_cpu"])
    p.add_argument("--arch", default="transformer_cpu")
    p.add_argument(
        "--criteria",
        nargs="+",
        default=["label_smoothed_cross_entropy"],
        help="criteria to time, each NAME or 'NAME=FLAGS' (e.g. 'rdrop=--rdrop-alpha 5')",
    )
    p.add_argument("--criterion", default="label_smoothed_cross_entropy")
    p.add_argument("--extra", default="", help="extra nmt-sd-train flags (train mode)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--path", help="checkpoint (generate mode)")
    p.add_argument(
        "--init-from",
        metavar="CKPT",
        help="ratios: start every criterion from this checkpoint's weights (default: random init)",
    )
    p.add_argument("--subset", default="test")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--child", action="store_true")
    p.add_argument(
        "--append", metavar="FILE", help="append the table to this Markdown file"
    )
    a = p.parse_args()
    if a.child:
        print(json.dumps(train_one(a) if a.mode == "train" else generate_one(a)))
        return
    if a.mode == "ratios":
        text = table(ratios(a), RATIO_COLS)
    elif a.mode == "train":
        rows = []
        for arch in a.archs:
            for spec in a.criteria:
                crit, _, flags = spec.partition("=")
                for prec in a.precisions:
                    extra = " ".join(x for x in (a.extra, flags) if x)
                    rows.append(
                        run_child(
                            "train",
                            a,
                            arch=arch,
                            precision=prec,
                            criterion=crit,
                            extra=extra or None,
                        )
                    )
        text = table(rows, TRAIN_COLS)
    else:
        rows = [run_child("generate", a, precision=prec) for prec in a.precisions]
        text = table(rows, GEN_COLS)
    print(text)
    if a.append:
        commit = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        cmd = "python bench/bench_speed.py " + " ".join(sys.argv[1:])
        with open(a.append, "a", encoding="utf-8") as f:
            f.write(
                f"\n### {a.mode}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}\n\n"
            )
            f.write(f"```\n{cmd}\n```\n\n{text}")


if __name__ == "__main__":
    main()

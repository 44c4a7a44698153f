"""Before/now A/B of one CPU training-step change, interleaved on the same batches in one
process (so machine drift hits both alike). "before" is the implementation at git revision
--before (loaded from git, swapped in for its steps); "now" is the package's code.

    python bench/ab_cpu_step.py attention --precision bf16 --max-tokens 2048
    python bench/ab_cpu_step.py attention --arch transformer_iwslt_de_en --max-tokens 4096
    python bench/ab_cpu_step.py ce --precision bf16
    python bench/ab_cpu_step.py multipass --criterion intra_distillation \
        --flags "--intra-k 3 --intra-alpha 5 --intra-adaptive"
    python bench/ab_cpu_step.py softce --criterion seer
    python bench/ab_cpu_step.py seer --criterion seer

Changes: ``attention`` (explicit bf16 matmuls + float32 softmax on CPU, mask dropout);
``ce`` (fused label-smoothed CE that makes its gradient in the forward pass);
``multipass`` (the multi-pass CE + divergence told the loss weights, gradient in forward);
``softce`` (fused soft CE, gradient in forward); ``seer`` (the two seer streams
interleaved by sentence, encoder attention grouped: no copy of the encoder output).
Prints the median ms per update of each side and the speedup (before / now).
"""

import argparse
import contextlib
import functools
import os
import statistics
import subprocess
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from bench.bench_speed import build_trainer  # noqa: E402


@functools.lru_cache(maxsize=None)
def module_at(rev: str, path: str, name: str):
    """The package module at ``path`` as it was at git revision ``rev`` (a fresh module object,
    importing the rest of the package as it is now)."""
    src = subprocess.run(
        ["git", "-C", REPO, "show", f"{rev}:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    mod = types.ModuleType(name)
    from nmt_sd.registry import Registry

    with patched(
        Registry, register=lambda self, key: lambda cls: cls
    ):  # no second registration
        exec(compile(src, f"{rev}:{path}", "exec"), mod.__dict__)
    return mod


@contextlib.contextmanager
def patched(module, **funcs):
    saved = {name: getattr(module, name) for name in funcs}
    for name, fn in funcs.items():
        setattr(module, name, fn)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)


def before(change: str, rev: str):
    """A context manager that swaps in ``rev``'s implementation of ``change``."""
    if change == "attention":
        from nmt_sd.models import transformer as tr

        old = module_at(rev, "nmt_sd/models/transformer.py", "old_transformer")
        return patched(tr, dropout=old.dropout), patched(
            tr.MultiheadAttention, forward=old.MultiheadAttention.forward
        )
    if change == "ce":
        from nmt_sd.criterions import functional as fn

        old = module_at(rev, "nmt_sd/criterions/functional.py", "old_functional")
        return (patched(fn, _FusedLabelSmoothedCE=old._FusedLabelSmoothedCE),)
    if change == "multipass":
        from nmt_sd.criterions import objective

        old = module_at(rev, "nmt_sd/criterions/functional.py", "old_functional")

        def unhinted(*a, weights=None, **kw):
            return old.multi_pass_ce_from_logits(*a, **kw)

        return (patched(objective, multi_pass_ce_from_logits=unhinted),)
    if change == "softce":
        from nmt_sd.criterions import functional as fn

        old = module_at(rev, "nmt_sd/criterions/functional.py", "old_functional")
        return (patched(fn, _SoftCEFromLogits=old._SoftCEFromLogits),)
    if change == "seer":
        from nmt_sd.criterions import seer

        old = module_at(rev, "nmt_sd/criterions/seer.py", "old_seer")
        return (patched(seer.SeerDecoder, forward=old.SeerDecoder.forward),)
    raise SystemExit(f"unknown change {change}")


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("change", choices=["attention", "ce", "multipass", "softce", "seer"])
    p.add_argument(
        "--before", default="68446f6", help="git revision of the 'before' code"
    )
    p.add_argument("--data", default=os.path.join(REPO, "data/multi30k_de_en/bin"))
    p.add_argument("--arch", default="transformer_cpu")
    p.add_argument("--criterion", default="label_smoothed_cross_entropy")
    p.add_argument(
        "--flags", default="", help="criterion flags, e.g. '--rdrop-alpha 5'"
    )
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--updates", type=int, default=10)
    a = p.parse_args()
    a.extra = ""
    torch.set_num_threads(a.threads)
    task, trainer = build_trainer(a, a.criterion, a.flags)
    ds = task.load_dataset("train")
    itr = task.get_batch_iterator(
        ds, a.max_tokens, None, trainer.model.max_positions(), 1, True, 1, 0, 8
    )
    gen = itr.next_epoch_itr()
    batches = [next(gen) for _ in range(a.warmup + a.updates)]
    times = {"before": [], "now": []}
    for i, b in enumerate(batches):
        for side in ("before", "now") if i % 2 == 0 else ("now", "before"):
            patches = before(a.change, a.before) if side == "before" else ()
            with contextlib.ExitStack() as stack:
                for patch in patches:
                    stack.enter_context(patch)
                t0 = time.perf_counter()
                trainer.train_step([b])
                dt = time.perf_counter() - t0
            if i >= a.warmup:
                times[side].append(dt)
    ms = {s: 1000 * statistics.median(t) for s, t in times.items()}
    print(
        f"{a.change} {a.arch} {a.precision} max-tokens {a.max_tokens} threads {a.threads} "
        f"criterion {a.criterion} {a.flags}: before {ms['before']:.0f} ms, now {ms['now']:.0f} ms, "
        f"speedup {ms['before'] / ms['now']:.2f}x"
    )


if __name__ == "__main__":
    main()

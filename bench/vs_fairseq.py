"""nmt-sd against fairseq 0.12 on this machine, side by side: training target tokens/s and
beam-5 generation sentences/s, the two tools alternating in one run of this script.

fairseq is not a dependency of nmt-sd and none of its code is here: install it yourself in
a separate environment (fairseq 0.12.2 needs small patches on Python 3.11 / torch >= 2.6;
docs/benchmarks.md lists them), binarize the same SentencePiece text with the same
dict.txt (fairseq-preprocess --srcdict data/multi30k_de_en/bin/dict.de.txt
--joined-dictionary ...), then:

    # training: same arch, hyperparameters, --max-tokens, threads and seed for both tools
    python bench/vs_fairseq.py train --fairseq-bin /work/fairseq_env/bin \\
        --fairseq-data /work/fairseq_data/multi30k_de_en --arch transformer_iwslt_de_en --threads 2

    # generation: one nmt-sd checkpoint, converted for fairseq (its python runs the conversion)
    /work/fairseq_env/bin/python bench/vs_fairseq.py convert --checkpoint CKPT.pt --out fs.pt
    python bench/vs_fairseq.py generate --fairseq-bin /work/fairseq_env/bin \\
        --fairseq-data /work/fairseq_data/multi30k_de_en --checkpoint CKPT.pt --fairseq-checkpoint fs.pt

Training speed is the median of the per-update ``wps`` each tool logs (``--log-interval 1``)
after the warm-up updates; generation speed is what each tool reports for the whole split
with the same timer: the search alone (fairseq-generate's "Translated ... sentences/s" times
its inference steps; nmt-sd-generate reports that and the whole loop), and both outputs are scored with sacreBLEU against the same
references (equal scores show the two tools ran the same model and search). With --threads
N > 1, nmt-sd also runs as N processes of one thread each (``--inter-threads N``).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WPS = re.compile(r"\bwps[ =]([0-9.]+)")
WPB = re.compile(r"\bwpb[ =]([0-9.]+)")
UPDATES = re.compile(r"\bnum_updates[ =]([0-9]+)")
# end-of-epoch averages (warm-up included): not per update
SUMMARY = re.compile(r"\bepoch \d+ \|")
# The recipe hyperparameters, spelled the same for both tools (fairseq's flag names).
TRAIN_FLAGS = (
    "--share-all-embeddings --optimizer adam --adam-betas (0.9,0.98) --clip-norm 0.0 "
    "--lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --dropout 0.3 "
    "--weight-decay 0.0001 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 "
    "--log-interval 1 --disable-validation --no-save --seed 1"
).split()
# nmt-sd model arguments -> fairseq's (same names; these are the ones the two share).
MODEL_KEYS = (
    "encoder_embed_dim",
    "encoder_ffn_embed_dim",
    "encoder_layers",
    "encoder_attention_heads",
    "encoder_normalize_before",
    "decoder_embed_dim",
    "decoder_ffn_embed_dim",
    "decoder_layers",
    "decoder_attention_heads",
    "decoder_normalize_before",
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "activation_fn",
    "share_all_embeddings",
    "share_decoder_input_output_embed",
    "no_scale_embedding",
    "layernorm_embedding",
    "max_source_positions",
    "max_target_positions",
)


def run(cmd, threads: int) -> str:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"vs_fairseq: {' '.join(cmd[:2])} failed:\n{res.stderr[-3000:]}")
    return res.stdout + res.stderr


def per_update_wps(log: str, warmup: int):
    """Median wps and mean target tokens per update (wpb) over the log lines of the
    updates after ``warmup`` (one line per update)."""
    rows = [
        (int(u.group(1)), float(w.group(1)), float(b.group(1)))
        for line in log.splitlines()
        if (w := WPS.search(line))
        and (u := UPDATES.search(line))
        and (b := WPB.search(line))
        and not SUMMARY.search(line)
    ]
    rows = [(w, b) for u, w, b in rows if u > warmup]
    if not rows:
        sys.exit("vs_fairseq: no per-update wps lines in the log")
    return statistics.median(w for w, _ in rows), statistics.mean(b for _, b in rows)


def train(a) -> None:
    n = str(a.warmup + a.updates)
    common = [
        "--arch",
        a.arch,
        "--max-tokens",
        str(a.max_tokens),
        "--max-update",
        n,
        *TRAIN_FLAGS,
    ]
    sides = {
        "fairseq fp32": [
            os.path.join(a.fairseq_bin, "fairseq-train"),
            a.fairseq_data,
            "--cpu",
            "--num-workers",
            "0",
            "--log-format",
            "simple",
            *common,
        ],
        "nmt-sd fp32": [
            "nmt-sd-train",
            a.data,
            "--num-threads",
            str(a.threads),
            *common,
        ],
        "nmt-sd bf16": [
            "nmt-sd-train",
            a.data,
            "--num-threads",
            str(a.threads),
            "--bf16",
            *common,
        ],
    }
    got, wpb = {k: [] for k in sides}, {}
    for r in range(a.rounds):  # alternate the tools so machine drift hits them alike
        for name, cmd in sides.items():
            wps, wpb[name] = per_update_wps(run(cmd, a.threads), a.warmup)
            got[name].append(wps)
            print(
                f"round {r + 1}: {name}: {wps:.0f} target tokens/s ({wpb[name]:.0f} per update)",
                flush=True,
            )
    ref = statistics.median(got["fairseq fp32"])
    print(
        f"\n{a.arch}, --max-tokens {a.max_tokens}, {a.threads} threads, median of {a.rounds} rounds "
        f"x {a.updates} updates (after {a.warmup} warm-up):\n"
    )
    print(
        "| tool | precision | target tokens/update | target tokens/s (rounds) | vs fairseq fp32 |\n|---|---|---|---|---|"
    )
    for name, v in got.items():
        tool, prec = name.split()
        print(
            f"| {tool} | {prec} | {wpb[name]:.0f} | {statistics.median(v):.0f} ({', '.join(f'{x:.0f}' for x in v)}) | "
            f"{statistics.median(v) / ref:.2f}x |"
        )


def sacrebleu_of(hyps, ref_path: str) -> str:
    import sacrebleu

    with open(ref_path, encoding="utf-8") as f:
        refs = [line.rstrip("\n") for line in f]
    return f"{sacrebleu.corpus_bleu(hyps, [refs]).score:.2f}"


def generate(a) -> None:
    ref = os.path.join(
        os.path.dirname(os.path.normpath(a.data)), "raw", f"{a.subset}.{a.tgt}"
    )
    gen = [
        "--gen-subset",
        a.subset,
        "--beam",
        str(a.beam),
        "--lenpen",
        "1.0",
        "--max-len-a",
        "1.2",
        "--max-len-b",
        "10",
        "--max-tokens",
        str(a.max_tokens),
        "--remove-bpe",
        "sentencepiece",
    ]
    runs = [("fp32", 1), ("bf16", 1)]
    if a.threads > 1:  # also a.threads processes of one thread each (--inter-threads)
        runs += [("fp32", a.threads), ("bf16", a.threads)]
    label = {
        run: f"nmt-sd {run[0]}" + (f"/inter{run[1]}" if run[1] > 1 else "")
        for run in runs
    }
    layout = {
        "fairseq fp32": f"1 x {a.threads}",
        **{label[r]: f"{r[1]} x {a.threads // r[1]}" for r in runs},
    }
    got = {name: [] for name in layout}
    bleu = {}
    for r in range(a.rounds):
        log = run(
            [
                os.path.join(a.fairseq_bin, "fairseq-generate"),
                a.fairseq_data,
                "--cpu",
                "--path",
                a.fairseq_checkpoint,
                *gen,
            ],
            a.threads,
        )
        got["fairseq fp32"].append(
            float(re.search(r"Translated .* \(([0-9.]+) sentences/s", log).group(1))
        )
        hyps = dict(re.findall(r"^D-(\d+)\t[^\t]*\t(.*)$", log, re.M))
        bleu["fairseq fp32"] = sacrebleu_of(
            [hyps[str(i)] for i in range(len(hyps))], ref
        )
        for prec, inter in runs:
            name = label[prec, inter]
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [
                    "nmt-sd-generate",
                    a.data,
                    "--path",
                    a.checkpoint,
                    "--num-threads",
                    str(a.threads),
                    "--inter-threads",
                    str(inter),
                    "--results-path",
                    tmp,
                    "--quiet",
                    *gen,
                ]
                log = run(cmd + (["--bf16"] if prec == "bf16" else []), a.threads)
                with open(
                    os.path.join(tmp, f"{a.subset}.hyp.detok"), encoding="utf-8"
                ) as f:
                    bleu[name] = sacrebleu_of([line.rstrip("\n") for line in f], ref)
            got[name].append(
                float(
                    re.search(
                        r"search alone [0-9.]+s, ([0-9.]+) sentences/s", log
                    ).group(1)
                )
            )
        print(
            f"round {r + 1}: "
            + ", ".join(f"{k} {v[-1]:.1f} sent/s" for k, v in got.items()),
            flush=True,
        )
    base = statistics.median(got["fairseq fp32"])
    print(
        f"\n{a.subset}, beam {a.beam}, --max-tokens {a.max_tokens}, {a.threads} threads, median of {a.rounds} rounds:\n"
    )
    print(
        "| tool | precision | processes x threads | sentences/s (rounds) | vs fairseq fp32 | sacreBLEU |\n"
        "|---|---|---|---|---|---|"
    )
    for name, v in got.items():
        tool, prec = name.split()
        print(
            f"| {tool} | {prec.split('/')[0]} | {layout[name]} | {statistics.median(v):.1f} ({', '.join(f'{x:.1f}' for x in v)}) | "
            f"{statistics.median(v) / base:.2f}x | {bleu[name]} |"
        )


def convert(a) -> None:
    """An nmt-sd checkpoint as a fairseq 0.12 one (run with fairseq's python): the
    parameter names are fairseq's already; the arguments are rebuilt with fairseq's parser.
    """
    import torch
    from fairseq import options

    ck = torch.load(a.checkpoint, map_location="cpu", weights_only=False)
    margs = ck["args"] if isinstance(ck["args"], dict) else vars(ck["args"])
    argv = [a.fairseq_data, "--arch", "transformer", "--task", "translation"]
    for key in MODEL_KEYS:
        val = margs.get(key)
        flag = "--" + key.replace("_", "-")
        if isinstance(val, bool):
            argv += [flag] if val else []
        elif val is not None:
            argv += [flag, str(val)]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    state = {
        "args": args,
        "model": ck["model"],
        "extra_state": {"train_iterator": {"epoch": 1}},
        "optimizer_history": [
            {
                "criterion_name": "LabelSmoothedCrossEntropyCriterion",
                "optimizer_name": "Adam",
                "lr_scheduler_state": {"best": None},
                "num_updates": ck.get("num_updates", 0),
            }
        ],
    }
    torch.save(state, a.out)
    print(f"wrote {a.out}")


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("mode", choices=["train", "generate", "convert"])
    p.add_argument(
        "--fairseq-bin", help="folder holding fairseq-train / fairseq-generate"
    )
    p.add_argument(
        "--fairseq-data", help="fairseq-preprocess output of the same text and dict"
    )
    p.add_argument("--data", default=os.path.join(REPO, "data/multi30k_de_en/bin"))
    p.add_argument("--arch", default="transformer_iwslt_de_en")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--updates", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--checkpoint", help="nmt-sd checkpoint (generate, convert)")
    p.add_argument(
        "--fairseq-checkpoint", help="the same model converted for fairseq (generate)"
    )
    p.add_argument("--out", help="converted checkpoint path (convert)")
    p.add_argument("--subset", default="test")
    p.add_argument("--tgt", default="en")
    p.add_argument("--beam", type=int, default=5)
    a = p.parse_args()
    {"train": train, "generate": generate, "convert": convert}[a.mode](a)


if __name__ == "__main__":
    main()

"""What the decoding commands (nmt-sd-generate, nmt-sd-interactive, nmt-sd-seqkd) share:
their flags (fairseq's names), the device setup, decoding one batch (beam search, or
greedy at beam 1) and fairseq's S-/T-/H-/D-/P- output lines."""

import os

import torch

from nmt_sd.errors import NmtSdError
from nmt_sd.generation.greedy import greedy_search
from nmt_sd.generation.load import inference_autocast
from nmt_sd.generation.search import beam_search
from nmt_sd.training.trainer import move_to


def add_generation_args(p) -> None:
    """Flags shared by nmt-sd-generate and nmt-sd-interactive (fairseq's names)."""
    p.add_argument("--path", required=True, metavar="CKPT", help="model checkpoint")
    p.add_argument("-s", "--source-lang", metavar="SRC")
    p.add_argument("-t", "--target-lang", metavar="TGT")
    g = p.add_argument_group("Generation")
    g.add_argument(
        "--beam", type=int, default=5, metavar="N", help="beam size; 1 = greedy"
    )
    g.add_argument("--nbest", type=int, default=1, metavar="N")
    g.add_argument("--lenpen", type=float, default=1.0)
    g.add_argument("--max-len-a", type=float, default=0.0)
    g.add_argument("--max-len-b", type=int, default=200)
    g.add_argument("--min-len", type=int, default=1)
    g.add_argument("--unkpen", type=float, default=0.0)
    g.add_argument(
        "--remove-bpe",
        "--post-process",
        nargs="?",
        const="@@ ",
        default=None,
        help="'sentencepiece', 'subword_nmt' or a BPE suffix such as '@@ '",
    )
    g.add_argument("--skip-invalid-size-inputs-valid-test", action="store_true")
    g.add_argument("--cpu", action="store_true")
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--fp16", action="store_true")
    g.add_argument("--num-threads", type=int, default=None, metavar="N")


def add_batching_args(p) -> None:
    """--max-tokens and --batch-size (alias --max-sentences) for the decoding commands."""
    p.add_argument("--max-tokens", type=int, default=None, metavar="N")
    p.add_argument(
        "--batch-size",
        "--max-sentences",
        type=int,
        default=None,
        metavar="N",
        dest="batch_size",
    )


def add_inter_threads_arg(p) -> None:
    """For the tools that decode a whole split (nmt-sd-generate, nmt-sd-seqkd)."""
    p.add_argument(
        "--inter-threads",
        type=int,
        default=1,
        metavar="N",
        help="CPU: decode N batches at once in N processes, each with --num-threads/N "
        "threads (CTranslate2's inter_threads); the output is unchanged (default: 1)",
    )


def setup_inference_device(args) -> torch.device:
    use_cuda = torch.cuda.is_available() and not args.cpu
    if args.fp16 and not use_cuda:
        raise NmtSdError("--fp16 needs a CUDA device; on CPU use --bf16")
    inter = getattr(args, "inter_threads", 1)
    if inter < 1:
        raise NmtSdError(f"--inter-threads must be >= 1, got {inter}")
    if inter > 1 and use_cuda:
        raise NmtSdError(
            "--inter-threads is for CPU decoding; on a GPU use one process (or --cpu)"
        )
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    return torch.device("cuda" if use_cuda else "cpu")


def decode_sample(model, sample, *, args, ids, device):
    """Hypotheses of one batch (picklable with functools.partial, for --inter-threads)."""
    autocast = inference_autocast(device, args.bf16, args.fp16)
    return decode_batch(model, move_to(sample, device), args, ids, autocast)


def decode_batch(model, sample, args, ids, autocast):
    net = sample["net_input"]
    kw = dict(
        max_len_a=args.max_len_a,
        max_len_b=args.max_len_b,
        min_len=args.min_len,
        lenpen=args.lenpen,
        unk_penalty=args.unkpen,
        **ids,
    )
    with autocast:
        if args.beam == 1:
            return greedy_search(model, net["src_tokens"], net["src_lengths"], **kw)
        return beam_search(
            model,
            net["src_tokens"],
            net["src_lengths"],
            beam=args.beam,
            nbest=args.nbest,
            **kw,
        )


def decoder_start(task) -> int:
    """The decoder's first symbol: </s>, or the target language tag of a multilingual
    model trained with --decoder-langtok (its one -s/-t pair)."""
    pair = getattr(task, "gen_pair", None)
    return task.decoder_start(pair[1]) if pair else task.tgt_dict.eos()


def write_lines(path: str, lines) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def hypothesis_lines(sid, sample_i, hyps, src_dict, tgt_dict, args, has_target):
    """fairseq's per-sentence block: S-, T-, then H-, D-, P- per hypothesis."""
    src = src_dict.string(sample_i["src"], args.remove_bpe, unk_string="<unk>")
    lines = [f"S-{sid}\t{src}"]
    if has_target:
        lines.append(
            f"T-{sid}\t{tgt_dict.string(sample_i['tgt'], args.remove_bpe, unk_string='<unk>')}"
        )
    for h in hyps:
        text = tgt_dict.string(h["tokens"], args.remove_bpe, unk_string="<unk>")
        lines.append(f"H-{sid}\t{h['score']:.6f}\t{text}")
        lines.append(f"D-{sid}\t{h['score']:.6f}\t{text}")
        pos = " ".join(f"{s:.4f}" for s in h["positional_scores"].tolist())
        lines.append(f"P-{sid}\t{pos}")
    return lines

"""nmt-sd-interactive DATA --path CKPT: translate raw sentences from stdin (fairseq-interactive).

With ``--sentencepiece-model`` the input is raw text (encoded with that model) and the
output is decoded; without it, input lines must already be in the dictionary's pieces.
"""

import logging
import sys

import numpy as np

from nmt_sd.cli.common import run_cli
from nmt_sd.data.dataset import collate
from nmt_sd.errors import NmtSdError
from nmt_sd.generation.inference import (
    add_generation_args,
    decode_batch,
    decoder_start,
    hypothesis_lines,
    setup_inference_device,
)
from nmt_sd.generation.load import (
    half_precision_linears,
    inference_autocast,
    load_model_for_inference,
)
from nmt_sd.generation.search import special_ids
from nmt_sd.options import ArgumentParser

logger = logging.getLogger("nmt_sd.interactive")


def read_buffers(stream, size: int):
    buf = []
    for line in stream:
        buf.append(line.rstrip("\r\n"))
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def get_parser():
    p = ArgumentParser(prog="nmt-sd-interactive", description=__doc__)
    p.add_argument("data", help="directory holding dict.SRC.txt and dict.TGT.txt")
    p.add_argument(
        "--buffer-size", type=int, default=1, metavar="N", help="sentences per batch"
    )
    p.add_argument("--bpe", choices=["sentencepiece"], default=None)
    p.add_argument("--sentencepiece-model", metavar="FILE")
    p.add_argument("--input", default="-", help="file to translate (default: stdin)")
    add_generation_args(p)
    return p


def load_spm(args):
    """The --sentencepiece-model processor (which implies --remove-bpe sentencepiece)."""
    if not args.sentencepiece_model:
        return None
    import sentencepiece

    try:
        spm = sentencepiece.SentencePieceProcessor(model_file=args.sentencepiece_model)
    except (OSError, RuntimeError) as e:
        raise NmtSdError(
            f"cannot load --sentencepiece-model {args.sentencepiece_model}: {e}"
        )
    args.remove_bpe = args.remove_bpe or "sentencepiece"
    return spm


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    spm = load_spm(args)
    device = setup_inference_device(args)
    model, task, _ = load_model_for_inference(
        args.path, args.data, args.source_lang, args.target_lang, device
    )
    half_precision_linears(model, args.bf16, args.fp16)
    ids = {**special_ids(task.tgt_dict), "bos": decoder_start(task)}
    autocast = inference_autocast(device, args.bf16, args.fp16)
    stream = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")
    if sys.stdin.isatty() and args.input == "-":
        print("Type the input sentence and press return:", file=sys.stderr)
    start, dicts = 0, (task.src_dict, task.tgt_dict)
    for lines in read_buffers(stream, args.buffer_size):
        pieces = [" ".join(spm.encode(x, out_type=str)) if spm else x for x in lines]
        sources = [encode_source(task, x) for x in pieces]
        items = [{"id": i, "source": x, "target": None} for i, x in enumerate(sources)]
        sample = collate(items, task.src_dict.pad(), task.src_dict.eos())
        net_input = {k: v.to(device) for k, v in sample["net_input"].items()}
        sample = {"id": sample["id"], "net_input": net_input}
        hyps = decode_batch(model, sample, args, ids, autocast)
        for i, line in enumerate(lines):
            sid, nbest = start + i, hyps[i][: args.nbest]
            block = hypothesis_lines(
                sid, {"src": sources[i]}, nbest, *dicts, args, False
            )
            print("\n".join([f"S-{sid}\t{line}", *block[1:]]))  # S-: the raw line
            sys.stdout.flush()
        start += len(lines)


def encode_source(task, line: str):
    """Token ids of a source line, with the source language tag of a multilingual model."""
    ids = task.src_dict.encode_line(line)
    pair = getattr(task, "gen_pair", None)
    tag = task.encoder_tag(*pair) if pair else None
    return ids if tag is None else np.concatenate([[tag], ids])


def cli_main(argv=None) -> None:
    run_cli("nmt-sd-interactive", main, argv)


if __name__ == "__main__":
    cli_main()

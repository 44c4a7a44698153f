"""nmt-sd-generate DATA --path CKPT: translate a binarized split (fairseq-generate's
flags and S-/T-/H-/D-/P- lines), write the detokenized hypotheses, print sacreBLEU."""
import functools
import logging
import os
import sys
import time

import torch

from nmt_sd.cli.common import run_cli
from nmt_sd.errors import NmtSdError
from nmt_sd.generation.greedy import greedy_search
from nmt_sd.generation.load import half_precision_linears, inference_autocast, load_model_for_inference
from nmt_sd.generation.parallel import decode_batches
from nmt_sd.generation.scoring import format_result, score_corpus
from nmt_sd.generation.search import beam_search, special_ids
from nmt_sd.options import ArgumentParser, add_generation_args, add_inter_threads_arg
from nmt_sd.training.trainer import move_to

logger = logging.getLogger("nmt_sd.generate")


def get_parser():
    p = ArgumentParser(prog="nmt-sd-generate", description="Translate a binarized split.")
    p.add_argument("data", help="directory of binarized data (from nmt-sd-preprocess)")
    p.add_argument("--gen-subset", default="test", metavar="SPLIT")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N")
    p.add_argument("--batch-size", "--max-sentences", type=int, default=None, metavar="N", dest="batch_size")
    p.add_argument("--results-path", metavar="DIR",
                   help="write generate-SPLIT.txt and SPLIT.hyp.detok here (else lines go to stdout)")
    p.add_argument("--scoring", choices=["sacrebleu", "tokenized_bleu", "none"], default="sacrebleu")
    p.add_argument("--quiet", action="store_true", help="only print the score")
    add_generation_args(p)
    add_inter_threads_arg(p)
    return p


def hypothesis_lines(sid, sample_i, hyps, src_dict, tgt_dict, args, has_target):
    """fairseq's per-sentence block: S-, T-, then H-, D-, P- per hypothesis."""
    src = src_dict.string(sample_i["src"], args.remove_bpe, unk_string="<unk>")
    lines = [f"S-{sid}\t{src}"]
    if has_target:
        lines.append(f"T-{sid}\t{tgt_dict.string(sample_i['tgt'], args.remove_bpe, unk_string='<unk>')}")
    for h in hyps:
        text = tgt_dict.string(h["tokens"], args.remove_bpe, unk_string="<unk>")
        lines.append(f"H-{sid}\t{h['score']:.6f}\t{text}")
        lines.append(f"D-{sid}\t{h['score']:.6f}\t{text}")
        pos = " ".join(f"{s:.4f}" for s in h["positional_scores"].tolist())
        lines.append(f"P-{sid}\t{pos}")
    return lines


def decode_sample(model, sample, *, args, ids, device):
    """Hypotheses of one batch (picklable with functools.partial, for --inter-threads)."""
    autocast = inference_autocast(device, args.bf16, args.fp16)
    return decode_batch(model, move_to(sample, device), args, ids, autocast)


def decode_batch(model, sample, args, ids, autocast):
    net = sample["net_input"]
    kw = dict(max_len_a=args.max_len_a, max_len_b=args.max_len_b, min_len=args.min_len,
              lenpen=args.lenpen, unk_penalty=args.unkpen, **ids)
    with autocast:
        if args.beam == 1:
            return greedy_search(model, net["src_tokens"], net["src_lengths"], **kw)
        return beam_search(model, net["src_tokens"], net["src_lengths"], beam=args.beam, nbest=args.nbest, **kw)


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    device = setup_inference_device(args)
    model, task, _ = load_model_for_inference(args.path, args.data, args.source_lang, args.target_lang, device)
    half_precision_linears(model, args.bf16, args.fp16)
    ds = task.load_dataset(args.gen_subset)
    has_target = ds.tgt is not None
    itr = task.get_batch_iterator(ds, args.max_tokens or 12000, args.batch_size, model.max_positions(),
                                  shuffle=False, skip_invalid=args.skip_invalid_size_inputs_valid_test)
    out_f = sys.stdout
    if args.results_path:
        os.makedirs(args.results_path, exist_ok=True)
        out_f = open(os.path.join(args.results_path, f"generate-{args.gen_subset}.txt"), "w", encoding="utf-8")
    ids = {**special_ids(task.tgt_dict), "bos": decoder_start(task)}
    results, t0, done, last_log, stats = {}, time.time(), 0, time.time(), {}
    decode = functools.partial(decode_sample, args=args, ids=ids, device=device)
    batches = list(itr.next_epoch_itr())
    for sample, hyps in decode_batches(model, batches, decode, args.inter_threads, stats=stats):
        for i, sid in enumerate(sample["id"].tolist()):
            item = {"src": ds.src[sid], "tgt": ds.tgt[sid] if has_target else None}
            block = hypothesis_lines(sid, item, hyps[i][: args.nbest], task.src_dict, task.tgt_dict, args, has_target)
            if not args.quiet or args.results_path:
                out_f.write("\n".join(block) + "\n")
            ref = task.tgt_dict.string(item["tgt"], args.remove_bpe, unk_string="<unk>") if has_target else None
            results[sid] = (task.tgt_dict.string(hyps[i][0]["tokens"], args.remove_bpe, unk_string="<unk>"), ref)
        done += len(sample["id"])
        if time.time() - last_log > 10:
            last_log = time.time()
            logger.info(f"translated {done}/{len(ds)} sentences ({done / (last_log - t0):.1f} sentences/s)")
    elapsed = time.time() - t0
    if out_f is not sys.stdout:
        out_f.close()
    order = sorted(results)
    hyps_text = [results[i][0] for i in order]
    if args.results_path:
        write_lines(os.path.join(args.results_path, f"{args.gen_subset}.hyp.detok"), hyps_text)
    logger.info(f"translated {len(order)} sentences in {elapsed:.1f}s ({len(order) / max(elapsed, 1e-9):.2f} "
                f"sentences/s; the search alone {stats['search_s']:.1f}s, "
                f"{len(order) / max(stats['search_s'], 1e-9):.2f} sentences/s)")
    if has_target and args.scoring != "none":
        res = score_corpus(hyps_text, [results[i][1] for i in order], mode=args.scoring, chrf=True)
        print(f"Generate {args.gen_subset} with beam={args.beam}: " + "\n".join(format_result(res)))


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


def setup_inference_device(args) -> torch.device:
    use_cuda = torch.cuda.is_available() and not args.cpu
    if args.fp16 and not use_cuda:
        raise NmtSdError("--fp16 needs a CUDA device; on CPU use --bf16")
    inter = getattr(args, "inter_threads", 1)
    if inter < 1:
        raise NmtSdError(f"--inter-threads must be >= 1, got {inter}")
    if inter > 1 and use_cuda:
        raise NmtSdError("--inter-threads is for CPU decoding; on a GPU use one process (or --cpu)")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    return torch.device("cuda" if use_cuda else "cpu")


def cli_main(argv=None) -> None:
    run_cli("nmt-sd-generate", main, argv)


if __name__ == "__main__":
    cli_main()

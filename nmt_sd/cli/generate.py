"""nmt-sd-generate DATA --path CKPT: translate a binarized split (fairseq-generate's
flags and S-/T-/H-/D-/P- lines), write the detokenized hypotheses, print sacreBLEU."""

import functools
import logging
import os
import sys
import time

from nmt_sd.cli.common import run_cli
from nmt_sd.generation.inference import (
    add_batching_args,
    add_generation_args,
    add_inter_threads_arg,
    decode_sample,
    decoder_start,
    hypothesis_lines,
    setup_inference_device,
    write_lines,
)
from nmt_sd.generation.load import (
    half_precision_linears,
    load_model_for_inference,
)
from nmt_sd.generation.parallel import decode_batches
from nmt_sd.generation.scoring import format_result, score_corpus
from nmt_sd.generation.search import special_ids
from nmt_sd.options import ArgumentParser

logger = logging.getLogger("nmt_sd.generate")


def get_parser():
    p = ArgumentParser(
        prog="nmt-sd-generate", description="Translate a binarized split."
    )
    p.add_argument("data", help="directory of binarized data (from nmt-sd-preprocess)")
    p.add_argument("--gen-subset", default="test", metavar="SPLIT")
    add_batching_args(p)
    p.add_argument(
        "--results-path",
        metavar="DIR",
        help="write generate-SPLIT.txt and SPLIT.hyp.detok here (else lines go to stdout)",
    )
    p.add_argument(
        "--scoring",
        choices=["sacrebleu", "tokenized_bleu", "none"],
        default="sacrebleu",
    )
    p.add_argument("--quiet", action="store_true", help="only print the score")
    add_generation_args(p)
    add_inter_threads_arg(p)
    return p


def translate(model, task, ds, args, device, out_f) -> dict:
    """{sentence id: (detokenized best hypothesis, reference or None)}; writes the
    S-/T-/H-/D-/P- blocks to ``out_f`` and logs progress and speed."""
    itr = task.get_batch_iterator(
        ds,
        args.max_tokens or 12000,
        args.batch_size,
        model.max_positions(),
        shuffle=False,
        skip_invalid=args.skip_invalid_size_inputs_valid_test,
    )
    has_target = ds.tgt is not None
    string = functools.partial(
        task.tgt_dict.string, bpe_symbol=args.remove_bpe, unk_string="<unk>"
    )
    ids = {**special_ids(task.tgt_dict), "bos": decoder_start(task)}
    decode = functools.partial(decode_sample, args=args, ids=ids, device=device)
    results, t0, last_log, stats = {}, time.time(), time.time(), {}
    batches = list(itr.next_epoch_itr())
    for sample, hyps in decode_batches(
        model, batches, decode, args.inter_threads, stats=stats
    ):
        for i, sid in enumerate(sample["id"].tolist()):
            item = {"src": ds.src[sid], "tgt": ds.tgt[sid] if has_target else None}
            nbest = hyps[i][: args.nbest]
            dicts = (task.src_dict, task.tgt_dict)
            block = hypothesis_lines(sid, item, nbest, *dicts, args, has_target)
            if not args.quiet or args.results_path:
                out_f.write("\n".join(block) + "\n")
            ref = string(item["tgt"]) if has_target else None
            results[sid] = (string(hyps[i][0]["tokens"]), ref)
        if time.time() - last_log > 10:
            last_log, rate = time.time(), len(results) / (time.time() - t0)
            logger.info(
                f"translated {len(results)}/{len(ds)} sentences ({rate:.1f} sentences/s)"
            )
    elapsed, n = time.time() - t0, len(results)
    logger.info(
        f"translated {n} sentences in {elapsed:.1f}s ({n / max(elapsed, 1e-9):.2f} "
        f"sentences/s; the search alone {stats['search_s']:.1f}s, "
        f"{n / max(stats['search_s'], 1e-9):.2f} sentences/s)"
    )
    return results


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    device = setup_inference_device(args)
    model, task, _ = load_model_for_inference(
        args.path, args.data, args.source_lang, args.target_lang, device
    )
    half_precision_linears(model, args.bf16, args.fp16)
    ds = task.load_dataset(args.gen_subset)
    out_f, subset = sys.stdout, args.gen_subset
    if args.results_path:
        os.makedirs(args.results_path, exist_ok=True)
        path = os.path.join(args.results_path, f"generate-{subset}.txt")
        out_f = open(path, "w", encoding="utf-8")
    try:
        results = translate(model, task, ds, args, device, out_f)
    finally:
        if out_f is not sys.stdout:
            out_f.close()
    order = sorted(results)
    hyps_text = [results[i][0] for i in order]
    if args.results_path:
        write_lines(os.path.join(args.results_path, f"{subset}.hyp.detok"), hyps_text)
    if ds.tgt is not None and args.scoring != "none":
        refs = [results[i][1] for i in order]
        res = score_corpus(hyps_text, refs, mode=args.scoring, chrf=True)
        print(
            f"Generate {subset} with beam={args.beam}: " + "\n".join(format_result(res))
        )


def cli_main(argv=None) -> None:
    run_cli("nmt-sd-generate", main, argv)


if __name__ == "__main__":
    cli_main()

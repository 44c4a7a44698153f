"""nmt-sd-seqkd DATA --path TEACHER --destdir OUT: sequence-level knowledge distillation
(Kim & Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016, arXiv 1606.07947).

    y_hat(x) = beam-search argmax_y p_teacher(y | x)    (--seq-inter: argmax over the n-best of sBLEU(y, y_gold))

Translates the training sources of a binarized data directory with the teacher's beam
search and writes, in OUT: ``train.SRC`` / ``train.TGT`` (raw text, detokenized with
``--remove-bpe``, one line per training source, in order), ``train.SRC-TGT.{SRC,TGT}``
binarized (the original source tokens and the teacher's output tokens, with DATA's
dictionaries), and copies of DATA's dictionaries and other splits, so that any nmt-sd run
can train on OUT. Finished sentences are saved every minute in ``OUT/SUBSET.partial/``, so an
interrupted run picks up where it stopped when run again with the same settings.

A multilingual teacher (``--task multilingual_translation``) distils every one of its
``--lang-pairs`` (or the one ``-s/-t`` pair) with its own language tags, into
``SUBSET.SRC-TGT.{SRC,TGT}`` raw and binarized files per pair, so a multilingual run can
train on OUT. ``--seq-inter`` keeps the beam candidate closest to the reference by
sentence BLEU (sacrebleu.sentence_bleu on the detokenized text; ties go to the better
model score); it considers ``--nbest`` candidates, by default all ``--beam``.
"""
import argparse
import functools
import glob
import logging
import os
import time

import numpy as np

from nmt_sd.cli.common import run_cli
from nmt_sd.cli.generate import decode_sample, setup_inference_device, write_lines
from nmt_sd.criterions.kd import load_teacher
from nmt_sd.data.indexed_dataset import write_indexed
from nmt_sd.errors import NmtSdError
from nmt_sd.generation.load import half_precision_linears, model_args_from_checkpoint
from nmt_sd.generation.parallel import decode_batches
from nmt_sd.generation.parts import PartStore
from nmt_sd.generation.search import special_ids
from nmt_sd.options import ArgumentParser, add_generation_args, add_inter_threads_arg
from nmt_sd.tasks import TASKS
from nmt_sd.training.checkpoint import atomic_copy, load_checkpoint_file
from nmt_sd.training.progress import format_eta

logger = logging.getLogger("nmt_sd.seqkd")


def get_parser():
    p = ArgumentParser(prog="nmt-sd-seqkd", description="Write a sequence-level KD training set.")
    p.add_argument("data", help="directory of binarized data (from nmt-sd-preprocess)")
    p.add_argument("--destdir", required=True, metavar="DIR", help="output data directory")
    p.add_argument("--subset", default="train", metavar="SPLIT", help="split to distil (default: train)")
    p.add_argument("--seq-inter", action="store_true",
                   help="keep the n-best candidate with the highest sentence BLEU against the reference")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N")
    p.add_argument("--batch-size", "--max-sentences", type=int, default=None, metavar="N", dest="batch_size")
    add_generation_args(p)
    add_inter_threads_arg(p)
    p.set_defaults(nbest=None)  # resolved in main: --beam with --seq-inter, else 1
    return p


def closest_to_reference(texts, ref: str) -> int:
    """Index of the candidate with the highest sentence BLEU (first on ties)."""
    import sacrebleu

    bleus = [sacrebleu.sentence_bleu(t, [ref]).score for t in texts]
    return max(range(len(texts)), key=lambda i: (bleus[i], -i))


def settings(args, pair=None) -> dict:
    """What the output depends on: a partial run resumes only under the same values."""
    teacher = os.stat(args.path)
    keys = ("subset", "beam", "nbest", "lenpen", "max_len_a", "max_len_b", "min_len", "unkpen", "seq_inter",
            "remove_bpe", "bf16", "fp16")
    return dict({k: getattr(args, k) for k in keys}, data=os.path.realpath(args.data),
                teacher=os.path.realpath(args.path), teacher_bytes=teacher.st_size,
                teacher_mtime_ns=teacher.st_mtime_ns, **({"pair": pair} if pair else {}))


def distil(model, task, ds, args, device, store: PartStore, ids: dict):
    """Teacher output tokens (each ending in </s>) for every sentence of ``ds``, by id; the
    sentences already in ``store`` are not decoded again."""
    itr = task.get_batch_iterator(ds, args.max_tokens or 12000, args.batch_size, model.max_positions(),
                                  shuffle=False, skip_invalid=False)
    batches = [b for b in itr.next_epoch_itr() if not all(i in store.done for i in b["id"].tolist())]
    out = [store.done.get(i) for i in range(len(ds))]
    done = n_before = sum(x is not None for x in out)
    t0 = last = time.time()
    decode = functools.partial(decode_sample, args=args, ids=ids, device=device)
    try:
        for sample, hyps in decode_batches(model, batches, decode, args.inter_threads):
            for i, sid in enumerate(sample["id"].tolist()):
                cands = hyps[i]
                if args.seq_inter:
                    ref = task.tgt_dict.string(ds.tgt[sid], args.remove_bpe)
                    texts = [task.tgt_dict.string(h["tokens"], args.remove_bpe) for h in cands]
                    cands = [cands[closest_to_reference(texts, ref)]]
                done += out[sid] is None
                out[sid] = cands[0]["tokens"].cpu().numpy().astype(np.int64)
                store.add(sid, out[sid])
            if time.time() - last > 10 or done == len(ds):
                last, rate = time.time(), (done - n_before) / max(time.time() - t0, 1e-9)
                logger.info(f"distilled {done}/{len(ds)} sentences ({100.0 * done / len(ds):.0f}%, "
                            f"{rate:.1f} sentences/s, eta {format_eta((len(ds) - done) / max(rate, 1e-9))})")
    finally:  # Ctrl-C or an error keeps what was decoded (a killed process keeps the last minute's parts)
        store.flush()
    return out


def copy_other_splits(data: str, dest: str, subset: str, src: str, tgt: str) -> None:
    """Dictionaries and every binarized split of the pair except ``subset`` go to ``dest``
    unchanged (a multilingual pair may be stored as ``SPLIT.tgt-src.*``)."""
    pairs = (f".{src}-{tgt}.", f".{tgt}-{src}.")
    for path in sorted(glob.glob(os.path.join(data, "*"))):
        name = os.path.basename(path)
        is_dict = name.startswith("dict.") and name.endswith(".txt")
        is_split = any(x in name for x in pairs) and name.endswith((".bin", ".idx"))
        if is_dict or (is_split and not name.startswith(f"{subset}.")):
            atomic_copy(path, os.path.join(dest, name))


def teacher_task(args):
    """(task, pairs): the translation task of DATA, or, for a teacher trained with
    ``--task multilingual_translation``, its task with its own language pairs and tags; then
    ``-s/-t`` picks one pair and without them every pair is distilled."""
    targs = model_args_from_checkpoint(load_checkpoint_file(args.path), args.path)
    if getattr(targs, "task", "translation") != "multilingual_translation":
        task = TASKS.get("translation").setup_task(args)
        return task, [(args.source_lang, args.target_lang)]
    task = TASKS.get("multilingual_translation").setup_task(argparse.Namespace(
        **{**vars(targs), "data": args.data, "source_lang": args.source_lang, "target_lang": args.target_lang}))
    return task, [task.gen_pair] if task.gen_pair else list(task.lang_pairs)


def distil_pair(model, task, args, device, pair) -> int:
    """Distil one language pair of ``args.subset`` into ``args.destdir``; returns its size."""
    multi = hasattr(task, "select_pair")
    if multi:
        task.select_pair(*pair)
    src, tgt = pair if multi else (args.source_lang, args.target_lang)
    ds = task.load_dataset(args.subset)
    if args.seq_inter and ds.tgt is None:
        raise NmtSdError(f"--seq-inter needs references: split '{args.subset}' in {args.data} has no target side")
    ids = {**special_ids(task.tgt_dict), **({"bos": task.decoder_start(tgt)} if multi else {})}
    logger.info(f"distilling {len(ds)} {args.subset} sentences" + (f" of {src}-{tgt}" if multi else "")
                + f" with beam {args.beam}" + (f", seq-inter over {args.nbest} candidates" if args.seq_inter else ""))
    part = f"{args.subset}.{src}-{tgt}.partial" if multi else f"{args.subset}.partial"
    store = PartStore(os.path.join(args.destdir, part), settings(args, f"{src}-{tgt}" if multi else None))
    hyps = distil(model, task, ds, args, device, store, ids)
    copy_other_splits(args.data, args.destdir, args.subset, src, tgt)
    prefix = os.path.join(args.destdir, args.subset)
    raw = f"{prefix}.{src}-{tgt}" if multi else prefix  # several pairs share a language: name raw text by pair
    write_lines(f"{raw}.{src}", [task.src_dict.string(ds.src[i], args.remove_bpe) for i in range(len(ds))])
    write_lines(f"{raw}.{tgt}", [task.tgt_dict.string(h, args.remove_bpe) for h in hyps])
    write_indexed(f"{prefix}.{src}-{tgt}.{src}", [ds.src[i] for i in range(len(ds))], len(task.src_dict))
    write_indexed(f"{prefix}.{src}-{tgt}.{tgt}", hyps, len(task.tgt_dict))  # last: marks completion
    store.remove()
    return len(ds)


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    if not os.path.isdir(args.data):
        raise NmtSdError(f"data directory not found: {args.data}")
    if os.path.realpath(args.destdir) == os.path.realpath(args.data):
        raise NmtSdError("--destdir must differ from DATA (it would overwrite the training set)")
    args.nbest = args.nbest or (args.beam if args.seq_inter else 1)
    device = setup_inference_device(args)
    task, pairs = teacher_task(args)
    model, _ = load_teacher(args.path, task.src_dict, task.tgt_dict, "--path")
    half_precision_linears(model.to(device), args.bf16, args.fp16)
    n = sum(distil_pair(model, task, args, device, pair) for pair in pairs)
    names = " of " + ",".join(f"{s}-{t}" for s, t in pairs) if hasattr(task, "select_pair") else ""
    logger.info(f"wrote the distilled {args.subset} set{names} ({n} pairs) and copies of the other splits "
                f"to {args.destdir}")


def cli_main(argv=None) -> None:
    run_cli("nmt-sd-seqkd", main, argv)


if __name__ == "__main__":
    cli_main()

"""Sequence-level KD (Kim & Rush, EMNLP 2016, arXiv 1606.07947): the teacher's beam output
for every source of a split, one language pair at a time, written as a training set. The
command is ``nmt-sd-seqkd`` (nmt_sd/cli/seqkd.py, which documents the output layout).

    y_hat(x) = beam-search argmax_y p_teacher(y | x)    (--seq-inter: argmax over the n-best of sBLEU(y, y_gold))
"""

import argparse
import functools
import glob
import logging
import os
import time

import numpy as np

from nmt_sd.data.indexed_dataset import write_indexed
from nmt_sd.errors import NmtSdError
from nmt_sd.generation.inference import decode_sample, write_lines
from nmt_sd.generation.load import model_args_from_checkpoint
from nmt_sd.generation.parallel import decode_batches
from nmt_sd.generation.parts import PartStore
from nmt_sd.generation.search import special_ids
from nmt_sd.tasks import TASKS
from nmt_sd.training.checkpoint import atomic_copy, load_checkpoint_file
from nmt_sd.training.progress import format_eta

logger = logging.getLogger("nmt_sd.seqkd")


def closest_to_reference(texts, ref: str) -> int:
    """Index of the candidate with the highest sentence BLEU (first on ties)."""
    import sacrebleu

    bleus = [sacrebleu.sentence_bleu(t, [ref]).score for t in texts]
    return max(range(len(texts)), key=lambda i: (bleus[i], -i))


def settings(args, pair=None) -> dict:
    """What the output depends on: a partial run resumes only under the same values."""
    teacher = os.stat(args.path)
    keys = (
        "subset",
        "beam",
        "nbest",
        "lenpen",
        "max_len_a",
        "max_len_b",
        "min_len",
        "unkpen",
        "seq_inter",
        "remove_bpe",
        "bf16",
        "fp16",
    )
    return dict(
        {k: getattr(args, k) for k in keys},
        data=os.path.realpath(args.data),
        teacher=os.path.realpath(args.path),
        teacher_bytes=teacher.st_size,
        teacher_mtime_ns=teacher.st_mtime_ns,
        **({"pair": pair} if pair else {}),
    )


def distil(model, task, ds, args, device, store: PartStore, ids: dict):
    """Teacher output tokens (each ending in </s>) for every sentence of ``ds``, by id; the
    sentences already in ``store`` are not decoded again."""
    itr = task.get_batch_iterator(
        ds,
        args.max_tokens or 12000,
        args.batch_size,
        model.max_positions(),
        shuffle=False,
        skip_invalid=False,
    )
    batches = [
        b
        for b in itr.next_epoch_itr()
        if not all(i in store.done for i in b["id"].tolist())
    ]
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
                    texts = [
                        task.tgt_dict.string(h["tokens"], args.remove_bpe)
                        for h in cands
                    ]
                    cands = [cands[closest_to_reference(texts, ref)]]
                done += out[sid] is None
                out[sid] = cands[0]["tokens"].cpu().numpy().astype(np.int64)
                store.add(sid, out[sid])
            if time.time() - last > 10 or done == len(ds):
                last, rate = (
                    time.time(),
                    (done - n_before) / max(time.time() - t0, 1e-9),
                )
                logger.info(
                    f"distilled {done}/{len(ds)} sentences ({100.0 * done / len(ds):.0f}%, "
                    f"{rate:.1f} sentences/s, eta {format_eta((len(ds) - done) / max(rate, 1e-9))})"
                )
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
    task = TASKS.get("multilingual_translation").setup_task(
        argparse.Namespace(
            **{
                **vars(targs),
                "data": args.data,
                "source_lang": args.source_lang,
                "target_lang": args.target_lang,
            }
        )
    )
    return task, [task.gen_pair] if task.gen_pair else list(task.lang_pairs)


def distil_pair(model, task, args, device, pair) -> int:
    """Distil one language pair of ``args.subset`` into ``args.destdir``; returns its size."""
    multi = hasattr(task, "select_pair")
    if multi:
        task.select_pair(*pair)
    src, tgt = pair if multi else (args.source_lang, args.target_lang)
    ds = task.load_dataset(args.subset)
    if args.seq_inter and ds.tgt is None:
        raise NmtSdError(
            f"--seq-inter needs references: split '{args.subset}' in {args.data} has no target side"
        )
    ids = {
        **special_ids(task.tgt_dict),
        **({"bos": task.decoder_start(tgt)} if multi else {}),
    }
    logger.info(
        f"distilling {len(ds)} {args.subset} sentences"
        + (f" of {src}-{tgt}" if multi else "")
        + f" with beam {args.beam}"
        + (f", seq-inter over {args.nbest} candidates" if args.seq_inter else "")
    )
    part = f"{args.subset}.{src}-{tgt}.partial" if multi else f"{args.subset}.partial"
    store = PartStore(
        os.path.join(args.destdir, part),
        settings(args, f"{src}-{tgt}" if multi else None),
    )
    hyps = distil(model, task, ds, args, device, store, ids)
    copy_other_splits(args.data, args.destdir, args.subset, src, tgt)
    prefix = os.path.join(args.destdir, args.subset)
    # several pairs share a language: name raw text by pair
    raw = f"{prefix}.{src}-{tgt}" if multi else prefix
    write_lines(
        f"{raw}.{src}",
        [task.src_dict.string(ds.src[i], args.remove_bpe) for i in range(len(ds))],
    )
    write_lines(
        f"{raw}.{tgt}", [task.tgt_dict.string(h, args.remove_bpe) for h in hyps]
    )
    write_indexed(
        f"{prefix}.{src}-{tgt}.{src}",
        [ds.src[i] for i in range(len(ds))],
        len(task.src_dict),
    )
    # last: marks completion
    write_indexed(f"{prefix}.{src}-{tgt}.{tgt}", hyps, len(task.tgt_dict))
    store.remove()
    return len(ds)

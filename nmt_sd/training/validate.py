"""Validation: criterion loss over the valid set, optionally sacreBLEU of decoded output.
A multilingual task (one that has ``pair_names``) also gets both per language pair,
as ``{pair}_loss``, ``{pair}_nll_loss``, ``{pair}_ppl`` and ``{pair}_bleu``; ``bleu`` is
then the mean of the pairs' BLEU."""

import logging
from typing import Dict, List, Tuple

import torch

from nmt_sd.training import distributed as dist_utils
from nmt_sd.training.trainer import move_to, sum_logs

logger = logging.getLogger(__name__)


def add_validation_args(p) -> None:
    """nmt-sd-train's validation flags; ``valid_bleu`` reads the ``--eval-bleu*`` ones."""
    g = p.add_argument_group("Validation")
    g.add_argument(
        "--validate-interval", type=int, default=1, metavar="N", help="epochs"
    )
    g.add_argument("--validate-interval-updates", type=int, default=0, metavar="N")
    g.add_argument("--disable-validation", action="store_true")
    g.add_argument(
        "--eval-bleu", action="store_true", help="sacreBLEU on the valid set"
    )
    g.add_argument(
        "--eval-bleu-beam", type=int, default=1, metavar="N", help="1 = greedy"
    )
    g.add_argument("--eval-bleu-max-len-a", type=float, default=1.2)
    g.add_argument("--eval-bleu-max-len-b", type=int, default=10)
    g.add_argument("--eval-bleu-lenpen", type=float, default=1.0)
    g.add_argument(
        "--eval-bleu-remove-bpe", default="sentencepiece", nargs="?", const="@@ "
    )
    g.add_argument("--eval-tokenized-bleu", action="store_true")
    g.add_argument("--eval-bleu-print-samples", action="store_true")


def reduce_over_workers(trainer, totals: Dict[str, float]) -> Dict[str, float]:
    keys = sorted(totals)
    summed = dist_utils.all_reduce_sums([totals[k] for k in keys], trainer.device)
    return trainer.criterion.reduce_metrics([dict(zip(keys, summed))])


def valid_loss(trainer, valid_itr) -> Dict[str, float]:
    return valid_stats(trainer, valid_itr)[0]


def valid_stats(
    trainer, valid_itr
) -> Tuple[Dict[str, float], Dict[str, Dict[str, float]]]:
    """(stats over the whole valid set, {pair: stats of that pair}). The per-pair sums
    travel in one all-reduce over a fixed key list, so every worker agrees."""
    valid_itr.iterations_in_epoch = 0
    task = trainer.task
    targs = getattr(task, "args", None)
    pairs = list(
        getattr(task, "pair_names", None)
        or [
            f"{getattr(targs, 'source_lang', 'src')}-{getattr(targs, 'target_lang', 'tgt')}"
        ]
    )
    logs, groups = [], []
    for sample in valid_itr.next_epoch_itr():
        groups.append(task.pair_of(sample) if hasattr(task, "pair_of") else pairs[0])
        logs.append(trainer.valid_step(sample))
    stats = reduce_over_workers(trainer, sum_logs(logs))
    if len(pairs) == 1:
        return stats, {pairs[0]: stats}
    keys = ["loss", "nll_loss", "ntokens", "nsentences", "sample_size"]
    per_totals = {
        pair: sum_logs([log for log, g in zip(logs, groups) if g == pair])
        for pair in pairs
    }
    flat = [per_totals[pair].get(k, 0.0) for pair in pairs for k in keys]
    flat = dist_utils.all_reduce_sums(flat, trainer.device)
    per_pair = {}
    for i, pair in enumerate(pairs):
        totals = dict(zip(keys, flat[i * len(keys) : (i + 1) * len(keys)]))
        per_pair[pair] = trainer.criterion.reduce_metrics([totals])
        for k in ("loss", "nll_loss", "ppl"):
            stats[f"{pair}_{k}"] = per_pair[pair][k]
    return stats, per_pair


@torch.no_grad()
def decode_dataset(
    model,
    itr,
    tgt_dict,
    device,
    beam,
    max_len_a,
    max_len_b,
    lenpen,
    remove_bpe,
    autocast,
):
    """Decode every batch of ``itr``; returns {id: (hypothesis text, reference text)}."""
    from nmt_sd.generation.greedy import greedy_search
    from nmt_sd.generation.search import beam_search

    model.eval()
    out = {}
    itr.iterations_in_epoch = 0
    for sample in itr.next_epoch_itr():
        s = move_to(sample, device)
        net = s["net_input"]
        # the decoder starts from the symbol training used (a language tag under --decoder-langtok)
        bos = (
            int(net["prev_output_tokens"][0, 0])
            if "prev_output_tokens" in net
            else tgt_dict.eos()
        )
        kw = dict(
            max_len_a=max_len_a,
            max_len_b=max_len_b,
            eos=tgt_dict.eos(),
            pad=tgt_dict.pad(),
            unk=tgt_dict.unk(),
            bos=bos,
        )
        with autocast():
            if beam == 1:
                hyps = greedy_search(
                    model, net["src_tokens"], net["src_lengths"], min_len=1, **kw
                )
            else:
                hyps = beam_search(
                    model,
                    net["src_tokens"],
                    net["src_lengths"],
                    beam=beam,
                    lenpen=lenpen,
                    **kw,
                )
        for i, sid in enumerate(sample["id"].tolist()):
            hyp = tgt_dict.string(hyps[i][0]["tokens"], remove_bpe, unk_string="<unk>")
            ref = tgt_dict.string(sample["target"][i], remove_bpe, unk_string="<unk>")
            out[sid] = (hyp, ref)
    return out


def valid_bleu(args, trainer, valid_itr) -> Dict[str, float]:
    """{"bleu": corpus sacreBLEU} or, for a multilingual valid set, the BLEU of every
    pair (``{pair}_bleu``) and their mean as ``bleu``."""
    pairs = decode_dataset(
        trainer.model,
        valid_itr,
        trainer.task.tgt_dict,
        trainer.device,
        args.eval_bleu_beam,
        args.eval_bleu_max_len_a,
        args.eval_bleu_max_len_b,
        args.eval_bleu_lenpen,
        args.eval_bleu_remove_bpe,
        trainer.autocast,
    )
    if dist_utils.world_size() > 1:
        gathered: List = [None] * dist_utils.world_size()
        torch.distributed.all_gather_object(gathered, pairs)
        pairs = {k: v for part in gathered for k, v in part.items()}
    ids = sorted(pairs)
    hyps, refs = [pairs[i][0] for i in ids], [pairs[i][1] for i in ids]
    if args.eval_bleu_print_samples and ids:
        logger.info(f"example hypothesis: {hyps[0]}")
        logger.info(f"example reference: {refs[0]}")
    names = getattr(valid_itr.dataset, "names", None)
    if not names:
        return {"bleu": corpus_bleu(args, hyps, refs)}
    out = {}
    for name in names:
        sel = [
            i for i, sid in enumerate(ids) if valid_itr.dataset.pair_name(sid) == name
        ]
        out[f"{name}_bleu"] = corpus_bleu(
            args, [hyps[i] for i in sel], [refs[i] for i in sel]
        )
    out["bleu"] = sum(out.values()) / len(names)
    return out


def corpus_bleu(args, hyps: List[str], refs: List[str]) -> float:
    from nmt_sd.generation.scoring import score_corpus

    if not hyps:
        return 0.0
    mode = "tokenized_bleu" if args.eval_tokenized_bleu else "sacrebleu"
    return float(score_corpus(hyps, refs, mode=mode, chrf=False)["bleu"])

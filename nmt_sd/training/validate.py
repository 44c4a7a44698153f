"""Validation: criterion loss over the valid set, optionally sacreBLEU of decoded output."""
import logging
from typing import Dict, List

import torch

from nmt_sd.training import distributed as dist_utils
from nmt_sd.training.trainer import move_to, sum_logs

logger = logging.getLogger(__name__)


def valid_loss(trainer, valid_itr) -> Dict[str, float]:
    valid_itr.iterations_in_epoch = 0
    logs = [trainer.valid_step(sample) for sample in valid_itr.next_epoch_itr()]
    totals = sum_logs(logs)
    keys = sorted(totals)
    summed = dist_utils.all_reduce_sums([totals[k] for k in keys], trainer.device)
    return trainer.criterion.reduce_metrics([dict(zip(keys, summed))])


@torch.no_grad()
def decode_dataset(model, itr, tgt_dict, device, beam, max_len_a, max_len_b, lenpen, remove_bpe, autocast):
    """Decode every batch of ``itr``; returns {id: (hypothesis text, reference text)}."""
    from nmt_sd.generation.search import beam_search, greedy_search

    model.eval()
    out = {}
    itr.iterations_in_epoch = 0
    for sample in itr.next_epoch_itr():
        s = move_to(sample, device)
        net = s["net_input"]
        kw = dict(max_len_a=max_len_a, max_len_b=max_len_b, eos=tgt_dict.eos(), pad=tgt_dict.pad(), unk=tgt_dict.unk())
        with autocast():
            if beam == 1:
                hyps = greedy_search(model, net["src_tokens"], net["src_lengths"], min_len=1, **kw)
            else:
                hyps = beam_search(model, net["src_tokens"], net["src_lengths"], beam=beam, lenpen=lenpen, **kw)
        for i, sid in enumerate(sample["id"].tolist()):
            hyp = tgt_dict.string(hyps[i][0]["tokens"], remove_bpe, unk_string="<unk>")
            ref = tgt_dict.string(sample["target"][i], remove_bpe, unk_string="<unk>")
            out[sid] = (hyp, ref)
    return out


def valid_bleu(args, trainer, valid_itr) -> float:
    from nmt_sd.generation.scoring import score_corpus

    pairs = decode_dataset(
        trainer.model, valid_itr, trainer.task.tgt_dict, trainer.device, args.eval_bleu_beam,
        args.eval_bleu_max_len_a, args.eval_bleu_max_len_b, args.eval_bleu_lenpen,
        args.eval_bleu_remove_bpe, trainer.autocast,
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
    mode = "tokenized_bleu" if args.eval_tokenized_bleu else "sacrebleu"
    return float(score_corpus(hyps, refs, mode=mode, chrf=False)["bleu"])

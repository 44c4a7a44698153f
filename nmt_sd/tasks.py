"""The ``translation`` task: dictionaries, binarized datasets, batches, model and criterion."""

import glob
import logging
import os
from typing import Optional

import numpy as np

from nmt_sd.data.batching import EpochBatchIterator, batch_by_size
from nmt_sd.data.dataset import LanguagePairDataset
from nmt_sd.data.dictionary import Dictionary
from nmt_sd.data.indexed_dataset import IndexedDataset, dataset_exists
from nmt_sd.errors import NmtSdError
from nmt_sd.registry import Registry

logger = logging.getLogger(__name__)
TASKS = Registry("task")


def infer_language_pair(data: str):
    """Find (src, tgt) from ``train.SRC-TGT.SRC.idx`` (or any split) in ``data``."""
    for split in ("train", "valid", "test"):
        for path in sorted(glob.glob(os.path.join(data, f"{split}.*-*.*.idx"))):
            pair = os.path.basename(path).split(".")[1]
            src, tgt = pair.split("-", 1)
            return src, tgt
    return None, None


def make_batches(
    dataset,
    indices: np.ndarray,
    max_tokens: Optional[int],
    max_sentences: Optional[int],
    max_positions,
    required_batch_size_multiple: int,
    skip_invalid: bool,
):
    """Drop examples over the position / token limits (or refuse them), then group the
    length-sorted ``indices`` into token-budget batches."""
    keep = dataset.src_sizes[indices] <= max_positions[0]
    if dataset.tgt_sizes is not None:
        keep &= dataset.tgt_sizes[indices] <= max_positions[1]
    if max_tokens:
        keep &= np.array(
            [dataset.num_tokens(int(i)) <= max_tokens for i in indices], bool
        )
    if not keep.all():
        bad = indices[~keep]
        if not skip_invalid:
            raise NmtSdError(
                f"{len(bad)} examples exceed max positions {max_positions} or --max-tokens "
                f"{max_tokens} (first: example {int(bad[0])})"
            )
        logger.warning(
            f"skipping {len(bad)} examples longer than the limits, e.g. {bad[:5].tolist()}"
        )
        indices = indices[keep]
    return batch_by_size(
        indices,
        dataset.num_tokens,
        max_tokens,
        max_sentences,
        required_batch_size_multiple,
    )


@TASKS.register("translation")
class TranslationTask:
    def __init__(self, args, src_dict: Dictionary, tgt_dict: Dictionary):
        self.args = args
        self.src_dict, self.tgt_dict = src_dict, tgt_dict
        self.datasets = {}

    @classmethod
    def setup_task(cls, args) -> "TranslationTask":
        if not os.path.isdir(args.data):
            raise NmtSdError(f"data directory not found: {args.data}")
        if args.source_lang is None or args.target_lang is None:
            src, tgt = infer_language_pair(args.data)
            if src is None:
                raise NmtSdError(
                    f"could not infer the language pair in {args.data}: no SPLIT.SRC-TGT.SRC.idx "
                    "files (run nmt-sd-preprocess, or pass -s/-t)"
                )
            args.source_lang = args.source_lang or src
            args.target_lang = args.target_lang or tgt
        src_dict = Dictionary.load(
            os.path.join(args.data, f"dict.{args.source_lang}.txt")
        )
        tgt_dict = Dictionary.load(
            os.path.join(args.data, f"dict.{args.target_lang}.txt")
        )
        logger.info(f"[{args.source_lang}] dictionary: {len(src_dict)} types")
        logger.info(f"[{args.target_lang}] dictionary: {len(tgt_dict)} types")
        return cls(args, src_dict, tgt_dict)

    def split_prefix(self, split: str, lang: str) -> str:
        src, tgt = self.args.source_lang, self.args.target_lang
        return os.path.join(self.args.data, f"{split}.{src}-{tgt}.{lang}")

    def load_dataset(self, split: str, with_target: bool = True) -> LanguagePairDataset:
        src_prefix = self.split_prefix(split, self.args.source_lang)
        if not dataset_exists(src_prefix):
            raise NmtSdError(f"split '{split}' not found: {src_prefix}.idx/.bin")
        src = IndexedDataset(src_prefix)
        tgt = None
        tgt_prefix = self.split_prefix(split, self.args.target_lang)
        if with_target and dataset_exists(tgt_prefix):
            tgt = IndexedDataset(tgt_prefix)
            if len(tgt) != len(src):
                raise NmtSdError(
                    f"{src_prefix} has {len(src)} sentences but {tgt_prefix} has {len(tgt)}"
                )
        ds = LanguagePairDataset(src, tgt, self.tgt_dict.pad(), self.tgt_dict.eos())
        self.datasets[split] = ds
        logger.info(f"{self.args.data} {split} {len(ds)} examples")
        return ds

    def get_batch_iterator(
        self,
        dataset: LanguagePairDataset,
        max_tokens: Optional[int],
        max_sentences: Optional[int],
        max_positions=(1024, 1024),
        seed: int = 1,
        shuffle: bool = True,
        num_shards: int = 1,
        shard_id: int = 0,
        required_batch_size_multiple: int = 1,
        skip_invalid: bool = True,
    ) -> EpochBatchIterator:
        batches = make_batches(
            dataset,
            dataset.ordered_indices(),
            max_tokens,
            max_sentences,
            max_positions,
            required_batch_size_multiple,
            skip_invalid,
        )
        return EpochBatchIterator(dataset, batches, seed, shuffle, num_shards, shard_id)

    def build_model(self, args):
        from nmt_sd.models import TransformerModel

        return TransformerModel.build_model(args, self.src_dict, self.tgt_dict)

    def build_criterion(self, args):
        from nmt_sd.criterions import CRITERIONS

        return CRITERIONS.get(args.criterion)(args, self)


from nmt_sd import multilingual  # noqa: E402,F401  (registers multilingual_translation)

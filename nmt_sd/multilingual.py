"""The ``multilingual_translation`` task: several language pairs, one joint dictionary.

fairseq's ``translation_multi_simple_epoch`` conventions, simplified:

* ``--lang-pairs de-en,fr-en,cs-en`` (many-to-one), ``en-de,en-fr`` (one-to-many) or any
  mix (many-to-many). Pair ``s-t`` is read from ``SPLIT.s-t.{s,t}`` or, as in fairseq,
  ``SPLIT.t-s.{s,t}``, so one binarized directory serves both directions.
* One joint dictionary: every ``dict.LANG.txt`` must be identical (binarize every pair
  with the same ``--srcdict``). Language tags ``__xx__`` missing from it are appended
  at load time (``data_prep/prepare_multilingual.py`` writes them into the dictionary).
* ``--encoder-langtok src|tgt`` prepends the source (or target) tag to every source
  sentence; ``--decoder-langtok`` makes the target tag the decoder's start symbol in
  place of ``</s>`` (fairseq's ``--lang-tok-replacing-bos-eos`` for the target side),
  so the loss covers the same tokens as a bilingual model and decoding starts from
  the tag rather than forcing it as a prefix.
* Training batches hold one pair each and the pairs are drawn by temperature sampling
  (``nmt_sd/data/multilingual.py``); validation reports loss (and BLEU) per pair;
  generation translates one pair (``-s/-t``) at a time.
"""

import logging
import os
from typing import List, Optional, Tuple

import numpy as np
import torch

from nmt_sd.data.batching import EpochBatchIterator
from nmt_sd.data.dataset import LanguagePairDataset
from nmt_sd.data.dictionary import Dictionary
from nmt_sd.data.indexed_dataset import IndexedDataset, dataset_exists
from nmt_sd.data.multilingual import MultiPairBatchIterator, MultiPairDataset, langtok
from nmt_sd.errors import NmtSdError
from nmt_sd.tasks import TASKS, make_batches

logger = logging.getLogger(__name__)
Pair = Tuple[str, str]


def parse_lang_pairs(spec: Optional[str], flag: str = "--lang-pairs") -> List[Pair]:
    """``'de-en, fr-en'`` -> [("de", "en"), ("fr", "en")]; bad input names the flag."""
    pairs: List[Pair] = []
    for item in (x.strip() for x in (spec or "").split(",") if x.strip()):
        src, sep, tgt = item.partition("-")
        if not sep or not src or not tgt or "-" in tgt or src == tgt:
            raise NmtSdError(
                f"{flag}: bad pair {item!r} in {spec!r} (expected e.g. 'de-en,fr-en')"
            )
        if (src, tgt) in pairs:
            raise NmtSdError(f"{flag}: pair {item} is listed twice")
        pairs.append((src, tgt))
    if not pairs:
        raise NmtSdError(
            f"--task multilingual_translation needs {flag}, e.g. {flag} de-en,fr-en"
        )
    return pairs


def load_joint_dictionary(data: str, langs: List[str]) -> Dictionary:
    """The one dictionary every ``dict.LANG.txt`` must hold, plus the language tags."""
    paths = [os.path.join(data, f"dict.{lang}.txt") for lang in langs]
    for lang, path in zip(langs, paths):
        if not os.path.isfile(path):
            raise NmtSdError(
                f"--lang-pairs: no dictionary for language {lang!r}: {path} not found"
            )
    first = paths[0]
    d = Dictionary.load(first)
    for path in paths[1:]:
        if Dictionary.load(path).symbols != d.symbols:
            raise NmtSdError(
                f"{path} differs from {first}: multilingual_translation needs one joint "
                "dictionary (binarize every pair with the same --srcdict)"
            )
    for lang in langs:
        d.add_symbol(langtok(lang), 0)  # no-op when the tag is already there
    return d


@TASKS.register("multilingual_translation")
class MultilingualTranslationTask:
    def __init__(self, args, dictionary: Dictionary, lang_pairs: List[Pair]):
        self.args = args
        self.src_dict = self.tgt_dict = dictionary
        self.lang_pairs = lang_pairs
        # index = language id
        self.langs = sorted({lang for pair in lang_pairs for lang in pair})
        self.gen_pair: Optional[Pair] = (
            None  # set by -s/-t: load/generate that pair only
        )
        self.datasets = {}

    @staticmethod
    def add_args(parser) -> None:
        g = parser.add_argument_group(
            "Multilingual translation (--task multilingual_translation)"
        )
        g.add_argument(
            "--lang-pairs",
            metavar="PAIRS",
            help="comma-separated SRC-TGT pairs, e.g. de-en,fr-en,cs-en",
        )
        g.add_argument(
            "--encoder-langtok",
            choices=["src", "tgt"],
            default=None,
            help="prepend the source (src) or target (tgt) language tag __xx__ to each source",
        )
        g.add_argument(
            "--decoder-langtok",
            action="store_true",
            help="start decoding from the target language tag __xx__ instead of </s>",
        )
        g.add_argument(
            "--sampling-method",
            choices=["temperature", "uniform"],
            default="temperature",
            help="how training batches are drawn across pairs",
        )
        g.add_argument(
            "--sampling-temperature",
            type=float,
            default=1.0,
            metavar="T",
            help="pair i drawn with p ∝ n_i^(1/T), n_i = its batches; 1 = as in the data (fairseq's default: 1.5)",
        )

    @classmethod
    def setup_task(cls, args) -> "MultilingualTranslationTask":
        if not os.path.isdir(args.data):
            raise NmtSdError(f"data directory not found: {args.data}")
        pairs = parse_lang_pairs(getattr(args, "lang_pairs", None))
        if getattr(args, "sampling_temperature", 1.0) <= 0:
            raise NmtSdError(
                f"--sampling-temperature must be > 0, got {args.sampling_temperature}"
            )
        langs = sorted({lang for pair in pairs for lang in pair})
        task = cls(args, load_joint_dictionary(args.data, langs), pairs)
        logger.info(
            f"{len(pairs)} language pairs ({args.lang_pairs}), joint dictionary: {len(task.tgt_dict)} types"
        )
        src, tgt = (
            getattr(args, "source_lang", None),
            getattr(args, "target_lang", None),
        )
        if src or tgt:
            task.select_pair(src, tgt)
        return task

    def select_pair(self, src: Optional[str], tgt: Optional[str]) -> None:
        """Generation: work on one trained pair (``-s SRC -t TGT``)."""
        names = ",".join(f"{s}-{t}" for s, t in self.lang_pairs)
        if not src or not tgt:
            raise NmtSdError(
                f"a multilingual model translates one pair at a time: pass -s and -t (one of {names})"
            )
        if (src, tgt) not in self.lang_pairs:
            raise NmtSdError(
                f"-s {src} -t {tgt}: unknown pair, the model was trained on --lang-pairs {names}"
            )
        self.gen_pair = (src, tgt)

    # -- language tags and ids ----------------------------------------------
    def lang_id(self, lang: str) -> int:
        return self.langs.index(lang)

    def decoder_start(self, tgt: str) -> int:
        """The decoder's first input symbol for target language ``tgt``."""
        return (
            self.tgt_dict.index(langtok(tgt))
            if self.args.decoder_langtok
            else self.tgt_dict.eos()
        )

    def encoder_tag(self, src: str, tgt: str) -> Optional[int]:
        side = getattr(self.args, "encoder_langtok", None)
        return (
            None
            if side is None
            else self.src_dict.index(langtok(src if side == "src" else tgt))
        )

    def pair_of(self, sample) -> str:
        """``"de-en"`` for a one-pair batch (from its language ids)."""
        return f"{self.langs[int(sample['src_lang_id'][0])]}-{self.langs[int(sample['tgt_lang_id'][0])]}"

    @property
    def pair_names(self) -> List[str]:
        return [f"{s}-{t}" for s, t in self.lang_pairs]

    # -- data ------------------------------------------------------------------
    def pair_prefix(self, split: str, src: str, tgt: str, lang: str) -> Optional[str]:
        """``DATA/SPLIT.src-tgt.LANG`` or ``DATA/SPLIT.tgt-src.LANG``, whichever exists."""
        for a, b in ((src, tgt), (tgt, src)):
            prefix = os.path.join(self.args.data, f"{split}.{a}-{b}.{lang}")
            if dataset_exists(prefix):
                return prefix
        return None

    def load_pair(
        self, split: str, src: str, tgt: str, with_target: bool = True
    ) -> LanguagePairDataset:
        src_prefix = self.pair_prefix(split, src, tgt, src)
        if src_prefix is None:
            missing = os.path.join(self.args.data, f"{split}.{src}-{tgt}.{src}.idx")
            raise NmtSdError(
                f"--lang-pairs {src}-{tgt}: {missing} not found (nor {split}.{tgt}-{src}.{src}.idx)"
            )
        src_ds, tgt_ds = IndexedDataset(src_prefix), None
        tgt_prefix = self.pair_prefix(split, src, tgt, tgt) if with_target else None
        if tgt_prefix is not None:
            tgt_ds = IndexedDataset(tgt_prefix)
            if len(tgt_ds) != len(src_ds):
                raise NmtSdError(
                    f"{src_prefix} has {len(src_ds)} sentences but {tgt_prefix} has {len(tgt_ds)}"
                )
        return LanguagePairDataset(
            src_ds,
            tgt_ds,
            self.tgt_dict.pad(),
            self.tgt_dict.eos(),
            src_lang_id=self.lang_id(src),
            tgt_lang_id=self.lang_id(tgt),
            src_langtok=self.encoder_tag(src, tgt),
            bos=self.decoder_start(tgt),
        )

    def load_dataset(self, split: str, with_target: bool = True):
        """Every pair of ``--lang-pairs`` (a MultiPairDataset), or the one ``-s/-t`` pair."""
        if self.gen_pair is not None:
            ds = self.load_pair(split, *self.gen_pair, with_target=with_target)
        else:
            ds = MultiPairDataset(
                [self.load_pair(split, s, t, with_target) for s, t in self.lang_pairs],
                self.pair_names,
            )
            sizes = ", ".join(f"{n} {len(d)}" for n, d in zip(ds.names, ds.datasets))
            logger.info(f"{self.args.data} {split}: {sizes}")
        self.datasets[split] = ds
        return ds

    def get_batch_iterator(
        self,
        dataset,
        max_tokens,
        max_sentences,
        max_positions=(1024, 1024),
        seed=1,
        shuffle=True,
        num_shards=1,
        shard_id=0,
        required_batch_size_multiple=1,
        skip_invalid=True,
    ):
        if not isinstance(dataset, MultiPairDataset):  # one pair (generation)
            batches = make_batches(
                dataset,
                dataset.ordered_indices(),
                max_tokens,
                max_sentences,
                max_positions,
                required_batch_size_multiple,
                skip_invalid,
            )
            return EpochBatchIterator(
                dataset, batches, seed, shuffle, num_shards, shard_id
            )
        per_pair = [
            make_batches(
                dataset,
                dataset.pair_indices(p),
                max_tokens,
                max_sentences,
                max_positions,
                required_batch_size_multiple,
                skip_invalid,
            )
            for p in range(len(dataset.names))
        ]
        temp = (
            float("inf")
            if getattr(self.args, "sampling_method", "temperature") == "uniform"
            else getattr(self.args, "sampling_temperature", 1.0)
        )
        return MultiPairBatchIterator(
            dataset, per_pair, temp, seed, shuffle, num_shards, shard_id
        )

    def lang_vocab_mask(self, lang: str, split: str = "train") -> torch.Tensor:
        """(V,) bool: the symbols seen in language ``lang``'s text of ``split`` (both sides
        of every pair it is in), plus </s> and <unk> (LSSD's language-aware KD)."""
        mask = np.zeros(len(self.tgt_dict), dtype=bool)
        for src, tgt in self.lang_pairs:
            if lang in (src, tgt):
                prefix = self.pair_prefix(split, src, tgt, lang)
                if prefix is not None:
                    mask[np.unique(np.asarray(IndexedDataset(prefix).tokens))] = True
        mask[[self.tgt_dict.eos(), self.tgt_dict.unk()]] = True
        return torch.from_numpy(mask)

    def build_model(self, args):
        from nmt_sd.models import TransformerModel

        return TransformerModel.build_model(args, self.src_dict, self.tgt_dict)

    def build_criterion(self, args):
        from nmt_sd.criterions import CRITERIONS

        return CRITERIONS.get(args.criterion)(args, self)

"""LSSD: Language-Specific Self-Distillation (Huang, Feng, Geng, Qin: "Unifying the
Convergences in Multilingual Neural Machine Translation", EMNLP 2022, arXiv 2205.01620).

    L = ( LS-CE + w · Σ_t g_t · (−Σ_v p_T(v|t) log p_S(v|t)) ) / 2   if the batch's language l is distilled, else LS-CE

p_T is language l's teacher: a frozen, eval-mode (no dropout) copy of the model from l's
best validation epoch so far. l is the source language for many-to-one pairs, the target
language for one-to-many and many-to-many (``--lssd-key auto``), as in the official code.
l is distilled in epoch e iff e > ``--lssd-warmup-epochs``, l has a teacher and
e − best_epoch[l] > 1. The teachers (the bookkeeping rules, the copies and their files
``SAVE_DIR/lssd_teacher{EPOCH}.pt``, resume) are in ``lssd_teachers.py``; docs/lssd.md.

Gates g_t (student and teacher gold-token probabilities, detached): ``whole`` 1;
``selective`` 1 if p_T(y) > p_S(y) else 0.2 (token level, or sentence level on the
sums of gold probabilities); ``adaptive`` min(p_T(y)/p_S(y), 1) (token level, or the
ratio of mean gold probabilities per sentence). ``--lssd-language-aware`` restricts
p_T to the target language's vocabulary (symbols of its training text) and
renormalises. KD is averaged over the student's passes (with R-Drop: both passes).

Differences from the official code (no LSSD code bug is listed in ../shared/docs/methods.md): w = 0
switches distillation off (the official (CE + 0·KD)/2 would halve the CE);
``--lssd-interpolate`` gives (1−w)·CE + w·KD; a mixed-language batch is a one-line error
instead of an assertion; teacher copies use the training precision instead of fp16.
"""

import contextlib
import logging

import torch

from nmt_sd.criterions.fused import gold_probs, soft_cross_entropy_from_logits
from nmt_sd.criterions.lssd_config import add_args, term_kwargs
from nmt_sd.criterions.lssd_teachers import TeacherBook, TeacherStore
from nmt_sd.criterions.objective import TERMS, Term, register_preset
from nmt_sd.errors import NmtSdError

logger = logging.getLogger(__name__)


def gate_weights(
    p_s: torch.Tensor,
    p_t: torch.Tensor,
    pad_mask: torch.Tensor,
    gate: str,
    level: str = "token",
    low: float = 0.2,
) -> torch.Tensor:
    """Per-token KD weights g (B, T), 0 at pads.

    Args:
        p_s, p_t: (B, T) student / teacher gold-token probabilities (detached).
        pad_mask: (B, T) True at pad targets.
        gate: whole | selective (1 where p_T > p_S, else ``low``) | adaptive (min(p_T/p_S, 1)).
        level: token, or sentence: selective compares the sentence sums of gold
            probabilities, adaptive the sentence means; the result is broadcast.
    """
    keep = (~pad_mask).float()
    if gate == "whole":
        return keep
    if level == "sentence":
        n = keep.sum(1, keepdim=True).clamp(min=1.0)  # (B, 1)
        p_s = (p_s * keep).sum(1, keepdim=True)  # sums (B, 1)
        p_t = (p_t * keep).sum(1, keepdim=True)
        if gate == "adaptive":
            p_s, p_t = p_s / n, p_t / n  # means
        p_s, p_t = p_s.expand_as(keep), p_t.expand_as(keep)
    if gate == "selective":
        g = torch.where(p_t > p_s, torch.ones_like(p_s), torch.full_like(p_s, low))
    elif gate == "adaptive":
        g = (p_t / p_s.clamp(min=1e-30)).clamp(max=1.0)
    else:
        raise ValueError(f"unknown gate {gate!r}")
    return g * keep


@TERMS.register("lssd")
class LSSDTerm(Term):
    def __init__(
        self,
        pairs,
        langs,
        side: str,
        weight: float,
        gate: str,
        level: str,
        low: float,
        warmup: int,
        interpolate: bool,
        teacher_dtype: torch.dtype,
        save_dir,
        padding_idx: int,
        lang_masks=None,
    ):
        super().__init__()
        self.pairs, self.langs, self.side = pairs, langs, side
        self.weight, self.gate, self.level, self.low = weight, gate, level, low
        self.interpolate, self.teacher_dtype = interpolate, teacher_dtype
        self.padding_idx = padding_idx
        self.book, self.epoch = TeacherBook(warmup), 1
        # a plain object: never saved or optimised
        self.teachers = TeacherStore(save_dir, teacher_dtype)
        self.mask_rows = {lang: i for i, lang in enumerate(lang_masks or {})}
        if lang_masks:
            masks = torch.stack(list(lang_masks.values()))  # (L, V)
            self.register_buffer("lang_masks", masks, persistent=False)

    add_args = staticmethod(add_args)  # the --lssd-* flags: lssd_config.py

    @classmethod
    def from_args(cls, args, task) -> "LSSDTerm":
        return cls(**term_kwargs(args, task))

    # -- bookkeeping (training loop hooks) ---------------------------------
    def language_losses(self, per_pair: dict) -> dict[str, float]:
        """Per-language dev loss: the pair's loss, averaged over the language's pairs."""
        grouped: dict[str, list[float]] = {}
        for src, tgt in self.pairs:
            stats = per_pair.get(f"{src}-{tgt}")
            lang = src if self.side == "src" else tgt
            if stats is not None:
                grouped.setdefault(lang, []).append(float(stats["loss"]))
        return {lang: sum(v) / len(v) for lang, v in grouped.items()}

    def on_validation_end(
        self, epoch: int, per_pair: dict, model, end_of_epoch: bool
    ) -> dict:
        if not end_of_epoch:  # teachers change at epoch ends only
            return {}
        old_files = self.book.teacher_epochs()
        improved = self.book.update(epoch, self.language_losses(per_pair))
        if improved and self.weight > 0:
            self.teachers.add(epoch, model)
        kept = self.book.teacher_epochs()
        self.teachers.keep(kept, files=old_files | kept)
        mb = self.teachers.megabytes()
        logger.info(
            f"lssd epoch {epoch}: teachers updated for {','.join(improved) or 'none'}; "
            f"{len(self.copies)} teacher copies (epochs {sorted(self.copies)}), {mb:.1f} MB"
        )
        out = {
            "lssd_updated": ",".join(improved) or "-",
            "lssd_teacher_copies": len(self.copies),
            "lssd_teacher_mb": round(mb, 2),
        }
        for lang, e in sorted(self.book.best_epoch.items()):
            out[f"lssd_best_epoch_{lang}"] = e
        return out

    def on_epoch_begin(self, epoch: int, model) -> None:
        self.epoch = epoch
        self.ensure_teachers(model)
        if self.weight > 0 and self.book.best_epoch:
            langs = ",".join(self.distilled_langs(epoch)) or "no language"
            logger.info(f"lssd epoch {epoch}: distilling {langs}")

    def distilled_langs(self, epoch: int) -> list[str]:
        return [x for x in sorted(self.book.best_epoch) if self.book.distils(x, epoch)]

    @property
    def copies(self) -> dict:
        """The teacher copies in memory: epoch -> frozen model."""
        return self.teachers.copies

    def ensure_teachers(self, model) -> None:
        """After a restart: rebuild every referenced teacher (none while w = 0)."""
        if self.weight > 0:
            self.teachers.ensure(self.book, model)

    def get_extra_state(self) -> dict:
        return {"version": 1, **self.book.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.book.load_state_dict(state)
        self.teachers.clear()  # rebuilt from the files by ensure_teachers

    # -- the loss ------------------------------------------------------------
    def batch_lang(self, sample) -> str:
        """The one language (``self.side``) of a batch; a mix is an error."""
        ids = sample.get(f"{self.side}_lang_id")
        if ids is None:  # a bilingual batch
            return self.pairs[0][0 if self.side == "src" else 1]
        lo, hi = int(ids.min()), int(ids.max())
        if lo != hi:
            raise NmtSdError(
                f"lssd: a batch mixes {self.side} languages {self.langs[lo]} and {self.langs[hi]}; "
                "LSSD needs one language per batch (--task multilingual_translation batches one pair)"
            )
        return self.langs[lo]

    def distils(self, sample) -> bool:
        lang = self.batch_lang(sample)
        return self.weight > 0 and self.book.distils(lang, self.epoch)

    def ce_scale_for(self, sample) -> float:
        if not self.distils(sample):
            return 1.0
        return 1.0 - self.weight if self.interpolate else 0.5

    def teacher_logits(self, model, sample) -> torch.Tensor:
        """The batch language's teacher logits (B, T, V), frozen; -inf outside the
        target language's vocabulary with --lssd-language-aware."""
        self.ensure_teachers(model)
        teacher = self.copies[self.book.best_epoch[self.batch_lang(sample)]]
        device = sample["target"].device
        if next(teacher.parameters()).device != device:
            teacher.to(device)  # lazily: criterion.to() does not reach the copies
        teacher.eval()
        amp = (
            contextlib.nullcontext()
        )  # half weights need autocast even in float32 runs
        if self.teacher_dtype != torch.float32:
            amp = torch.autocast(device.type, dtype=self.teacher_dtype)
        with torch.no_grad(), amp:
            logits, _ = teacher(**sample["net_input"])
        if self.mask_rows:
            tgt = self.pairs[0][1]
            if "tgt_lang_id" in sample:
                tgt = self.langs[int(sample["tgt_lang_id"][0])]
            vocab = self.lang_masks[self.mask_rows[tgt]]  # (V,)
            logits = logits.masked_fill(~vocab, float("-inf"))
        return logits

    def forward(self, model, sample, passes, num_updates: int):
        lang = self.batch_lang(sample)
        # the same keys on every batch: workers reduce one key list
        logs = {f"lssd_kd_{x}": 0.0 for x in self.logged_langs()}
        logs.update(lssd_kd=0.0, lssd_distilled=0)
        if not self.distils(sample):
            return torch.zeros((), device=sample["target"].device), logs
        target = sample["target"]  # (B, T)
        pad = target.eq(self.padding_idx)
        t_logits = self.teacher_logits(model, sample)  # (B, T, V), once per batch
        p_t = gold_probs(t_logits, target) if self.gate != "whole" else None
        kd = 0.0
        for p in passes:  # averaged over the student's passes
            g = None
            if p_t is not None:
                p_s = p.gold_probs(target)  # (B, T)
                g = gate_weights(p_s, p_t, pad, self.gate, self.level, self.low)
            kd = kd + soft_cross_entropy_from_logits(p.logits, t_logits, pad, weights=g)
        kd = kd / len(passes)
        logs.update(lssd_kd=kd.detach(), lssd_distilled=sample["ntokens"])
        logs[f"lssd_kd_{lang}"] = kd.detach()
        return (self.weight if self.interpolate else 0.5 * self.weight) * kd, logs

    def logged_langs(self) -> list[str]:
        return sorted({p[0] if self.side == "src" else p[1] for p in self.pairs})


register_preset("lssd", ["lssd"])

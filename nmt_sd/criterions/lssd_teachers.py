"""LSSD's teachers (Huang et al., "Unifying the Convergences in Multilingual Neural Machine
Translation", EMNLP 2022, arXiv 2205.01620): which epoch's model teaches each language, and
the frozen copies of those epochs in memory and on disk.

Kept apart from the term (``lssd.py``: the objective, its gates, a batch's language)
because none of this touches the loss: it is state across epochs, restarts and files, and
it knows languages only as names.

``TeacherBook`` (pure Python, in the checkpoint as the term's extra state):

1. After the end-of-epoch validation, for each language with label-smoothed dev loss
   L_l (per token, base 2; many-to-many: mean over l's pairs): if l has no best yet or
   L_l < best[l], then best[l], best_epoch[l] = L_l, epoch and l's teacher becomes a
   frozen copy of the current model. Languages improved in the same epoch share one
   copy. Mid-epoch validations change nothing.
2. A batch of language l in epoch e is distilled iff e > ``--lssd-warmup-epochs``, l has
   a teacher and e − best_epoch[l] > 1; so no language is distilled in epoch 2.

``TeacherStore`` (never in the checkpoint): copies live in memory in the training
precision (bf16 under --bf16, fp16 under --fp16: the official code's fp16 copies) and are
written beside the checkpoint as ``SAVE_DIR/lssd_teacher{EPOCH}.pt`` (never inside the
model checkpoint). On resume a teacher is reloaded from its file or, failing that, from
``checkpoint{EPOCH}.pt`` (the official code's only source). Memory: at most one copy per
language, reported.
"""

import copy
import glob
import logging
import os
import re
from typing import Optional

import torch
import torch.nn as nn

from nmt_sd.criterions.objective import unwrap
from nmt_sd.errors import NmtSdError

logger = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TeacherBook:
    """Per-language best dev loss and epoch (pure Python; the teachers are the epochs)."""

    def __init__(self, warmup_epochs: int = 1):
        self.warmup = warmup_epochs
        self.best_loss: dict[str, float] = {}
        self.best_epoch: dict[str, int] = {}

    def update(self, epoch: int, losses: dict[str, float]) -> list[str]:
        """Record this epoch's per-language losses; returns the languages whose teacher
        is replaced by the current model (new best, or first validation)."""
        improved = [
            lang
            for lang in sorted(losses)
            if lang not in self.best_loss or losses[lang] < self.best_loss[lang]
        ]
        for lang in improved:
            self.best_loss[lang], self.best_epoch[lang] = (
                float(losses[lang]),
                int(epoch),
            )
        return improved

    def distils(self, lang: str, epoch: int) -> bool:
        return (
            epoch > self.warmup
            and lang in self.best_epoch
            and epoch - self.best_epoch[lang] > 1
        )

    def teacher_epochs(self) -> set[int]:
        return set(self.best_epoch.values())

    def langs_of(self, epoch: int) -> str:
        """The languages whose teacher is ``epoch``'s model, comma-joined (for messages)."""
        return ",".join(
            lang for lang, e in sorted(self.best_epoch.items()) if e == epoch
        )

    def state_dict(self) -> dict:
        return {"best_loss": dict(self.best_loss), "best_epoch": dict(self.best_epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.best_loss = {k: float(v) for k, v in state["best_loss"].items()}
        self.best_epoch = {k: int(v) for k, v in state["best_epoch"].items()}


def frozen_copy(model, dtype: torch.dtype) -> nn.Module:
    """A frozen, eval-mode copy of the model (unwrapped from DDP) in precision ``dtype``."""
    teacher = copy.deepcopy(unwrap(model))
    for p in teacher.parameters():
        p.grad = None
    teacher.to(dtype=dtype).requires_grad_(False)
    return teacher.eval()


def teacher_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


class TeacherStore:
    """Frozen teacher copies by epoch, and their files beside the checkpoint.

    A plain object, not an ``nn.Module``: the copies are never in the criterion's
    state_dict, never optimised, and ``criterion.to()`` does not reach them. Files are
    written and deleted by the master process only; every worker keeps its own copies.
    """

    def __init__(self, save_dir: Optional[str], dtype: torch.dtype):
        self.save_dir, self.dtype = save_dir, dtype
        self.copies: dict[int, nn.Module] = {}  # epoch -> frozen model

    def path(self, epoch: int) -> str:
        return os.path.join(self.save_dir, f"lssd_teacher{epoch}.pt")

    def add(self, epoch: int, model) -> None:
        """Copy the current model as ``epoch``'s teacher and write its file."""
        from nmt_sd.training import distributed as dist_utils
        from nmt_sd.training.checkpoint import atomic_save

        self.copies[epoch] = frozen_copy(model, self.dtype)
        if self.save_dir and dist_utils.is_master():
            os.makedirs(self.save_dir, exist_ok=True)
            state = {
                "model": self.copies[epoch].state_dict(),
                "args": {"lssd_teacher_epoch": epoch},
            }
            atomic_save(state, self.path(epoch))

    def keep(self, epochs: set[int], files: set[int]) -> None:
        """Release the copies of epochs not in ``epochs``; delete the teacher files of epochs
        not in ``files`` (the caller passes those of the current state and of the last saved
        checkpoint, the state before this update)."""
        from nmt_sd.training import distributed as dist_utils

        self.copies = {e: m for e, m in self.copies.items() if e in epochs}
        if not self.save_dir or not dist_utils.is_master():
            return
        for path in glob.glob(os.path.join(self.save_dir, "lssd_teacher*.pt")):
            m = re.fullmatch(r"lssd_teacher(\d+)\.pt", os.path.basename(path))
            if m and int(m.group(1)) not in files:
                os.remove(path)

    def ensure(self, book: TeacherBook, model) -> None:
        """After a restart: rebuild every teacher the book references from its file, or
        from ``checkpoint{EPOCH}.pt``; ``model`` gives the architecture."""
        from nmt_sd.training.checkpoint import load_checkpoint_file, load_model_state

        for epoch in sorted(book.teacher_epochs() - set(self.copies)):
            langs = book.langs_of(epoch)
            paths = (
                [self.path(epoch), os.path.join(self.save_dir, f"checkpoint{epoch}.pt")]
                if self.save_dir
                else []
            )
            path = next((p for p in paths if os.path.isfile(p)), None)
            if path is None:
                raise NmtSdError(
                    f"lssd: the teacher of {langs} (epoch {epoch}) is gone: "
                    f"{paths[0] if paths else '--save-dir'} not found (nor checkpoint{epoch}.pt)"
                )
            teacher = frozen_copy(model, self.dtype)
            load_model_state(teacher, load_checkpoint_file(path)["model"], path)
            self.copies[epoch] = teacher
            logger.info(
                f"lssd: reloaded the teacher of {langs} (epoch {epoch}) from {path}"
            )

    def megabytes(self) -> float:
        return sum(teacher_bytes(m) for m in self.copies.values()) / 2**20

    def clear(self) -> None:
        self.copies = {}

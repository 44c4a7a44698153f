"""The Trainer owns the model, criterion, optimizer and update counter; it alone calls
backward. Gradients are summed over the sub-batches of ``--update-freq`` and workers,
then divided by the total ``sample_size`` (fairseq's normalisation)."""

import contextlib
import logging
import math
from typing import Dict, List

import torch
from torch.nn.parallel import DistributedDataParallel

from nmt_sd.errors import NmtSdError
from nmt_sd.training import distributed as dist_utils
from nmt_sd.training.checkpoint import CHECKPOINT_VERSION, load_model_state, plain_args
from nmt_sd.training.lr_scheduler import build_lr_schedule

logger = logging.getLogger(__name__)


def move_to(sample, device):
    if torch.is_tensor(sample):
        return sample.to(device, non_blocking=True)
    if isinstance(sample, dict):
        return {k: move_to(v, device) for k, v in sample.items()}
    return sample


def unique_params(*modules) -> List[torch.nn.Parameter]:
    seen, out = set(), []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def sum_logs(logs: List[Dict]) -> Dict[str, float]:
    """Sum every numeric entry over logging outputs (one host sync per key)."""
    keys = sorted({k for log in logs for k in log})
    return {k: float(sum(float(log[k]) for log in logs if k in log)) for k in keys}


class Trainer:
    def __init__(self, args, task, model, criterion, device: torch.device):
        self.args, self.task, self.device = args, task, device
        self.model = model.to(device)
        self.criterion = criterion.to(device)
        self.world = dist_utils.world_size()
        self.wrapped = self.model
        if self.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.model, device_ids=ids)
        self.params = unique_params(self.model, self.criterion)
        model_ids = {id(p) for p in self.model.parameters()}
        # training-only modules owned by the criterion (Seer decoder, ...) live outside
        # DDP: their gradients are averaged over workers by hand, like DDP does
        self.criterion_params = [p for p in self.params if id(p) not in model_ids]
        self.optimizer = self._build_optimizer()
        self.lr_schedule = build_lr_schedule(args)
        self.amp_dtype = (
            torch.bfloat16 if args.bf16 else (torch.float16 if args.fp16 else None)
        )
        self.scaler = torch.amp.GradScaler("cuda") if args.fp16 else None
        self.num_updates = 0
        self._set_lr()

    def _build_optimizer(self):
        # fairseq's Adam decays weights decoupled from the gradient (AdamW form)
        a = self.args
        kw = dict(
            lr=a.lr,
            betas=tuple(a.adam_betas),
            eps=a.adam_eps,
            weight_decay=a.weight_decay,
        )
        try:
            return torch.optim.AdamW(self.params, fused=True, **kw)
        except (RuntimeError, TypeError):
            return torch.optim.AdamW(self.params, foreach=True, **kw)

    def _set_lr(self) -> float:
        lr = self.lr_schedule(self.num_updates)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def get_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def train_step(self, samples: List[Dict]):
        """One optimizer update over ``samples`` (len = --update-freq). Returns the
        logging outputs (tensors, not synced) and the gradient norm (a tensor)."""
        self.model.train()
        self.criterion.train()
        self.criterion.set_num_updates(self.num_updates)
        logs, sample_size = [], 0
        for i, sample in enumerate(samples):
            sample = move_to(sample, self.device)
            last = i == len(samples) - 1
            no_sync = (
                self.wrapped.no_sync()
                if self.world > 1 and not last
                else contextlib.nullcontext()
            )
            with no_sync:
                with self.autocast():
                    loss, ss, log = self.criterion(self.wrapped, sample)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            logs.append(log)
            sample_size += ss
        if (
            self.world > 1
        ):  # DDP averaged the gradients: undo, then divide by the global size
            sample_size = dist_utils.all_reduce_sums([float(sample_size)], self.device)[
                0
            ]
            dist_utils.average_gradients(self.criterion_params)
        grads = [p.grad for p in self.params if p.grad is not None]
        torch._foreach_mul_(grads, self.world / max(sample_size, 1.0))
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.args.clip_norm if self.args.clip_norm > 0 else math.inf
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1
        self._set_lr()
        return logs, gnorm

    @torch.no_grad()
    def valid_step(self, sample: Dict) -> Dict:
        self.model.eval()
        self.criterion.eval()
        sample = move_to(sample, self.device)
        with self.autocast():
            _, _, log = self.criterion(self.model, sample)
        return log

    # -- checkpoint state ----------------------------------------------------
    def state_dict(self, extra_state: Dict) -> Dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "version": CHECKPOINT_VERSION,
            "args": plain_args(self.args),
            "model": self.model.state_dict(),
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "num_updates": self.num_updates,
            "rng": rng,
            "extra_state": extra_state,
        }

    def load_state_dict(
        self, state: Dict, path: str, reset_optimizer: bool = False
    ) -> Dict:
        load_model_state(self.model, state["model"], path)
        if state.get("criterion"):
            try:
                self.criterion.load_state_dict(state["criterion"])
            except RuntimeError as e:
                raise NmtSdError(
                    f"checkpoint {path}: criterion state does not match --criterion ({str(e).splitlines()[0]})"
                )
        if not reset_optimizer and state.get("optimizer"):
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError) as e:
                raise NmtSdError(
                    f"checkpoint {path}: optimizer state does not match ({e}); use --reset-optimizer"
                )
            if self.scaler and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        self.num_updates = int(state.get("num_updates", 0))
        self.criterion.set_num_updates(self.num_updates)
        rng = state.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self._set_lr()
        return state.get("extra_state") or {}

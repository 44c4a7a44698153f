"""torch.distributed setup for ``torchrun`` (gloo on CPU, nccl on CUDA)."""

import logging
import os
from typing import List

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_master() -> bool:
    return rank() == 0


def init_from_env(use_cuda: bool) -> torch.device:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick the device."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        logger.info(
            f"distributed init: rank {rank()} of {world_size()} ({dist.get_backend()})"
        )
    return device


def all_reduce_sums(values: List[float], device) -> List[float]:
    """Sum a list of numbers over all workers (one collective)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj):
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(params) -> None:
    """Average ``params``' gradients over workers in one flat all-reduce (for parameters
    outside DDP). A parameter without a gradient contributes zeros."""
    if world_size() == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n

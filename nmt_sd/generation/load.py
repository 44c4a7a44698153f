"""Load a trained model for inference: the checkpoint's own args rebuild the
architecture; the data directory supplies the dictionaries."""

import argparse
import logging

import torch

from nmt_sd.errors import NmtSdError
from nmt_sd.models import ARCH_PRESETS, TransformerModel
from nmt_sd.tasks import TASKS
from nmt_sd.training.checkpoint import load_checkpoint_file, load_model_state

logger = logging.getLogger(__name__)


def model_args_from_checkpoint(state, path: str) -> argparse.Namespace:
    saved = dict(ARCH_PRESETS.get(state["args"].get("arch", "transformer"), {}))
    saved.update({k: v for k, v in state["args"].items() if v is not None})
    for key in (
        "encoder_embed_dim",
        "decoder_embed_dim",
        "encoder_layers",
        "decoder_layers",
    ):
        if key not in saved:
            raise NmtSdError(f"checkpoint {path} lacks model argument '{key}'")
    return argparse.Namespace(**saved)


def load_model_for_inference(
    path: str, data: str, source_lang=None, target_lang=None, device="cpu"
):
    """Returns (model in eval mode, task, checkpoint args)."""
    state = load_checkpoint_file(path)
    ckpt_args = model_args_from_checkpoint(state, path)
    task_args = argparse.Namespace(
        **{
            **vars(
                ckpt_args
            ),  # the task's own flags (multilingual: --lang-pairs, language tags)
            "data": data,
            "source_lang": source_lang or getattr(ckpt_args, "source_lang", None),
            "target_lang": target_lang or getattr(ckpt_args, "target_lang", None),
        }
    )
    task = TASKS.get(getattr(ckpt_args, "task", "translation")).setup_task(task_args)
    if hasattr(task, "select_pair") and task.gen_pair is None:
        # a multilingual model: one -s/-t pair at a time
        task.select_pair(source_lang, target_lang)
    model = TransformerModel.build_model(ckpt_args, task.src_dict, task.tgt_dict)
    load_model_state(model, state["model"], path)
    # frozen: fused projections are concatenated once
    model.to(device).eval().requires_grad_(False)
    n = sum(p.numel() for p in model.parameters())
    logger.info(
        f"loaded {path}: {ckpt_args.arch}, {n:,} parameters, {state.get('num_updates', '?')} updates"
    )
    return model, task, ckpt_args


def half_precision_linears(
    model: torch.nn.Module, bf16: bool, fp16: bool
) -> torch.nn.Module:
    """For bf16/fp16 inference: give every Linear its own half-precision weight and bias,
    cast once, so autocast does not cast them again at every decoding step (its weight
    cache is off for parameters that need no gradient). The values are autocast's own
    casts, so the output is unchanged. A Linear tied to an embedding gets a separate copy;
    embeddings, LayerNorms and everything outside autocast's half-precision ops stay float32.
    """
    if not (bf16 or fp16):
        return model
    dtype = torch.bfloat16 if bf16 else torch.float16
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.weight = torch.nn.Parameter(
                m.weight.detach().to(dtype), requires_grad=False
            )
            if m.bias is not None:
                m.bias = torch.nn.Parameter(
                    m.bias.detach().to(dtype), requires_grad=False
                )
    return model


def inference_autocast(device: torch.device, bf16: bool, fp16: bool):
    import contextlib

    if bf16 or fp16:
        return torch.autocast(
            device_type=device.type, dtype=torch.bfloat16 if bf16 else torch.float16
        )
    return contextlib.nullcontext()

"""The conditional masked LM (CMLM) decoder of CBBGCA (``--criterion cmlm_kd``; Ghazvininejad
et al. 2019, Mask-Predict, for the masking): a stack of decoder layers with full (non-causal)
self-attention over the target with a subset replaced by ``<mask>``, attending to the shared
encoder. Training-only: the term owns it, so inference checkpoints hold a plain Transformer.
"""

import logging
import math
import os
import re

import torch
import torch.nn as nn

from nmt_sd.errors import NmtSdError
from nmt_sd.models.transformer import (
    EncoderOut,
    SinusoidalPositions,
    TransformerDecoderLayer,
    build_embedding,
    dropout,
    ffn,
)

logger = logging.getLogger("nmt_sd.criterions.cmlm_kd")


def random_cmlm_mask(target: torch.Tensor, pad: int, eos: int) -> torch.Tensor:
    """Mask-Predict's training mask: per sentence m ~ U{1..n} positions, uniformly without
    replacement, among the n non-pad, non-EOS tokens (none when n = 0).

    Args:
        target: (B, T) right-padded gold tokens ending in </s>.
    Returns:
        (B, T) bool, True = masked.
    """
    real = target.ne(pad) & target.ne(eos)  # (B, T)
    n = real.sum(1)  # (B,)
    # (B,)
    m = torch.minimum((torch.rand(n.shape, device=target.device) * n).long() + 1, n)
    return real & (
        rank_within_rows(torch.rand(target.shape, device=target.device), real)
        < m[:, None]
    )


def rank_within_rows(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T) rank of each valid score in its row, ascending (stable); invalid ones rank last."""
    s = scores.float().masked_fill(~valid, float("inf"))
    return s.argsort(dim=1, stable=True).argsort(dim=1)


def bidirectional_layer(
    layer: TransformerDecoderLayer, x, pad_mask, enc: EncoderOut
) -> torch.Tensor:
    """A decoder layer's sublayers with full (non-causal) self-attention over non-pad keys.

    Args:
        x: (B, T, C); pad_mask: (B, T) True at pads; enc: EncoderOut for the same B rows.
    """
    x, _ = layer._sublayer(
        x,
        layer.self_attn_layer_norm,
        lambda h: layer.self_attn(h, h, key_padding_mask=pad_mask),
    )
    x, _ = layer._sublayer(
        x,
        layer.encoder_attn_layer_norm,
        lambda h: layer.encoder_attn(h, enc.out, key_padding_mask=enc.padding_mask),
    )
    x, _ = layer._sublayer(x, layer.final_layer_norm, lambda h: (ffn(layer, h), None))
    return x


class CMLMDecoder(nn.Module):
    """Conditional masked LM decoder. With ``shared`` it borrows the model decoder's
    ``embed_tokens`` and ``output_projection`` at call time (never stored here)."""

    def __init__(self, args, num_layers: int, dictionary, shared: bool):
        super().__init__()
        dim = args.decoder_embed_dim
        self.padding_idx, self.shared, self.dropout = (
            dictionary.pad(),
            shared,
            args.dropout,
        )
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(args) for _ in range(num_layers)
        )
        self.embed_scale = 1.0 if args.no_scale_embedding else math.sqrt(dim)
        self.embed_positions = SinusoidalPositions(
            dim, self.padding_idx, args.max_target_positions
        )
        self.layernorm_embedding = (
            nn.LayerNorm(dim) if args.layernorm_embedding else None
        )
        self.layer_norm = nn.LayerNorm(dim) if args.decoder_normalize_before else None
        if not shared:
            self.embed_tokens = build_embedding(len(dictionary), dim, self.padding_idx)
            self.output_projection = nn.Linear(dim, len(dictionary), bias=False)
            nn.init.normal_(self.output_projection.weight, mean=0, std=dim**-0.5)

    def forward(
        self, decoder, tokens: torch.Tensor, enc: EncoderOut, rows=None
    ) -> torch.Tensor:
        """CMLM logits.

        Args:
            decoder: the model's TransformerDecoder (embeddings/projection when shared).
            tokens: (B, T) target with ``<mask>`` at the positions to predict.
            enc: EncoderOut (out (B, S, C), padding_mask (B, S)) of the same sentences.
            rows: (B, T) bool positions whose logits are wanted (None: all).
        Returns:
            (N, V) logits at ``rows`` in row-major order, or (B, T, V).
        """
        embed_tokens = decoder.embed_tokens if self.shared else self.embed_tokens
        x = self.embed_scale * embed_tokens(tokens)  # (B, T, C)
        x = x + self.embed_positions(0, tokens.size(1)).to(x.dtype)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = dropout(x, self.dropout, self.training)
        pad_mask = tokens.eq(self.padding_idx)  # (B, T)
        for layer in self.layers:
            x = bidirectional_layer(layer, x, pad_mask, enc)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        if rows is not None:
            # (N, C): the output projection runs only where a prediction is used
            x = x[rows]
        return (decoder.output_projection if self.shared else self.output_projection)(x)


@torch.no_grad()
def predict_masked(
    cmlm: CMLMDecoder,
    decoder,
    target: torch.Tensor,
    enc: EncoderOut,
    groups: list,
    mask_idx: int,
) -> torch.Tensor:
    """The CMLM's re-prediction of each group of positions with exactly that group masked, in
    eval mode (no dropout) under no_grad: the KD teacher's pass.

    Args:
        target: (B, T) gold tokens. enc: the encoder output of the same B sentences.
        groups: (B, T) bool masks, disjoint; rows without a position in a group skip it.
    Returns:
        (N, V) logits, group after group, row-major within a group.
    """
    was_training = cmlm.training
    cmlm.eval()
    out = []
    for g in groups:
        r = g.any(1)  # (B,) sentences with a position in this group
        tokens = target[r].masked_fill(g[r], mask_idx)
        out.append(
            cmlm(decoder, tokens, EncoderOut(enc.out[r], enc.padding_mask[r]), g[r])
        )
    cmlm.train(was_training)
    return out[0] if len(out) == 1 else torch.cat(out)


def stage1_snapshot(
    model: nn.Module, cmlm: CMLMDecoder, saved_args: dict, num_updates: int
) -> dict:
    """A checkpoint-shaped copy (CPU tensors) of the model and the CMLM as they are now, in
    the layout ``build_frozen_teacher`` reads (the CMLM under "criterion" as ``cmlm.*``).
    """
    from nmt_sd.training.checkpoint import CHECKPOINT_VERSION

    def copy(sd, prefix=""):
        return {prefix + k: v.detach().to("cpu", copy=True) for k, v in sd.items()}

    return {
        "version": CHECKPOINT_VERSION,
        "args": saved_args,
        "num_updates": num_updates,
        "model": copy(model.state_dict()),
        "criterion": copy(cmlm.state_dict(), "cmlm."),
    }


def build_frozen_teacher(state: dict, path: str, flag: str, src_dict, tgt_dict):
    """(TransformerModel, CMLMDecoder) in eval mode with requires_grad off, from an nmt-sd
    checkpoint dict whose "criterion" holds CMLM weights (``terms.N.cmlm.*`` or ``cmlm.*``).
    """
    from nmt_sd.criterions.kd_teacher import check_teacher_dictionaries
    from nmt_sd.generation.load import model_args_from_checkpoint
    from nmt_sd.models import TransformerModel
    from nmt_sd.training.checkpoint import load_model_state

    targs = model_args_from_checkpoint(state, path)
    check_teacher_dictionaries(state, targs, src_dict, tgt_dict, path, flag)
    cmlm_state = {
        m.group(1): v
        for k, v in (state.get("criterion") or {}).items()
        if (m := re.fullmatch(r"(?:terms\.\d+\.)?cmlm\.(.+)", k))
    }
    layers = {int(k.split(".")[1]) for k in cmlm_state if k.startswith("layers.")}
    if not layers:
        raise NmtSdError(
            f"{flag} {path}: no CMLM decoder weights in its 'criterion' state "
            "(train the teacher with --criterion cmlm_kd)"
        )
    with torch.random.fork_rng(
        devices=[]
    ):  # building initialises weights: keep the run's RNG stream
        model = TransformerModel.build_model(targs, src_dict, tgt_dict)
        cmlm = CMLMDecoder(
            targs,
            max(layers) + 1,
            tgt_dict,
            shared="embed_tokens.weight" not in cmlm_state,
        )
    load_model_state(model, state["model"], path)
    try:
        cmlm.load_state_dict(cmlm_state)
    except RuntimeError as e:
        raise NmtSdError(
            f"{flag} {path}: its CMLM decoder does not match ({str(e).splitlines()[0]})"
        )
    for m in (model, cmlm):
        m.requires_grad_(False).eval()
    return model, cmlm


def frozen_stage1_teacher(
    model, cmlm, saved_args: dict, num_updates: int, cfg, src_dict, tgt_dict
):
    """CBBGCA's frozen teacher: at the stage boundary a snapshot of the model and the CMLM
    as they are now (saved to ``cfg.stage1_path``, SAVE_DIR/checkpoint_stage1.pt, by the
    master), after the boundary (a resumed run) that file; a one-line error without it.
    """
    from nmt_sd.training import distributed as dist_utils
    from nmt_sd.training.checkpoint import atomic_save, load_checkpoint_file

    path = cfg.stage1_path
    if num_updates == cfg.joint_updates:
        state = stage1_snapshot(model, cmlm, saved_args, num_updates)
        if path and dist_utils.is_master():
            atomic_save(state, path)
            logger.info(
                f"stage 1 done at {num_updates} updates: frozen CMLM teacher saved to {path}"
            )
    elif path and os.path.isfile(path):
        state = load_checkpoint_file(path)
    else:
        raise NmtSdError(
            f"--cmlm-kd-teacher frozen: the stage-1 teacher {path or '(no --save-dir)'} is "
            "missing (it is written when training crosses --cmlm-kd-joint-updates); "
            "give --cmlm-kd-teacher-path"
        )
    flag = "--cmlm-kd-teacher frozen"
    return build_frozen_teacher(
        state, path or "stage-1 snapshot", flag, src_dict, tgt_dict
    )

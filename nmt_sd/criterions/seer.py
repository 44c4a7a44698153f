"""Seer Forcing (Feng, Gu, Guo, Yang, Shao: "Guiding Teacher Forcing with Seer Forcing for
Neural Machine Translation", ACL 2021, arXiv 2106.06751).

L = alpha * LS-CE(dec) + w * LS-CE(seer) + (1 - alpha) * CE(sg[p_seer], p_dec)   (sums over non-pad tokens)

A training-only seer decoder (owned by this term, so it is saved under "criterion" and the
"model" stays a plain Transformer) shares the encoder, the target embeddings (incl. positions
and embedding dropout: it consumes the very tensor the decoder consumed), the final LayerNorm
(pre-norm only) and the output projection. Its N layers run two streams with shared weights:
past = the embedded prev_output_tokens, future = the same reversed within each sentence's
true length n, both with a causal mask. Layers 1..N-1 are full decoder layers; the top layer
runs self-attention on each stream, realigns the future stream, concatenates [past; future],
projects 2d -> d (``seer_trans``), then encoder attention and FFN. KD is the decoder's
cross-entropy against the detached seer distribution (T = 1, no smoothing), averaged over
the passes; only the seer's own CE trains the seer.

Alignment (0-based; target = [y1 .. y_{n-1}, </s>], prev = [</s>, y1 .. y_{n-1}]; position j
predicts target[j] = y_{j+1}). Past out[j] sees prev[0..j] = y_{<=j}. Reversed rev[k] =
prev[n-1-k], so reversed out[k] sees prev[n-1-k .. n-1]; future[j] = reversed out[n-3-j]
sees y_{j+2} .. y_{n-1}, zeros where n-3-j < 0 (the last two positions). Example, n = 5:

    j  predicts  past sees         future = rev_out[k]  future sees
    0  y1        </s>              k = 2                y2 y3 y4
    1  y2        </s> y1           k = 1                y3 y4
    2  y3        </s> y1 y2        k = 0                y4
    3  y4        </s> y1 y2 y3     zeros                -  (only </s> follows)
    4  </s>      </s> y1 .. y4     zeros                -

So position j sees every y except y_{j+1} (its own target) and the final </s>.

Differences from the official code (../shared/docs/methods.md 2(f), 2(h)): the reversal and the
2-position realignment are per sentence (within its true length), not over the padded
length, so a padded sentence gets the same seer output as alone in a batch;
``--seer-dropout`` takes effect (default: the model's --dropout; the official runs
effectively used 0.1); pre-norm normalises the right tensor; one ``seer_trans`` (the
official code builds one per layer but uses only the top one); ``--seer-ce-weight`` (w)
is an addition (official: 1).
"""

import argparse

import torch
import torch.nn as nn

from nmt_sd.criterions.fused import (
    fused_label_smoothed_nll_loss,
    soft_cross_entropy_from_logits,
)
from nmt_sd.criterions.objective import TERMS, Term, register_preset, unwrap
from nmt_sd.errors import NmtSdError
from nmt_sd.models.transformer import EncoderOut, TransformerDecoderLayer, ffn


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Flip each right-padded sequence within its true length; pads stay in place.

    Args:
        x: (B, T, C); lengths: (B,) non-pad counts.
    Returns:
        (B, T, C) with out[b, k] = x[b, n_b - 1 - k] for k < n_b, else x[b, k].
    """
    t = torch.arange(x.size(1), device=x.device)[None, :]  # (1, T)
    n = lengths[:, None]  # (B, 1)
    idx = torch.where(t < n, n - 1 - t, t)  # (B, T)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


def realign_future(rev_out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Future stream back in target order: out[b, j] = rev_out[b, n_b - 3 - j] (it saw
    y_{j+2} .. y_{n-1}), zero where n_b - 3 - j < 0 (incl. padding).

    Args:
        rev_out: (B, T, C) outputs of the reversed stream; lengths: (B,) non-pad counts.
    """
    t = torch.arange(rev_out.size(1), device=rev_out.device)[None, :]  # (1, T)
    src = lengths[:, None] - 3 - t  # (B, T)
    out = rev_out.gather(1, src.clamp(min=0).unsqueeze(-1).expand_as(rev_out))
    return out.masked_fill((src < 0).unsqueeze(-1), 0.0)


class SeerDecoder(nn.Module):
    """The seer's own layers and ``seer_trans``; the embeddings, final LayerNorm and output
    projection are borrowed from the model's decoder at call time (never stored here).
    """

    def __init__(self, args, num_layers: int, dropout: float):
        super().__init__()
        layer_args = argparse.Namespace(**{**vars(args), "dropout": dropout})
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(layer_args) for _ in range(num_layers)
        )
        dim = args.decoder_embed_dim
        self.seer_trans = nn.Linear(2 * dim, dim)
        nn.init.xavier_uniform_(self.seer_trans.weight)
        nn.init.zeros_(self.seer_trans.bias)

    def forward(
        self, decoder, x, lengths, enc: EncoderOut, return_streams: bool = False
    ):
        """Seer logits.

        Args:
            decoder: the model's TransformerDecoder (final LayerNorm, output projection).
            x: (B, T, C) embedded prev_output_tokens, exactly as the decoder consumed them.
            lengths: (B,) true target lengths (non-pad counts of prev_output_tokens).
            enc: the same pass's EncoderOut (out (B, S, C), padding_mask (B, S)).
        Returns:
            logits (B, T, V); with ``return_streams`` also {"past", "future"}: the top
            layer's realigned streams (B, T, C) before ``seer_trans``.
        """
        b, t, c = x.shape
        # the two streams interleaved by sentence (past_0, future_0, past_1, ...): encoder
        # attention then serves both streams of a sentence from one encoder row (queries
        # grouped, as beams are in search), with no copy of the encoder output
        # (2B, T, C)
        both = torch.stack([x, reverse_within_length(x, lengths)], dim=1).view(
            2 * b, t, c
        )
        for layer in self.layers[:-1]:
            # causal; right padding never reaches real positions
            both, _ = layer(both, enc)
        top = self.layers[-1]
        both, _ = top._sublayer(
            both, top.self_attn_layer_norm, lambda h: top.self_attn(h, h, causal=True)
        )
        both = both.view(b, 2, t, c)
        past, future = both[:, 0], realign_future(both[:, 1], lengths)
        # (B, T, 2C) -> (B, T, C)
        h = self.seer_trans(torch.cat([past, future], dim=-1))
        h, _ = top._sublayer(
            h,
            top.encoder_attn_layer_norm,
            lambda q: top.encoder_attn(q, enc.out, key_padding_mask=enc.padding_mask),
        )
        h, _ = top._sublayer(h, top.final_layer_norm, lambda q: (ffn(top, q), None))
        if decoder.layer_norm is not None:
            h = decoder.layer_norm(h)
        logits = decoder.output_layer(h)
        return (logits, {"past": past, "future": future}) if return_streams else logits


@TERMS.register("seer")
class SeerTerm(Term):
    needs_hiddens = True  # the decoder's embedded input: pass.extra["inner_states"][0]

    def __init__(
        self,
        args,
        alpha: float,
        ce_weight: float,
        layers: int,
        dropout: float,
        padding_idx: int,
    ):
        super().__init__()
        self.alpha, self.ce_scale, self.ce_weight = alpha, alpha, ce_weight
        self.eps, self.padding_idx = args.label_smoothing, padding_idx
        self.seer = SeerDecoder(args, layers, dropout)

    @staticmethod
    def add_args(parser) -> None:
        g = parser.add_argument_group("Seer Forcing")
        g.add_argument(
            "--seer-alpha",
            type=float,
            default=0.5,
            metavar="A",
            help="weight of the decoder's CE; KD gets 1 - alpha (paper: 0.5, NIST Zh-En 0.25)",
        )
        g.add_argument(
            "--seer-ce-weight",
            type=float,
            default=1.0,
            metavar="W",
            help="weight of the seer's CE",
        )
        g.add_argument(
            "--seer-layers",
            type=int,
            default=None,
            metavar="N",
            help="seer decoder layers (default: --decoder-layers)",
        )
        g.add_argument(
            "--seer-dropout",
            type=float,
            default=None,
            metavar="D",
            help="residual dropout inside the seer layers (default: --dropout)",
        )

    @classmethod
    def from_args(cls, args, task) -> "SeerTerm":
        layers = (
            args.seer_layers if args.seer_layers is not None else args.decoder_layers
        )
        dropout = args.seer_dropout if args.seer_dropout is not None else args.dropout
        if not 0.0 <= args.seer_alpha <= 1.0:
            raise NmtSdError(
                f"--seer-alpha must be in [0, 1] (KD weight is 1 - alpha), got {args.seer_alpha}"
            )
        if args.seer_ce_weight < 0:
            raise NmtSdError(
                f"--seer-ce-weight must be >= 0, got {args.seer_ce_weight}"
            )
        if layers < 1:
            raise NmtSdError(f"--seer-layers must be >= 1, got {layers}")
        if not 0.0 <= dropout < 1.0:
            raise NmtSdError(f"--seer-dropout must be in [0, 1), got {dropout}")
        return cls(
            args,
            args.seer_alpha,
            args.seer_ce_weight,
            layers,
            dropout,
            task.tgt_dict.pad(),
        )

    def seer_logits(self, model, sample, p) -> torch.Tensor:
        """The seer's logits (B, T, V), built on pass ``p``'s embeddings and encoder output."""
        prev = sample["net_input"]["prev_output_tokens"]  # (B, T) right-padded
        lengths = prev.ne(self.padding_idx).sum(dim=1)  # (B,)
        return self.seer(
            unwrap(model).decoder,
            p.extra["inner_states"][0],
            lengths,
            p.extra["encoder_out"],
        )

    def forward(self, model, sample, passes, num_updates: int):
        # the teacher runs once per batch (on the first pass); KD is averaged over the passes
        logits = self.seer_logits(model, sample, passes[0])  # (B, T, V)
        target = sample["target"]  # (B, T)
        ce, nll = fused_label_smoothed_nll_loss(
            logits.reshape(-1, logits.size(-1)),
            target.reshape(-1),
            self.eps,
            self.padding_idx,
        )
        pad = target.eq(self.padding_idx)
        # stop-gradient: the seer's logits enter KD detached (fused from logits, chunked)
        kd = sum(
            soft_cross_entropy_from_logits(p.logits, logits.detach(), pad)
            for p in passes
        ) / len(passes)
        loss = self.ce_weight * ce + (1.0 - self.alpha) * kd
        return loss, {"seer_nll": nll.detach(), "seer_kd": kd.detach()}


register_preset("seer", ["seer"])

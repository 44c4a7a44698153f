"""Transformer encoder-decoder (Vaswani et al., 2017, arXiv 1706.03762), fairseq-compatible.

Batch-first throughout; parameter names follow fairseq (``embed_tokens``,
``self_attn.{q,k,v,out}_proj``, ``encoder_attn``, ``fc1``/``fc2``, ``*_layer_norm``,
``output_projection``). Post-norm by default, pre-norm with ``--*-normalize-before``.
Incremental decoding keeps an explicit per-layer key/value cache (``DecoderCache``)
that beam search reorders with ``cache.reorder(new_order)``.
"""

import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from nmt_sd.errors import NmtSdError
from nmt_sd.models.dropout import dropout


class EncoderOut(NamedTuple):
    out: torch.Tensor  # (B, S, C)
    padding_mask: torch.Tensor  # (B, S) bool, True = pad


class DecoderCache:
    """Per-layer self-attention K/V (grows by one step per call) and cross-attention
    K/V (computed once from the encoder output)."""

    def __init__(self, num_layers: int):
        self.layers: List[Dict[str, Dict[str, torch.Tensor]]] = [
            {"self": {}, "cross": {}} for _ in range(num_layers)
        ]

    @property
    def seq_len(self) -> int:
        k = self.layers[0]["self"].get("k") if self.layers else None
        return 0 if k is None else k.size(2)

    def reorder(self, new_order: torch.Tensor, parts=("self", "cross")) -> None:
        """index_select the cached K/V of ``parts`` on the batch dim. Beam search keeps
        the cross K/V one row per sentence (shared by its beams), so it reorders "self"
        every step and "cross" only when sentences leave the batch."""
        for layer in self.layers:
            for part in parts:
                cached = layer[part]
                for name in cached:
                    cached[name] = cached[name].index_select(0, new_order)


def sinusoidal_table(num_positions: int, dim: int, padding_idx: int) -> torch.Tensor:
    """fairseq's sinusoidal table: [sin | cos] halves, row ``padding_idx`` zero."""
    half = dim // 2
    freq = torch.exp(
        torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1))
    )
    ang = torch.arange(num_positions, dtype=torch.float)[:, None] * freq[None, :]
    table = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)
    if dim % 2 == 1:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    table[padding_idx] = 0
    return table


class SinusoidalPositions(nn.Module):
    """Positions p = padding_idx + 1 + t (fairseq's numbering); no parameters."""

    def __init__(self, dim: int, padding_idx: int, max_positions: int):
        super().__init__()
        self.padding_idx = padding_idx
        self.max_positions = max_positions
        table = sinusoidal_table(max_positions + padding_idx + 1, dim, padding_idx)
        self.register_buffer("weights", table, persistent=False)

    def forward(self, start: int, length: int) -> torch.Tensor:  # (length, C)
        if start + length > self.max_positions:
            raise NmtSdError(
                f"sequence of length {start + length} exceeds max positions {self.max_positions}"
            )
        first = self.padding_idx + 1 + start
        return self.weights[first : first + length]


# On CPU, attention over at most this many keys runs as plain matmuls + softmax
# (faster than the fused kernel for short sentences in float32; bf16 always, whose fused
# CPU backward is slow). Measured in bench/ab_cpu_step.py attention.
CPU_EXPLICIT_ATTENTION_MAX_KEYS = 128


def explicit_attention(q, k, v, mask, is_causal: bool, p: float, training: bool):
    """softmax(q k^T / sqrt(D) + masks) v with the matmuls in the inputs' dtype and the
    softmax in at least float32. q: (B, H, Tq, D), k/v: (B, H, Tk, D), mask: (B, 1, 1, Tk)
    True = attend (or None). Returns the output (B, H, Tq, D) and the probabilities
    (B, H, Tq, Tk), the latter before dropout."""
    # (B, H, Tq, Tk)
    scores = torch.matmul(q * (1.0 / math.sqrt(q.size(-1))), k.transpose(-1, -2))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    if is_causal:
        tq, tk = scores.shape[-2:]
        future = torch.ones(tq, tk, dtype=torch.bool, device=q.device).triu_(
            tk - tq + 1
        )
        scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(
        scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)
    )
    out = torch.matmul(dropout(probs.to(v.dtype), p, training), v)
    return out, probs


def attention(
    q, k, v, mask, is_causal: bool, p: float, training: bool, need_weights: bool = False
):
    """Scaled dot-product attention (B, H, Tq, D) -> (B, H, Tq, D), and the head-averaged
    weights (B, Tq, Tk) when asked. On CPU the explicit form runs for every dtype but
    float32 (torch 2.13's fused bf16 CPU backward is ~4x slower than float32) and for
    float32 up to CPU_EXPLICIT_ATTENTION_MAX_KEYS keys; elsewhere the fused kernel."""
    cpu = q.device.type == "cpu"
    if need_weights or (
        cpu
        and (q.dtype != torch.float32 or k.size(2) <= CPU_EXPLICIT_ATTENTION_MAX_KEYS)
    ):
        out, probs = explicit_attention(q, k, v, mask, is_causal, p, training)
        return out, (probs.mean(dim=1).to(q.dtype) if need_weights else None)
    p = p if training else 0.0
    return (
        F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal
        ),
        None,
    )


def fused_linear(x: torch.Tensor, *projs: nn.Linear):
    """Apply several Linear layers to the same input as one matmul (their weights
    concatenated): one wide GEMM runs markedly faster on CPU than three C x C ones.
    The parameters stay separate (fairseq's q_proj/k_proj/v_proj names)."""
    w, b = _fused_params(projs)
    return F.linear(x, w, b).chunk(len(projs), dim=-1)


def _fused_params(projs) -> Tuple[torch.Tensor, torch.Tensor]:
    """The projections' weights and biases concatenated. For a frozen model (inference,
    teachers: no parameter needs a gradient) they are concatenated once and kept on the
    first projection, rebuilt only if a weight changes, rather than at every decoding step.
    """
    if projs[0].weight.requires_grad:
        return torch.cat([p.weight for p in projs]), torch.cat([p.bias for p in projs])
    key = tuple(
        (id(p), p.weight.data_ptr(), p.weight._version, p.bias._version) for p in projs
    )
    kept = projs[0].__dict__.get("_fused_params")
    if kept is None or kept[0] != key:
        with (
            torch.inference_mode(False),
            torch.no_grad(),
        ):  # a normal tensor, usable outside inference mode
            kept = (
                key,
                torch.cat([p.weight for p in projs]),
                torch.cat([p.bias for p in projs]),
            )
        projs[0].__dict__["_fused_params"] = kept
    return kept[1], kept[2]


def _group_rows(q: torch.Tensor, group: int) -> torch.Tensor:
    """(B * G, H, Tq, D) -> (B, H, G * Tq, D): the queries of G consecutive rows (a
    sentence's beams) become one row's queries, to attend to that sentence's keys once.
    Only for attention without a causal mask (cross-attention)."""
    bg, h, tq, d = q.shape
    return (
        q.view(bg // group, group, h, tq, d)
        .transpose(1, 2)
        .reshape(bg // group, h, group * tq, d)
    )


def _ungroup_rows(x: torch.Tensor, group: int) -> torch.Tensor:
    """Inverse of ``_group_rows``: (B, H, G * Tq, D) -> (B * G, H, Tq, D)."""
    b, h, gt, d = x.shape
    return (
        x.view(b, h, group, gt // group, d)
        .transpose(1, 2)
        .reshape(b * group, h, gt // group, d)
    )


class MultiheadAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise NmtSdError(
                f"embed dim {embed_dim} not divisible by {num_heads} heads"
            )
        self.num_heads, self.head_dim, self.dropout = (
            num_heads,
            embed_dim // num_heads,
            dropout,
        )
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, H, T, D)
        return x.view(x.size(0), x.size(1), self.num_heads, self.head_dim).transpose(
            1, 2
        )

    def forward(
        self,
        query: torch.Tensor,  # (B, Tq, C)
        key: torch.Tensor,  # (B, Tk, C)
        key_padding_mask: Optional[torch.Tensor] = None,  # (B, Tk) True = pad
        causal: bool = False,
        cache: Optional[Dict[str, torch.Tensor]] = None,
        static_kv: bool = False,
        need_weights: bool = False,
    ):
        if key is query and not static_kv:  # self-attention: one (C -> 3C) matmul
            q, k, v = (
                self._heads(t)
                for t in fused_linear(query, self.q_proj, self.k_proj, self.v_proj)
            )
        else:
            q = self._heads(self.q_proj(query))
        if cache is not None and static_kv and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            if key is not query or static_kv:  # cross-attention: one (C -> 2C) matmul
                k, v = (
                    self._heads(t) for t in fused_linear(key, self.k_proj, self.v_proj)
                )
            if cache is not None:
                if not static_kv and "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        mask = None
        if key_padding_mask is not None:
            mask = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk) True = attend
        p = self.dropout if self.training else 0.0
        # with a cache the single new query may see every cached step: no causal mask
        is_causal = causal and q.size(2) > 1
        group = q.size(0) // k.size(0)  # > 1: G query rows (beams) share one key row
        if group > 1:
            q = _group_rows(q, group)  # (B, H, G * Tq, D)
        out, weights = attention(
            q, k, v, mask, is_causal, p, self.training, need_weights
        )
        if group > 1:
            out = _ungroup_rows(out, group)  # (B * G, H, Tq, D)
            weights = (
                None
                if weights is None
                else weights.reshape(out.size(0), -1, weights.size(-1))
            )
        # (B, Tq, C)
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)
        return self.out_proj(out), weights


def build_ffn(module: nn.Module, dim: int, ffn_dim: int, args) -> None:
    """Adds fairseq-named ``fc1``/``fc2`` to ``module`` (a layer)."""
    module.fc1, module.fc2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
    for fc in (module.fc1, module.fc2):
        nn.init.xavier_uniform_(fc.weight)
        nn.init.zeros_(fc.bias)
    module.act = {"relu": F.relu, "gelu": F.gelu}[args.activation_fn]
    module.activation_dropout = args.activation_dropout


def ffn(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
    h = dropout(layer.act(layer.fc1(x)), layer.activation_dropout, layer.training)
    return layer.fc2(h)


class TransformerEncoderLayer(nn.Module):
    def __init__(self, args):
        super().__init__()
        dim = args.encoder_embed_dim
        self.self_attn = MultiheadAttention(
            dim, args.encoder_attention_heads, args.attention_dropout
        )
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        build_ffn(self, dim, args.encoder_ffn_embed_dim, args)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout, self.normalize_before = (
            args.dropout,
            args.encoder_normalize_before,
        )

    def forward(self, x, padding_mask, need_attn: bool = False):  # x: (B, S, C)
        residual = x
        h = self.self_attn_layer_norm(x) if self.normalize_before else x
        h, attn = self.self_attn(
            h, h, key_padding_mask=padding_mask, need_weights=need_attn
        )
        x = residual + dropout(h, self.dropout, self.training)
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)
        residual = x
        h = self.final_layer_norm(x) if self.normalize_before else x
        x = residual + dropout(ffn(self, h), self.dropout, self.training)
        if not self.normalize_before:
            x = self.final_layer_norm(x)
        return x, attn


class TransformerDecoderLayer(nn.Module):
    def __init__(self, args):
        super().__init__()
        dim = args.decoder_embed_dim
        heads = args.decoder_attention_heads
        self.self_attn = MultiheadAttention(dim, heads, args.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.encoder_attn = MultiheadAttention(dim, heads, args.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(dim)
        build_ffn(self, dim, args.decoder_ffn_embed_dim, args)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout, self.normalize_before = (
            args.dropout,
            args.decoder_normalize_before,
        )

    def _sublayer(self, x, norm, fn):
        residual = x
        h = norm(x) if self.normalize_before else x
        h, extra = fn(h)
        x = residual + dropout(h, self.dropout, self.training)
        return (x if self.normalize_before else norm(x)), extra

    def forward(
        self, x, enc: EncoderOut, cache=None, need_attn: bool = False
    ):  # x: (B, T, C)
        x, self_attn = self._sublayer(
            x,
            self.self_attn_layer_norm,
            lambda h: self.self_attn(
                h,
                h,
                causal=True,
                cache=None if cache is None else cache["self"],
                need_weights=need_attn,
            ),
        )
        x, attn = self._sublayer(
            x,
            self.encoder_attn_layer_norm,
            lambda h: self.encoder_attn(
                h,
                enc.out,
                key_padding_mask=enc.padding_mask,
                cache=None if cache is None else cache["cross"],
                static_kv=True,
                need_weights=need_attn,
            ),
        )
        x, _ = self._sublayer(x, self.final_layer_norm, lambda h: (ffn(self, h), None))
        return x, {"self_attn": self_attn, "attn": attn}


def build_embedding(num: int, dim: int, padding_idx: int) -> nn.Embedding:
    emb = nn.Embedding(num, dim, padding_idx=padding_idx)
    nn.init.normal_(emb.weight, mean=0, std=dim**-0.5)
    nn.init.zeros_(emb.weight[padding_idx])
    return emb


def init_embeddings(
    module: nn.Module, args, dictionary, embed_tokens: nn.Embedding, max_positions: int
) -> int:
    """fairseq-named input embedding parts shared by encoder and decoder; returns the dim."""
    dim = embed_tokens.embedding_dim
    module.padding_idx = dictionary.pad()
    module.embed_tokens = embed_tokens
    module.embed_scale = 1.0 if args.no_scale_embedding else math.sqrt(dim)
    module.embed_positions = SinusoidalPositions(dim, module.padding_idx, max_positions)
    module.layernorm_embedding = nn.LayerNorm(dim) if args.layernorm_embedding else None
    module.dropout = args.dropout
    return dim


def embed(module: nn.Module, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
    """(B, T) token ids -> scaled embeddings + positions start.., layernorm, dropout (B, T, C)."""
    x = module.embed_scale * module.embed_tokens(tokens)
    x = x + module.embed_positions(start, tokens.size(1)).to(x.dtype)
    if module.layernorm_embedding is not None:
        x = module.layernorm_embedding(x)
    return dropout(x, module.dropout, module.training)


class TransformerEncoder(nn.Module):
    def __init__(self, args, dictionary, embed_tokens: nn.Embedding):
        super().__init__()
        dim = init_embeddings(
            self, args, dictionary, embed_tokens, args.max_source_positions
        )
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(args) for _ in range(args.encoder_layers)
        )
        self.layer_norm = nn.LayerNorm(dim) if args.encoder_normalize_before else None

    def forward(
        self, src_tokens, src_lengths=None, return_all_hiddens=False, need_attn=False
    ):
        padding_mask = src_tokens.eq(self.padding_idx)  # (B, S)
        x = embed(self, src_tokens)  # (B, S, C)
        x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        states, attns = [], []
        for layer in self.layers:
            x, attn = layer(x, padding_mask, need_attn=need_attn)
            if return_all_hiddens:
                states.append(x)
            attns.append(attn)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        enc = EncoderOut(x, padding_mask)
        if return_all_hiddens or need_attn:
            return enc, {"inner_states": states, "self_attns": attns}
        return enc


class TransformerDecoder(nn.Module):
    # beam search may pass one encoder row per sentence for its K beam rows: the
    # cross-attention groups them (see MultiheadAttention), so K/V are computed once
    groups_beam_rows = True

    def __init__(self, args, dictionary, embed_tokens: nn.Embedding):
        super().__init__()
        dim = init_embeddings(
            self, args, dictionary, embed_tokens, args.max_target_positions
        )
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(args) for _ in range(args.decoder_layers)
        )
        self.layer_norm = nn.LayerNorm(dim) if args.decoder_normalize_before else None
        self.output_projection = nn.Linear(dim, len(dictionary), bias=False)
        if args.share_decoder_input_output_embed:
            self.output_projection.weight = embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, mean=0, std=dim**-0.5)

    def init_cache(self) -> DecoderCache:
        return DecoderCache(len(self.layers))

    def embed(self, prev_output_tokens, start: int = 0):  # (B, T) -> (B, T, C)
        return embed(self, prev_output_tokens, start)

    def extract_features(
        self,
        prev_output_tokens,
        enc: EncoderOut,
        cache=None,
        return_all_hiddens=False,
        need_attn=False,
    ):
        """Returns features (B, T, C) and extras. With ``cache``, only positions not yet
        cached are computed (one step during beam search)."""
        start = cache.seq_len if cache is not None else 0
        x = self.embed(prev_output_tokens[:, start:], start)
        states, self_attns, cross_attns = [x], [], []
        for i, layer in enumerate(self.layers):
            x, attns = layer(
                x, enc, None if cache is None else cache.layers[i], need_attn=need_attn
            )
            self_attns.append(attns["self_attn"])
            cross_attns.append(attns["attn"])
            if return_all_hiddens:
                states.append(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        extra = {
            "attn": cross_attns[-1] if cross_attns else None,
            "inner_states": states if return_all_hiddens else None,
        }
        if need_attn:
            extra.update(decoder_self_attns=self_attns, decoder_cross_attns=cross_attns)
        return x, extra

    def output_layer(self, features):  # (B, T, C) -> (B, T, V)
        return self.output_projection(features)

    def forward(
        self, prev_output_tokens, enc: EncoderOut, cache=None, features_only=False, **kw
    ):
        x, extra = self.extract_features(prev_output_tokens, enc, cache, **kw)
        return (x if features_only else self.output_layer(x)), extra


class TransformerModel(nn.Module):
    def __init__(self, args, encoder: TransformerEncoder, decoder: TransformerDecoder):
        super().__init__()
        self.args = args
        self.encoder, self.decoder = encoder, decoder

    @classmethod
    def build_model(cls, args, src_dict, tgt_dict) -> "TransformerModel":
        if args.share_all_embeddings:
            if src_dict != tgt_dict:
                raise NmtSdError(
                    "--share-all-embeddings requires a joined dictionary (preprocess with --joined-dictionary)"
                )
            if args.encoder_embed_dim != args.decoder_embed_dim:
                raise NmtSdError(
                    "--share-all-embeddings requires --encoder-embed-dim == --decoder-embed-dim"
                )
            enc_emb = build_embedding(
                len(src_dict), args.encoder_embed_dim, src_dict.pad()
            )
            dec_emb = enc_emb
            args.share_decoder_input_output_embed = True
        else:
            enc_emb = build_embedding(
                len(src_dict), args.encoder_embed_dim, src_dict.pad()
            )
            dec_emb = build_embedding(
                len(tgt_dict), args.decoder_embed_dim, tgt_dict.pad()
            )
        encoder = TransformerEncoder(args, src_dict, enc_emb)
        decoder = TransformerDecoder(args, tgt_dict, dec_emb)
        return cls(args, encoder, decoder)

    def forward(
        self,
        src_tokens,
        src_lengths,
        prev_output_tokens,
        return_all_hiddens=False,
        need_attn=False,
        **kw,
    ):
        """Returns logits (B, T, V) and extras: ``encoder_out`` (EncoderOut, always),
        ``attn`` (last decoder layer's cross-attention, with ``need_attn``), and with
        ``return_all_hiddens`` the decoder's ``inner_states`` (embeddings + every layer)
        and ``encoder_states`` (every encoder layer); with ``need_attn`` also
        ``encoder_self_attns`` / ``decoder_self_attns`` / ``decoder_cross_attns`` per layer
        (head-averaged, (B, T, S))."""
        enc = self.encoder(
            src_tokens,
            src_lengths,
            return_all_hiddens=return_all_hiddens,
            need_attn=need_attn,
        )
        enc_extra = {}
        if not isinstance(
            enc, EncoderOut
        ):  # (EncoderOut, extras) when states/attn asked
            enc, enc_extra = enc
        out, extra = self.decoder(
            prev_output_tokens,
            enc,
            return_all_hiddens=return_all_hiddens,
            need_attn=need_attn,
            **kw,
        )
        extra["encoder_out"] = enc
        if return_all_hiddens:
            extra["encoder_states"] = enc_extra.get("inner_states")
        if need_attn:
            extra["encoder_self_attns"] = enc_extra.get("self_attns")
        return out, extra

    @staticmethod
    def reorder_encoder_out(enc: EncoderOut, new_order: torch.Tensor) -> EncoderOut:
        return EncoderOut(
            enc.out.index_select(0, new_order),
            enc.padding_mask.index_select(0, new_order),
        )

    def max_decoder_positions(self) -> int:
        return self.decoder.embed_positions.max_positions

    def max_positions(self):
        return (
            self.encoder.embed_positions.max_positions,
            self.decoder.embed_positions.max_positions,
        )

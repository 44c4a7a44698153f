"""Teacher-student knowledge distillation from an external, frozen teacher.

Logit KD: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015,
arXiv 1503.02531); word-level KD of Kim & Rush, "Sequence-Level Knowledge Distillation"
(EMNLP 2016, arXiv 1606.07947) is its T = 1 case. Representation distillation in the
style of TinyBERT (Jiao et al. 2020, arXiv 1909.10351) and Patient-KD (Sun et al. 2019,
arXiv 1908.09355):

    L = (1-λ) CE + λ T² KL(softmax(z_t/T) ‖ softmax(z_s/T)) + β_h MSE(W h_s, h_t) + β_a MSE(A_s, A_t)

KL is summed over non-pad target tokens. MSE_h is the channel-mean squared error of mapped
layers' hidden states, summed over non-pad positions (source positions for encoder layers)
and averaged over the mapped pairs; W is one learned linear map per side, present only
when the widths differ (a submodule: trained with the student, saved in the criterion
state). MSE_a is the squared error of head-averaged attention maps (encoder self; decoder
self and cross), summed over keys and non-pad queries, averaged over the mapped maps.
The teacher (``--teacher-path``) runs once per batch in eval mode under no_grad; its
weights are held outside the module tree, so they are never optimised nor saved. Each
part is averaged over the student's passes (so λ means the same with R-Drop's 2 passes).
Layer maps (``--kd-layer-map``) and teacher loading are in ``kd_teacher.py``.
"""

import torch
import torch.nn as nn

from nmt_sd.criterions.functional import attn_mse, hidden_mse, kd_kl
from nmt_sd.criterions.kd_teacher import LayerMap, load_teacher, parse_layer_map
from nmt_sd.criterions.objective import TERMS, Term, register_preset
from nmt_sd.errors import NmtSdError


def side_states(extra: dict, side: str, layer: int) -> torch.Tensor:
    """Output of 1-based ``layer``: (B, S, C) for enc, (B, T, C) for dec."""
    return (
        extra["encoder_states"][layer - 1]
        if side == "enc"
        else extra["inner_states"][layer]
    )


def side_attns(extra: dict, side: str, layer: int) -> list[torch.Tensor]:
    """Head-averaged attention maps of 1-based ``layer``: (B, Tq, Tk) each."""
    if side == "enc":
        return [extra["encoder_self_attns"][layer - 1]]
    return [
        extra["decoder_self_attns"][layer - 1],
        extra["decoder_cross_attns"][layer - 1],
    ]


@TERMS.register("kd")
class KDTerm(Term):
    def __init__(
        self,
        teacher,
        alpha: float,
        temperature: float,
        hidden_weight: float,
        attn_weight: float,
        layer_map: LayerMap,
        widths: dict[str, tuple[int, int]],
        padding_idx: int,
    ):
        super().__init__()
        # plain attribute: not a submodule, never saved
        object.__setattr__(self, "teacher", teacher)
        self.alpha, self.temperature = alpha, temperature
        self.hidden_weight, self.attn_weight = hidden_weight, attn_weight
        self.layer_map, self.padding_idx = layer_map, padding_idx
        self.ce_scale = 1.0 - alpha
        # reuse the passes' log-probs (shared with CE)
        self.needs_lprobs = temperature == 1.0
        self.needs_hiddens, self.needs_attn = hidden_weight > 0, attn_weight > 0
        # one student->teacher map per side whose widths differ (TinyBERT's W_h)
        self.proj = nn.ModuleDict(
            {
                side: nn.Linear(*widths[side])
                for side in layer_map
                if self.needs_hiddens and widths[side][0] != widths[side][1]
            }
        )

    @staticmethod
    def add_args(parser) -> None:
        g = parser.add_argument_group("Teacher-student KD")
        g.add_argument(
            "--teacher-path",
            metavar="CKPT",
            help="trained nmt-sd teacher (same dictionaries)",
        )
        g.add_argument(
            "--kd-alpha",
            type=float,
            default=0.5,
            metavar="L",
            help="lambda: weight of the KD term; CE gets 1-lambda",
        )
        g.add_argument(
            "--kd-temperature",
            type=float,
            default=1.0,
            metavar="T",
            help="softmax temperature of both sides (T^2 scales the KL); 1 = word-level KD",
        )
        g.add_argument(
            "--kd-hidden-weight",
            type=float,
            default=0.0,
            metavar="W",
            help="hidden-state MSE weight",
        )
        g.add_argument(
            "--kd-attn-weight",
            type=float,
            default=0.0,
            metavar="W",
            help="attention-map MSE weight",
        )
        g.add_argument(
            "--kd-layer-map",
            default="",
            metavar="MAP",
            help="STUDENT-TEACHER layer pairs, e.g. 'enc:1-2,3-6;dec:1-2,2-4' (default: uniform)",
        )

    @classmethod
    def from_args(cls, args, task) -> "KDTerm":
        if not args.teacher_path:
            raise NmtSdError("the kd term needs --teacher-path CKPT")
        if not 0.0 <= args.kd_alpha <= 1.0:
            raise NmtSdError(f"--kd-alpha must be in [0, 1], got {args.kd_alpha}")
        if args.kd_temperature <= 0:
            raise NmtSdError(f"--kd-temperature must be > 0, got {args.kd_temperature}")
        if args.kd_hidden_weight < 0 or args.kd_attn_weight < 0:
            raise NmtSdError("--kd-hidden-weight and --kd-attn-weight must be >= 0")
        teacher, targs = load_teacher(args.teacher_path, task.src_dict, task.tgt_dict)
        n_s = {"enc": args.encoder_layers, "dec": args.decoder_layers}
        n_t = {"enc": targs.encoder_layers, "dec": targs.decoder_layers}
        layer_map = parse_layer_map(args.kd_layer_map, n_s, n_t, "--kd-layer-map")
        widths = {
            "enc": (args.encoder_embed_dim, targs.encoder_embed_dim),
            "dec": (args.decoder_embed_dim, targs.decoder_embed_dim),
        }
        return cls(
            teacher,
            args.kd_alpha,
            args.kd_temperature,
            args.kd_hidden_weight,
            args.kd_attn_weight,
            layer_map,
            widths,
            task.tgt_dict.pad(),
        )

    def run_teacher(self, sample) -> tuple[torch.Tensor, dict]:
        """The teacher's logits (B, T, V) and extras, once per batch, frozen."""
        device = sample["target"].device
        if next(self.teacher.parameters()).device != device:
            # lazily: criterion.to() does not reach a plain attribute
            self.teacher.to(device)
        self.teacher.eval()
        with torch.no_grad():
            return self.teacher(
                **sample["net_input"],
                return_all_hiddens=self.needs_hiddens,
                need_attn=self.needs_attn,
            )

    def student_lprobs(self, p) -> torch.Tensor:  # (B, T, V) float32 at temperature T
        if self.temperature == 1.0:
            return p.lprobs
        return torch.log_softmax(p.logits.float() / self.temperature, dim=-1)

    def hidden_loss(self, passes, t_extra: dict, masks: dict) -> torch.Tensor:
        """Mean over passes and mapped pairs of hidden_mse(W h_s, h_t)."""
        pairs = [(side, s, t) for side, lst in self.layer_map.items() for s, t in lst]
        total = 0.0
        for p in passes:
            for side, s, t in pairs:
                h = side_states(p.extra, side, s)  # (B, T, C_s)
                h = self.proj[side](h) if side in self.proj else h  # (B, T, C_t)
                total = total + hidden_mse(
                    h, side_states(t_extra, side, t), masks[side]
                )
        return total / (len(passes) * max(len(pairs), 1))

    def attn_loss(self, passes, t_extra: dict, masks: dict) -> torch.Tensor:
        """Mean over passes and mapped attention maps of attn_mse(A_s, A_t)."""
        total, n_maps = 0.0, 0
        for p in passes:
            for side, lst in self.layer_map.items():
                for s, t in lst:
                    for a_s, a_t in zip(
                        side_attns(p.extra, side, s), side_attns(t_extra, side, t)
                    ):
                        total = total + attn_mse(a_s, a_t, masks[side])
                        n_maps += 1
        return total / max(n_maps, 1)

    def forward(self, model, sample, passes, num_updates: int):
        t_logits, t_extra = self.run_teacher(sample)
        # (B, S)
        masks = {
            "dec": sample["target"].eq(self.padding_idx),  # (B, T)
            "enc": t_extra["encoder_out"].padding_mask,
        }
        # (B, T, V)
        t_lprobs = torch.log_softmax(t_logits.float() / self.temperature, dim=-1)
        kl = sum(
            kd_kl(self.student_lprobs(p), t_lprobs, masks["dec"]) for p in passes
        ) / len(passes)
        loss = self.alpha * self.temperature**2 * kl
        logs = {"kd_loss": kl.detach()}
        if self.hidden_weight > 0:
            mse = self.hidden_loss(passes, t_extra, masks)
            loss = loss + self.hidden_weight * mse
            logs["kd_hidden"] = mse.detach()
        if self.attn_weight > 0:
            mse = self.attn_loss(passes, t_extra, masks)
            loss = loss + self.attn_weight * mse
            logs["kd_attn"] = mse.detach()
        return loss, logs


register_preset("kd", ["kd"])

"""Student initialisation from a trained teacher, as DistilBERT (Sanh et al. 2019, arXiv
1910.01108) builds a shallower student from every other teacher layer:

    θ_student[layer i] := θ_teacher[layer map(i)],  plus every other tensor of equal shape

``--init-layer-map`` uses the KD layer-map syntax (``enc:1-2,2-4;dec:1-2,2-4``,
STUDENT-TEACHER pairs); the default copies every k-th teacher layer, top layer to top
layer (``nmt_sd.criterions.kd_teacher.uniform_layer_map``). Mapped layers must have the same
shapes; embeddings, the output projection and final/embedding layer norms are copied when
their shapes match and skipped (with a log line) otherwise. ``nmt-sd-train`` calls this
only when it starts from scratch, never over a restored checkpoint.
"""

import logging

import torch
import torch.nn as nn

from nmt_sd.criterions.kd_teacher import LayerMap, load_teacher, parse_layer_map
from nmt_sd.errors import NmtSdError

logger = logging.getLogger(__name__)
MODULES = {"enc": "encoder", "dec": "decoder"}


def copy_layers(
    student: nn.Module, teacher: nn.Module, layer_map: LayerMap
) -> list[str]:
    """Copy each mapped teacher layer into its student layer, exactly (in place, so an
    optimizer built on the student keeps its parameters). Returns the copied layer names.
    """
    copied = []
    for side, pairs in layer_map.items():
        name = MODULES[side]
        s_layers, t_layers = (
            getattr(student, name).layers,
            getattr(teacher, name).layers,
        )
        for s, t in pairs:
            src, dst = t_layers[t - 1].state_dict(), s_layers[s - 1].state_dict()
            for key, value in dst.items():
                if value.shape != src[key].shape:
                    raise NmtSdError(
                        f"--init-from-teacher: {name} layer {s} cannot take teacher layer {t}: '{key}' is "
                        f"{tuple(src[key].shape)} in the teacher but {tuple(value.shape)} in the student "
                        f"(give the student the teacher's --{name}-embed-dim and --{name}-ffn-embed-dim)"
                    )
            s_layers[s - 1].load_state_dict(src)
            copied.append(f"{name} {s} <- {t}")
    return copied


def copy_shared_tensors(student: nn.Module, teacher: nn.Module) -> dict[str, list[str]]:
    """Copy the tensors outside the layers (embeddings, output projection, layer norms)
    whose name and shape match. Returns {"copied": [...], "skipped": [...]}."""
    own, theirs = student.state_dict(), teacher.state_dict()
    out = {"copied": [], "skipped": []}
    with torch.no_grad():
        for key, value in own.items():
            if ".layers." in key:
                continue
            if key in theirs and theirs[key].shape == value.shape:
                # state_dict tensors share storage with the parameters
                value.copy_(theirs[key])
                out["copied"].append(key)
            else:
                out["skipped"].append(key)
    return out


def add_init_args(p) -> None:
    """nmt-sd-train's ``--init-from-teacher`` and ``--init-layer-map``."""
    g = p.add_argument_group(
        "Student initialisation from a teacher (DistilBERT-style; fresh runs only)"
    )
    g.add_argument(
        "--init-from-teacher",
        metavar="CKPT",
        help="copy mapped teacher layers into the new model",
    )
    g.add_argument(
        "--init-layer-map",
        default="",
        metavar="MAP",
        help="'enc:1-2,2-4;dec:1-2' (default: every k-th)",
    )


def init_from_teacher(args, model: nn.Module, task) -> None:
    """Apply ``--init-from-teacher`` / ``--init-layer-map`` to a freshly built model."""
    path = getattr(args, "init_from_teacher", None)
    if not path:
        return
    teacher, targs = load_teacher(
        path, task.src_dict, task.tgt_dict, "--init-from-teacher"
    )
    n_s = {side: len(getattr(model, name).layers) for side, name in MODULES.items()}
    n_t = {"enc": targs.encoder_layers, "dec": targs.decoder_layers}
    layer_map = parse_layer_map(args.init_layer_map, n_s, n_t, "--init-layer-map")
    for side, name in MODULES.items():
        heads = (
            getattr(args, f"{name}_attention_heads", None),
            getattr(targs, f"{name}_attention_heads", None),
        )
        if side in layer_map and heads[0] != heads[1]:
            logger.warning(
                f"--init-from-teacher: {name} heads differ (student {heads[0]}, teacher {heads[1]}); "
                "copied attention weights are split into heads differently"
            )
    layers = copy_layers(model, teacher, layer_map)
    shared = copy_shared_tensors(model, teacher)
    logger.info(
        f"initialised from teacher {path}: layers (student <- teacher) {', '.join(layers)}; "
        f"copied {len(shared['copied'])} other tensors"
    )
    if shared["skipped"]:
        logger.info(
            f"--init-from-teacher: kept the fresh init of {', '.join(shared['skipped'])} (shapes differ)"
        )

"""The external teacher of the ``kd`` term and of ``--init-from-teacher``: loading a
frozen teacher with the student's dictionaries, and STUDENT-TEACHER layer maps.

Layer maps (``--kd-layer-map``, ``--init-layer-map``): ``enc:1-2,3-6;dec:1-2,2-4`` lists
STUDENT-TEACHER layer pairs (1-based); a side left out is not mapped. Empty means the
uniform map of every side: student layer i -> teacher layer ceil(i N_t / N_s), every
k-th layer, top to top (Patient-KD's skip strategy, Sun et al. 2019, arXiv 1908.09355).
"""

import os

from nmt_sd.errors import NmtSdError

SIDES = ("enc", "dec")
LayerMap = dict[str, list[tuple[int, int]]]


def uniform_layer_map(n_student: dict[str, int], n_teacher: dict[str, int]) -> LayerMap:
    """Student layer i -> teacher layer ceil(i * N_t / N_s): every k-th layer, top to top."""
    return {
        s: [
            (i, -(-i * n_teacher[s] // n_student[s]))
            for i in range(1, n_student[s] + 1)
        ]
        for s in SIDES
    }


def parse_layer_map(
    spec: str, n_student: dict[str, int], n_teacher: dict[str, int], flag: str
) -> LayerMap:
    """Parse and validate ``enc:1-2,3-6;dec:1-2`` (STUDENT-TEACHER pairs, 1-based)."""
    if not (spec or "").strip():
        return uniform_layer_map(n_student, n_teacher)
    example = "expected e.g. 'enc:1-2,3-6;dec:1-2,2-4' (STUDENT-TEACHER layer pairs)"
    out: LayerMap = {}
    for part in (x.strip() for x in spec.split(";") if x.strip()):
        side, _, pairs = part.partition(":")
        side = side.strip()
        if side not in SIDES or side in out:
            raise NmtSdError(
                f"{flag}: bad or repeated side {side!r} in {spec!r}; {example}"
            )
        out[side] = []
        for pair in (x.strip() for x in pairs.split(",") if x.strip()):
            s, sep, t = pair.partition("-")
            if not sep or not s.strip().isdigit() or not t.strip().isdigit():
                raise NmtSdError(
                    f"{flag}: cannot parse {pair!r} in {spec!r}; {example}"
                )
            s, t = int(s), int(t)
            for who, layer, n in (
                ("student", s, n_student[side]),
                ("teacher", t, n_teacher[side]),
            ):
                if not 1 <= layer <= n:
                    raise NmtSdError(
                        f"{flag}: {side} {who} layer {layer} out of range 1..{n} in {spec!r}"
                    )
            if s in [a for a, _ in out[side]]:
                raise NmtSdError(
                    f"{flag}: {side} student layer {s} is mapped twice in {spec!r}"
                )
            out[side].append((s, t))
        if not out[side]:
            raise NmtSdError(
                f"{flag}: no layer pairs for side {side!r} in {spec!r}; {example}"
            )
    return out


def check_teacher_dictionaries(
    state, targs, src_dict, tgt_dict, path: str, flag: str
) -> None:
    """A teacher must share the student's dictionaries: same sizes (from its embeddings)
    and, when its data directory is readable, the same symbols."""
    from nmt_sd.data.dictionary import Dictionary

    for side, d, key, lang in (
        ("source", src_dict, "encoder.embed_tokens.weight", "source_lang"),
        ("target", tgt_dict, "decoder.output_projection.weight", "target_lang"),
    ):
        n = state["model"][key].shape[0] if key in state["model"] else len(d)
        if n != len(d):
            raise NmtSdError(
                f"{flag} {path}: the teacher's {side} dictionary has {n} symbols but the "
                f"student's has {len(d)} (a teacher must share the student's dictionaries)"
            )
        dict_path = os.path.join(
            str(getattr(targs, "data", "")), f"dict.{getattr(targs, lang, None)}.txt"
        )
        if (
            os.path.isfile(dict_path)
            and Dictionary.load(dict_path).symbols != d.symbols
        ):
            raise NmtSdError(
                f"{flag} {path}: the teacher's {side} dictionary {dict_path} differs from the "
                "student's (a teacher must share the student's dictionaries)"
            )


def load_teacher(path: str, src_dict, tgt_dict, flag: str = "--teacher-path"):
    """Returns (frozen teacher model in eval mode on CPU, its checkpoint args)."""
    from nmt_sd.generation.load import model_args_from_checkpoint
    from nmt_sd.models import TransformerModel
    from nmt_sd.training.checkpoint import load_checkpoint_file, load_model_state

    state = load_checkpoint_file(path)
    targs = model_args_from_checkpoint(state, path)
    check_teacher_dictionaries(state, targs, src_dict, tgt_dict, path, flag)
    teacher = TransformerModel.build_model(targs, src_dict, tgt_dict)
    load_model_state(teacher, state["model"], path)
    teacher.requires_grad_(False)
    return teacher.eval(), targs

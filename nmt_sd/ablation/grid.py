"""An ablation grid: a base recipe, variants that add or remove flags, seeds, test sets.

A grid comes from a TOML file (``recipes/ablations/*.toml``) and/or the command line::

    data = "data/multi30k_de_en/bin"          # what nmt-sd-train takes
    base = "--arch transformer_cpu --max-update 1000 ..."
    seeds = [1, 2, 3]
    baseline = "baseline"                     # default: the first variant
    checkpoint = "best"                       # best | last | avgN (average of N last epochs)
    generate = "--beam 5 --lenpen 1.0 --remove-bpe sentencepiece"

    [[variant]]
    name = "baseline"

    [[variant]]
    name = "rdrop"
    flags = "--criterion rdrop --rdrop-alpha 5"
    remove = ["--some-base-flag"]             # base flags (with their values) to drop

    [[test]]                                  # one per test set (multilingual: one per pair)
    name = "de-en"
    subset = "test"
    reference = "data/multi30k_de_en/raw/test.en"
    flags = ""                                # extra nmt-sd-generate flags for this set

Relative paths are relative to the working directory.
"""

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from typing import List, Optional

from nmt_sd.errors import NmtSdError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
CHECKPOINT_RE = re.compile(r"^(best|last|avg[1-9][0-9]*)$")


@dataclass
class Variant:
    name: str
    # added after the base flags (so they win)
    flags: List[str] = field(default_factory=list)
    # base options dropped with their values
    remove: List[str] = field(default_factory=list)


@dataclass
class TestSet:
    name: str
    reference: str
    subset: str = "test"
    flags: List[str] = field(default_factory=list)


@dataclass
class Grid:
    data: str
    base: List[str]
    variants: List[Variant]
    seeds: List[int]
    tests: List[TestSet]
    baseline: str = ""
    checkpoint: str = "best"
    generate: List[str] = field(
        default_factory=lambda: ["--beam", "5", "--lenpen", "1.0"]
    )

    def __post_init__(self):
        self.baseline = self.baseline or (
            self.variants[0].name if self.variants else ""
        )
        validate(self)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def train_flags(self, variant: Variant) -> List[str]:
        """The variant's nmt-sd-train flags: base minus ``remove``, then its own."""
        return drop_options(self.base, variant.remove) + variant.flags


def drop_options(argv: List[str], options: List[str]) -> List[str]:
    """``argv`` without each option in ``options`` and the values that follow it
    (tokens up to the next one starting with ``--``); ``--opt=value`` forms too."""
    out, skipping = [], False
    for tok in argv:
        if tok.startswith("--"):
            skipping = tok.split("=", 1)[0] in options
            if skipping:
                continue
        elif skipping:
            continue
        out.append(tok)
    return out


def validate(grid: Grid) -> None:
    if not grid.variants:
        raise NmtSdError(
            "the grid has no variants (give [[variant]] entries or --variant NAME=FLAGS)"
        )
    names = [v.name for v in grid.variants]
    for name in names:
        if not NAME_RE.match(name):
            raise NmtSdError(
                f"variant name {name!r}: use letters, digits and _.+- (it names a directory)"
            )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise NmtSdError(f"variant names repeated: {', '.join(dup)}")
    if grid.baseline not in names:
        raise NmtSdError(
            f"--baseline {grid.baseline!r} is not a variant ({', '.join(names)})"
        )
    if not grid.seeds or len(set(grid.seeds)) != len(grid.seeds):
        raise NmtSdError(f"--seeds must be distinct integers, got {grid.seeds}")
    if not CHECKPOINT_RE.match(grid.checkpoint):
        raise NmtSdError(f"--checkpoint {grid.checkpoint!r}: use best, last or avgN")
    if not grid.tests:
        raise NmtSdError(
            "the grid has no test set (give [[test]] entries or --reference)"
        )
    tnames = [t.name for t in grid.tests]
    if len(set(tnames)) != len(tnames) or not all(NAME_RE.match(n) for n in tnames):
        raise NmtSdError(f"test set names must be distinct words, got {tnames}")
    for v in grid.variants:
        for opt in ("--seed", "--save-dir"):
            if opt in v.flags or opt in grid.base:
                raise NmtSdError(
                    f"variant {v.name!r}: {opt} is set by nmt-sd-ablate, remove it from the flags"
                )


def split_flags(value, where: str) -> List[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(x) for x in value]
    if not isinstance(value, str):
        raise NmtSdError(
            f"{where}: expected a string of flags, got {type(value).__name__}"
        )
    try:
        return shlex.split(value)
    except ValueError as e:
        raise NmtSdError(f"{where}: {e}")


def parse_variant_arg(text: str) -> Variant:
    """``NAME=FLAGS`` from ``--variant`` (``NAME=`` or ``NAME`` alone: no extra flags)."""
    name, _, flags = text.partition("=")
    return Variant(name.strip(), split_flags(flags, f"--variant {name}"))


def load_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise NmtSdError(f"--config {path}: no such file")
    except tomllib.TOMLDecodeError as e:
        raise NmtSdError(f"--config {path}: {e}")


KNOWN_KEYS = {
    "data",
    "base",
    "seeds",
    "baseline",
    "checkpoint",
    "generate",
    "variant",
    "test",
}


def grid_from_config(cfg: dict, path: str, over: Optional[dict] = None) -> Grid:
    """Build a Grid from a parsed TOML dict; ``over`` holds command-line overrides
    (None values are ignored; ``variants`` and ``tests`` are appended)."""
    unknown = sorted(set(cfg) - KNOWN_KEYS)
    if unknown:
        raise NmtSdError(
            f"--config {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_KEYS))})"
        )
    over = {k: v for k, v in (over or {}).items() if v is not None}
    variants = [
        Variant(
            str(v.get("name", "")),
            split_flags(v.get("flags"), f"{path}: variant {v.get('name')}"),
            [str(x) for x in v.get("remove", [])],
        )
        for v in cfg.get("variant", [])
    ]
    tests = []
    for t in cfg.get("test", []):
        if "reference" not in t:
            raise NmtSdError(
                f"--config {path}: test {t.get('name', '?')!r} has no reference"
            )
        tests.append(
            TestSet(
                str(t.get("name", t.get("subset", "test"))),
                str(t["reference"]),
                str(t.get("subset", "test")),
                split_flags(t.get("flags"), f"{path}: test {t.get('name')}"),
            )
        )
    data = over.get("data", cfg.get("data"))
    if not data:
        raise NmtSdError("no data directory: give DATA or data = ... in --config")
    return Grid(
        data=str(data),
        base=over.get("base", split_flags(cfg.get("base"), f"{path}: base")),
        variants=variants + over.get("variants", []),
        seeds=[int(s) for s in over.get("seeds", cfg.get("seeds", [1]))],
        tests=tests + over.get("tests", []),
        baseline=over.get("baseline", cfg.get("baseline", "")),
        checkpoint=over.get("checkpoint", cfg.get("checkpoint", "best")),
        generate=over.get(
            "generate",
            split_flags(cfg.get("generate"), f"{path}: generate")
            or ["--beam", "5", "--lenpen", "1.0"],
        ),
    )

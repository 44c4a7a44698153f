#!/usr/bin/env bash
# Multi30k multilingual {de,fr,cs}<->en for LSSD at CPU scale: raw pairs, one joint
# SentencePiece model (8k) and one joint dictionary with language tags, binarized pairs
# (train.de-en.{de,en} etc.; the en->X directions read the same files).
# Training sets are subsampled per language (SIZES, seeded) so that the languages converge
# at different speeds, the convergence inconsistency LSSD targets; valid (1,014) and test
# (test2016, 1,000) stay whole.
#   bash recipes/multi30k_multi/prepare.sh          # ../shared/data when present, else downloads
#   INPUT=/path/to/multi30k/task1 SIZES=de:29000,fr:29000,cs:29000 bash recipes/multi30k_multi/prepare.sh
# Output: $OUT/{raw,spm,bin}, $OUT/README.txt. Re-runnable (.done markers); extra flags: "$@".
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-$REPO/data/multi30k_multi}
SIZES=${SIZES:-de:15000,fr:5000,cs:1000}
VOCAB=${VOCAB:-8000}
SHARED="$REPO/../shared/data/multi30k-task1"
if [[ -z "${INPUT+x}" ]]; then INPUT=$([[ -d "$SHARED" ]] && echo "$SHARED" || echo ""); fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

args=(--format multi30k --input "$INPUT" --langs de,fr,cs --pivot en --train-sizes "$SIZES"
  --vocab-size "$VOCAB" --output "$OUT" --workers 2 "$@")
python -m data_prep.prepare_multilingual "${args[@]}"
{
  echo "Multi30k task 1 {de,fr,cs}-en, prepared by nmt-sd recipes/multi30k_multi/prepare.sh"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); nmt-sd commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "input: ${INPUT:-download of multi30k/dataset@a3d2e0d2 data/task1/raw}"
  echo "training pairs per language (seeded subsample): $SIZES; valid = val, test = test_2016_flickr"
  echo "spm/: joint unigram SentencePiece, vocab $VOCAB; bin/: one dictionary (dict.LANG.txt) with __xx__ tags"
  echo "command: python -m data_prep.prepare_multilingual ${args[*]}"
  echo "line counts:"
  (cd "$OUT" && wc -l raw/* | grep -v total)
} > "$OUT/README.txt"
echo "prepare.sh: data ready in $OUT/bin"

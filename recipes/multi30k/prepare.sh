#!/usr/bin/env bash
# Multi30k task 1 de->en (the CPU benchmark): raw splits, joint SentencePiece (8k), binarized.
#   bash recipes/multi30k/prepare.sh              # uses ../shared/data when present, else downloads
#   INPUT=/path/to/multi30k/task1 bash recipes/multi30k/prepare.sh
# Output: $OUT/raw, $OUT/spm, $OUT/bin (nmt-sd-preprocess --joined-dictionary). Re-runnable.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SRC=${SRC:-de}
TGT=${TGT:-en}
OUT=${OUT:-$REPO/data/multi30k_${SRC}_${TGT}}
VOCAB=${VOCAB:-8000}
SHARED="$REPO/../shared/data/multi30k-task1"
if [[ -z "${INPUT+x}" ]]; then INPUT=$([[ -d "$SHARED" ]] && echo "$SHARED" || echo ""); fi

SRC=$SRC TGT=$TGT INPUT=$INPUT OUT=$OUT VOCAB=$VOCAB bash "$REPO/data_prep/prepare_multi30k.sh"

if [[ -f "$OUT/bin/.done" ]]; then
  echo "prepare.sh: $OUT/bin already binarized"
else
  nmt-sd-preprocess --source-lang "$SRC" --target-lang "$TGT" \
    --trainpref "$OUT/spm/train" --validpref "$OUT/spm/valid" --testpref "$OUT/spm/test" \
    --destdir "$OUT/bin" --joined-dictionary --workers 2
  touch "$OUT/bin/.done"
fi
echo "prepare.sh: data ready in $OUT/bin"

#!/usr/bin/env bash
# Evaluate a TED-8 run pair by pair as the LSSD scripts do: beam 5, --remove-bpe sentencepiece,
# sacreBLEU (here: detokenized output vs the raw references, with its signature), on
# checkpoint_best.pt (CKPT=... to change; which checkpoint the official scripts score is not
# verified). Reuses recipes/multi30k_multi/evaluate.sh.
#   PAIRS=bos-eng,mar-eng SET=diverse bash recipes/ted8/evaluate.sh CHECKPOINT_DIR
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SAVE=${1:?usage: PAIRS=bos-eng,... evaluate.sh CHECKPOINT_DIR}
SET=${SET:-diverse}
DATA=${DATA:-$REPO/data/ted8_$SET} PIVOT=eng CKPT=${CKPT:-$SAVE/checkpoint_best.pt} PAIRS=${PAIRS:?set PAIRS} \
  bash "$REPO/recipes/multi30k_multi/evaluate.sh" "$SAVE"

#!/usr/bin/env bash
# Evaluate a Multi30k run: average the last 5 epoch checkpoints, beam 5 on test2016,
# sacreBLEU (detokenized output vs the raw references) with its signature.
#   bash recipes/multi30k/evaluate.sh CHECKPOINT_DIR
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SAVE=${1:?usage: evaluate.sh CHECKPOINT_DIR}
DATA=${DATA:-$REPO/data/multi30k_de_en}
SRC=${SRC:-de}
TGT=${TGT:-en}
NAVG=${NAVG:-5}
CKPT=${CKPT:-$SAVE/checkpoint_avg${NAVG}.pt}

if [[ ! -f "$CKPT" ]]; then
  nmt-sd-average-checkpoints --inputs "$SAVE" --num-epoch-checkpoints "$NAVG" --output "$CKPT"
fi
nmt-sd-generate "$DATA/bin" --path "$CKPT" --gen-subset test --beam 5 --lenpen 1.0 \
  --max-tokens 4096 --remove-bpe sentencepiece --bf16 --results-path "$SAVE/test" --quiet
nmt-sd-score --sys "$SAVE/test/test.hyp.detok" --ref "$DATA/raw/test.$TGT" | tee "$SAVE/test/score.txt"

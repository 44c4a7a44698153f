#!/usr/bin/env bash
# Evaluate a multilingual Multi30k run pair by pair: average the last 5 epoch checkpoints,
# beam 5 on test2016, sacreBLEU (detokenized output vs the raw references) with its signature.
#   PAIRS=de-en,fr-en,cs-en bash recipes/multi30k_multi/evaluate.sh CHECKPOINT_DIR
# Writes $SAVE/test_PAIR/{generate-test.txt,test.hyp.detok,score.txt}.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SAVE=${1:?usage: PAIRS=de-en,fr-en evaluate.sh CHECKPOINT_DIR}
DATA=${DATA:-$REPO/data/multi30k_multi}
PAIRS=${PAIRS:-de-en,fr-en,cs-en}
PIVOT=${PIVOT:-en}
NAVG=${NAVG:-5}
CKPT=${CKPT:-$SAVE/checkpoint_avg${NAVG}.pt}

if [[ ! -f "$CKPT" ]]; then
  nmt-sd-average-checkpoints --inputs "$SAVE" --num-epoch-checkpoints "$NAVG" --output "$CKPT"
fi
for pair in ${PAIRS//,/ }; do
  src=${pair%-*}
  tgt=${pair#*-}
  x=$([[ "$src" == "$PIVOT" ]] && echo "$tgt" || echo "$src")  # files are named X-PIVOT
  nmt-sd-generate "$DATA/bin" --path "$CKPT" -s "$src" -t "$tgt" --gen-subset test --beam 5 --lenpen 1.0 \
    --max-tokens 4096 --remove-bpe sentencepiece --bf16 --results-path "$SAVE/test_$pair" --quiet
  echo "== $pair"
  nmt-sd-score --sys "$SAVE/test_$pair/test.hyp.detok" --ref "$DATA/raw/test.$x-$PIVOT.$tgt" \
    | tee "$SAVE/test_$pair/score.txt"
done

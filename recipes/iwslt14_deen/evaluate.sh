#!/usr/bin/env bash
# Evaluate an IWSLT14 de->en run on the 6,750-pair test set: beam 5, lenpen 1 (fairseq's
# recipe), checkpoint_best.pt. Prints sacreBLEU (detokenized lowercased output vs the raw
# lowercased references) and, for older papers, tokenized lowercased BLEU (sacreBLEU 13a).
#   bash recipes/iwslt14_deen/evaluate.sh CHECKPOINT_DIR
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SAVE=${1:?usage: evaluate.sh CHECKPOINT_DIR}
DATA=${DATA:-$REPO/data/iwslt14_de_en}
CKPT=${CKPT:-$SAVE/checkpoint_best.pt}

nmt-sd-generate "$DATA/bin" --path "$CKPT" --gen-subset test --beam 5 --lenpen 1.0 \
  --max-tokens 8000 --remove-bpe sentencepiece --results-path "$SAVE/test" --quiet
nmt-sd-score --sys "$SAVE/test/test.hyp.detok" --ref "$DATA/raw/test.en" | tee "$SAVE/test/score.txt"
nmt-sd-score --sys "$SAVE/test/test.hyp.detok" --ref "$DATA/raw/test.en" --scoring tokenized_bleu \
  | tee -a "$SAVE/test/score.txt"

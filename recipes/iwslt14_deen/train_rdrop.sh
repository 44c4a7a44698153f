#!/usr/bin/env bash
# R-Drop on IWSLT14 de->en (Liang, Wu et al., NeurIPS 2021, arXiv 2106.14448), the official
# script's hyperparameters: transformer_iwslt_de_en + share-all-embeddings, alpha 5 (summed CE),
# lr 5e-4, warmup 4000, dropout 0.3, weight decay 1e-4, max-tokens 4096, 300k updates, seed 64.
# Paper: 37.25 BLEU, tokenized lowercased BLEU with compound splitting (not sacreBLEU; see
# ../shared/docs/methods.md 1(e) and 6.3 before comparing). nmt-sd: not yet run (no IWSLT14 train file here).
#   bash recipes/iwslt14_deen/prepare.sh && bash recipes/iwslt14_deen/train_rdrop.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/iwslt14_de_en}
SAVE=${SAVE:-$REPO/checkpoints/iwslt14_rdrop}
SEED=${SEED:-64}
MAX_UPDATE=${MAX_UPDATE:-300000}
LAUNCH=${LAUNCH:-}
mkdir -p "$SAVE"

$LAUNCH $(command -v nmt-sd-train) "$DATA/bin" \
  --arch transformer_iwslt_de_en --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07 \
  --dropout 0.3 --criterion label_smoothed_cross_entropy_with_rdrop --label-smoothing 0.1 \
  --rdrop-alpha 5 --rdrop-ce sum \
  --max-tokens 4096 --max-update "$MAX_UPDATE" \
  --eval-bleu --eval-bleu-beam 5 --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 100 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/iwslt14_deen/evaluate.sh" "$SAVE"

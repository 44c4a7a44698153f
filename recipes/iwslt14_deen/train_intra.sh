#!/usr/bin/env bash
# Intra-Distillation on IWSLT14 de->en (Xu, Koehn, Murray; EMNLP 2022, arXiv 2205.11416), the
# official script's hyperparameters: transformer_iwslt_de_en (no share-all-embeddings), K 3,
# alpha 5 with the adaptive schedule (p 5, q 10, N = max-update = 50k), adam eps 1e-6, lr 5e-4,
# warmup 8000, dropout 0.3, attention-dropout 0.1, weight decay 1e-4, max-tokens 4096, patience 40.
# Paper: +3.54 BLEU average over 8 IWSLT14 xx->en pairs, detokenized lowercased sacreBLEU
# (per-pair numbers unverified). nmt-sd: not yet run (no IWSLT14 train file here).
#   bash recipes/iwslt14_deen/prepare.sh && bash recipes/iwslt14_deen/train_intra.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/iwslt14_de_en}
SAVE=${SAVE:-$REPO/checkpoints/iwslt14_intra}
SEED=${SEED:-1}
MAX_UPDATE=${MAX_UPDATE:-50000}
LAUNCH=${LAUNCH:-}
mkdir -p "$SAVE"

$LAUNCH $(command -v nmt-sd-train) "$DATA/bin" \
  --arch transformer_iwslt_de_en \
  --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-06 --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 8000 --warmup-init-lr 1e-07 \
  --dropout 0.3 --attention-dropout 0.1 --criterion intra_distillation --label-smoothing 0.1 \
  --intra-k 3 --intra-alpha 5 --intra-adaptive --intra-p 5 --intra-q 10 --intra-divergence x \
  --max-tokens 4096 --max-update "$MAX_UPDATE" --patience 40 \
  --eval-bleu --eval-bleu-beam 5 --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 100 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/iwslt14_deen/evaluate.sh" "$SAVE"

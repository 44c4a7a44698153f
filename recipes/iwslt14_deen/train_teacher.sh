#!/usr/bin/env bash
# KD teacher on IWSLT14 de->en: transformer_wmt_en_de_big (6+6 layers, d 1024, FFN 4096,
# 16 heads, dropout 0.3) with train_rdrop.sh's optimisation (share-all-embeddings, lr 5e-4,
# warmup 4000, weight decay 1e-4, label smoothing 0.1, max-tokens 4096, 300k updates), plain
# LS-CE. $SAVE/checkpoint_best.pt is the teacher of train_kd_{word,seq,hidden}.sh.
# nmt-sd: not yet run (no IWSLT14 train file on the development machines).
#   bash recipes/iwslt14_deen/prepare.sh && bash recipes/iwslt14_deen/train_teacher.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/iwslt14_de_en}
SAVE=${SAVE:-$REPO/checkpoints/iwslt14_teacher}
SEED=${SEED:-1}
MAX_UPDATE=${MAX_UPDATE:-300000}
LAUNCH=${LAUNCH:-}
mkdir -p "$SAVE"

$LAUNCH $(command -v nmt-sd-train) "$DATA/bin" \
  --arch transformer_wmt_en_de_big --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07 \
  --dropout 0.3 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens 4096 --max-update "$MAX_UPDATE" \
  --eval-bleu --eval-bleu-beam 5 --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 100 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/iwslt14_deen/evaluate.sh" "$SAVE"

#!/usr/bin/env bash
# KD teacher on Multi30k de->en: transformer_cpu_large (3+3 layers, d 512, FFN 2048, 8 heads),
# the baseline recipe's hyperparameters except lr 7e-4 (the student's 1e-3 scaled by 1/sqrt(2) for
# twice the width) and 6,000 updates. The averaged checkpoint $SAVE/checkpoint_avg5.pt (written by
# evaluate.sh) is the teacher of train_kd_{word,seq,hidden}.sh.
# nmt-sd (2026-11-24, b46131f, one pinned thread): 41.71 BLEU / 60.88 chrF2 on test2016 (the
# transformer_cpu student: 40.38), best valid loss 3.847 at epoch 14; 239 min of training.
#   bash recipes/multi30k/prepare.sh && bash recipes/multi30k/train_teacher.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/multi30k_de_en}
SAVE=${SAVE:-$REPO/checkpoints/multi30k_teacher}
SEED=${SEED:-1}
MAX_UPDATE=${MAX_UPDATE:-6000}
mkdir -p "$SAVE"

nmt-sd-train "$DATA/bin" \
  --arch transformer_cpu_large --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 7e-4 --lr-scheduler inverse_sqrt --warmup-updates 1000 --warmup-init-lr 1e-07 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens 2048 --max-update "$MAX_UPDATE" --bf16 \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 50 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/multi30k/evaluate.sh" "$SAVE"

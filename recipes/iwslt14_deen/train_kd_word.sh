#!/usr/bin/env bash
# Word-level KD on IWSLT14 de->en (Kim & Rush, EMNLP 2016, arXiv 1606.07947; Hinton et al. 2015,
# arXiv 1503.02531 with T > 1): a transformer_iwslt_de_en student with train_rdrop.sh's
# hyperparameters and the train_teacher.sh teacher, lambda 0.5, T 1 ("$@" overrides, e.g.
# --kd-temperature 2). Paper (LSTMs, WMT14 en-de 18.5 / IWSLT15 th-en 14.2 with Seq-KD +
# Seq-Inter + Word-KD; different data and BLEU, ../shared/docs/methods.md 6.2). nmt-sd: not yet run.
#   bash recipes/iwslt14_deen/train_teacher.sh && bash recipes/iwslt14_deen/train_kd_word.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/iwslt14_de_en}
SAVE=${SAVE:-$REPO/checkpoints/iwslt14_kd_word}
SEED=${SEED:-1}
MAX_UPDATE=${MAX_UPDATE:-300000}
TEACHER=${TEACHER:-$REPO/checkpoints/iwslt14_teacher/checkpoint_best.pt}
LAUNCH=${LAUNCH:-}
mkdir -p "$SAVE"

$LAUNCH $(command -v nmt-sd-train) "$DATA/bin" \
  --arch transformer_iwslt_de_en --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07 \
  --dropout 0.3 --criterion kd --label-smoothing 0.1 \
  --teacher-path "$TEACHER" --kd-alpha 0.5 --kd-temperature 1 \
  --max-tokens 4096 --max-update "$MAX_UPDATE" \
  --eval-bleu --eval-bleu-beam 5 --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 100 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/iwslt14_deen/evaluate.sh" "$SAVE"

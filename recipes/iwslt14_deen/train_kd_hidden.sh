#!/usr/bin/env bash
# Representation KD on IWSLT14 de->en (TinyBERT arXiv 1909.10351 / Patient-KD arXiv 1908.09355
# style): word-level KD (lambda 0.5, T 1) plus hidden-state MSE (learned 512->1024 projection,
# weight 1) and attention-map MSE (weight 1) between mapped layers; the default layer map pairs
# student layer i with teacher layer i (both 6 deep). Student transformer_iwslt_de_en with
# train_rdrop.sh's hyperparameters; teacher from train_teacher.sh. Papers: BERT compression, no
# comparable number. nmt-sd: not yet run.
#   bash recipes/iwslt14_deen/train_teacher.sh && bash recipes/iwslt14_deen/train_kd_hidden.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/iwslt14_de_en}
SAVE=${SAVE:-$REPO/checkpoints/iwslt14_kd_hidden}
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
  --teacher-path "$TEACHER" --kd-alpha 0.5 --kd-temperature 1 --kd-hidden-weight 1 --kd-attn-weight 1 \
  --max-tokens 4096 --max-update "$MAX_UPDATE" \
  --eval-bleu --eval-bleu-beam 5 --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 100 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/iwslt14_deen/evaluate.sh" "$SAVE"

#!/usr/bin/env bash
# Representation KD on Multi30k de->en, CPU preset (TinyBERT / Patient-KD style): word-level KD
# (lambda 0.5, T 1) plus MSE between each student layer and the teacher layer of the same depth
# (the default uniform --kd-layer-map; hidden states through a learned 256->512 projection,
# weight 1; head-averaged attention maps, weight 1), with the
# train_teacher.sh teacher; the baseline recipe's hyperparameters, same 5,000 updates.
# Papers (BERT compression, different tasks): no comparable number. nmt-sd (2026-11-24, 5,000
# updates, bf16): 41.14 sacreBLEU on test2016 (teacher 41.71, plain student 40.38; README results).
#   bash recipes/multi30k/train_teacher.sh && bash recipes/multi30k/train_kd_hidden.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/multi30k_de_en}
SAVE=${SAVE:-$REPO/checkpoints/multi30k_kd_hidden}
SEED=${SEED:-1}
MAX_UPDATE=${MAX_UPDATE:-5000}
TEACHER=${TEACHER:-$REPO/checkpoints/multi30k_teacher/checkpoint_avg5.pt}
mkdir -p "$SAVE"

nmt-sd-train "$DATA/bin" \
  --arch transformer_cpu --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 1000 --warmup-init-lr 1e-07 \
  --criterion kd --teacher-path "$TEACHER" --kd-alpha 0.5 --kd-temperature 1 --label-smoothing 0.1 \
  --kd-hidden-weight 1 --kd-attn-weight 1 \
  --max-tokens 2048 --max-update "$MAX_UPDATE" --bf16 \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 50 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/multi30k/evaluate.sh" "$SAVE"

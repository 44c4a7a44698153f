#!/usr/bin/env bash
# Word-level KD on Multi30k de->en, CPU preset: the baseline recipe (recipes/multi30k/train.sh)
# plus --criterion kd with the train_teacher.sh teacher, lambda 0.5, T 1 (Kim & Rush 2016's
# word-level KD; T > 1 is Hinton et al. 2015's soft targets, e.g. "$@" = --kd-temperature 2),
# same 5,000 updates. Each step also runs the frozen teacher's forward (cost: docs/benchmarks.md).
# Paper (WMT14 en-de / IWSLT15 th-en, LSTMs, different data and BLEU): see ../shared/docs/methods.md 6.2.
# nmt-sd (2026-11-24, 5,000 updates, bf16): 40.24 sacreBLEU on test2016 (teacher 41.71, plain student 40.38; README results).
#   bash recipes/multi30k/train_teacher.sh && bash recipes/multi30k/train_kd_word.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/multi30k_de_en}
SAVE=${SAVE:-$REPO/checkpoints/multi30k_kd_word}
SEED=${SEED:-1}
MAX_UPDATE=${MAX_UPDATE:-5000}
TEACHER=${TEACHER:-$REPO/checkpoints/multi30k_teacher/checkpoint_avg5.pt}
mkdir -p "$SAVE"

nmt-sd-train "$DATA/bin" \
  --arch transformer_cpu --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 1000 --warmup-init-lr 1e-07 \
  --criterion kd --teacher-path "$TEACHER" --kd-alpha 0.5 --kd-temperature 1 --label-smoothing 0.1 \
  --max-tokens 2048 --max-update "$MAX_UPDATE" --bf16 \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 50 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/multi30k/evaluate.sh" "$SAVE"

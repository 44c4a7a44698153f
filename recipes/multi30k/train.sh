#!/usr/bin/env bash
# Multi30k de->en baseline, CPU preset (transformer_cpu: 3+3 layers, d 256, FFN 1024, 4 heads).
# nmt-sd: see README results table (sacreBLEU on test2016, beam 5, average of last 5 epochs).
#   bash recipes/multi30k/prepare.sh && bash recipes/multi30k/train.sh
# Overridable: DATA SAVE SEED MAX_UPDATE PRECISION (bf16 by default; fp32 for the float32 reference
# run, fp16 on GPUs); extra flags are passed through ("$@").
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/multi30k_de_en}
SAVE=${SAVE:-$REPO/checkpoints/multi30k_baseline}
SEED=${SEED:-1}
MAX_UPDATE=${MAX_UPDATE:-5000}
case "${PRECISION:-bf16}" in
  bf16) AMP=(--bf16) ;; fp16) AMP=(--fp16) ;; fp32) AMP=() ;;
  *) echo "train.sh: PRECISION must be bf16, fp16 or fp32, not '${PRECISION}'" >&2; exit 2 ;;
esac
mkdir -p "$SAVE"

nmt-sd-train "$DATA/bin" \
  --arch transformer_cpu --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 1000 --warmup-init-lr 1e-07 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens 2048 --max-update "$MAX_UPDATE" ${AMP[@]+"${AMP[@]}"} \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 50 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/multi30k/evaluate.sh" "$SAVE"

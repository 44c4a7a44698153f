#!/usr/bin/env bash
# Seer Forcing on Multi30k de->en, CPU preset: the baseline recipe (recipes/multi30k/train.sh) plus
# --criterion seer --seer-alpha 0.5 (seer: 3 layers like the decoder, --seer-dropout = --dropout
# 0.3; the official runs effectively used 0.1), same 5,000 updates. Per-sentence reversal, so
# padded batches differ slightly from the official code (../shared/docs/methods.md 2(h)).
# Paper (NIST Zh-En, WMT En-De/En-Ro/Zh-En; different data, tokenized BLEU): per-dataset numbers
# unverified (../shared/docs/methods.md 2(e)). nmt-sd: see README results.
#   bash recipes/multi30k/prepare.sh && bash recipes/multi30k/train_seer.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/multi30k_de_en}
SAVE=${SAVE:-$REPO/checkpoints/multi30k_seer}
SEED=${SEED:-1}
MAX_UPDATE=${MAX_UPDATE:-5000}
mkdir -p "$SAVE"

nmt-sd-train "$DATA/bin" \
  --arch transformer_cpu --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 1000 --warmup-init-lr 1e-07 \
  --criterion seer --seer-alpha 0.5 --label-smoothing 0.1 \
  --max-tokens 2048 --max-update "$MAX_UPDATE" --bf16 \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 50 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/multi30k/evaluate.sh" "$SAVE"

#!/usr/bin/env bash
# IWSLT14 de->en Transformer baseline with fairseq's examples/translation hyperparameters
# (transformer_iwslt_de_en, adam 0.9/0.98, lr 5e-4, inverse_sqrt warmup 4000, dropout 0.3,
# weight decay 1e-4, label smoothing 0.1, max-tokens 4096 on one GPU).
# Reference: fairseq's recipe reports ~34.4-35.0 tokenized lowercased BLEU (unverified; a
# different convention from the sacreBLEU printed here, see ../shared/docs/methods.md 6.3).
# nmt-sd: not yet run (the IWSLT14 training file is not on the development machines).
#   bash recipes/iwslt14_deen/prepare.sh && bash recipes/iwslt14_deen/train.sh
# On several GPUs: LAUNCH="torchrun --nproc_per_node 4" bash recipes/iwslt14_deen/train.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/iwslt14_de_en}
SAVE=${SAVE:-$REPO/checkpoints/iwslt14_baseline}
SEED=${SEED:-1}
MAX_EPOCH=${MAX_EPOCH:-60}
LAUNCH=${LAUNCH:-}
mkdir -p "$SAVE"

$LAUNCH $(command -v nmt-sd-train) "$DATA/bin" \
  --arch transformer_iwslt_de_en --share-decoder-input-output-embed \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07 \
  --dropout 0.3 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens 4096 --max-epoch "$MAX_EPOCH" \
  --eval-bleu --eval-bleu-beam 1 --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 100 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/iwslt14_deen/evaluate.sh" "$SAVE"

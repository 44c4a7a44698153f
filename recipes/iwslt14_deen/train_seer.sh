#!/usr/bin/env bash
# Seer Forcing on IWSLT14 de->en (Feng et al., ACL 2021, arXiv 2106.06751). The official code
# has no IWSLT14 setting: this is the IWSLT14 baseline recipe (train.sh: transformer_iwslt_de_en,
# lr 5e-4, warmup 4000, dropout 0.3, weight decay 1e-4, max-tokens 4096, 60 epochs) plus the
# official loss settings: alpha 0.5, label smoothing 0.1, seer as deep as the decoder.
# --seer-dropout defaults to --dropout (0.3 here); the official runs effectively used 0.1 (their
# flag was ignored, ../shared/docs/methods.md 2(f)). Batches with padding differ slightly from the official
# code (per-sentence reversal, 2(h)). Paper: no IWSLT14 number; its per-dataset BLEU (NIST Zh-En,
# WMT En-De/En-Ro/Zh-En) is unverified, scored with fairseq-generate --remove-bpe (tokenized BLEU,
# not sacreBLEU; see ../shared/docs/methods.md 2(e) and 6.3). nmt-sd: not yet run (no IWSLT14 train file here).
#   bash recipes/iwslt14_deen/prepare.sh && bash recipes/iwslt14_deen/train_seer.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/iwslt14_de_en}
SAVE=${SAVE:-$REPO/checkpoints/iwslt14_seer}
SEED=${SEED:-1}
MAX_EPOCH=${MAX_EPOCH:-60}
LAUNCH=${LAUNCH:-}
mkdir -p "$SAVE"

$LAUNCH $(command -v nmt-sd-train) "$DATA/bin" \
  --arch transformer_iwslt_de_en --share-decoder-input-output-embed \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07 \
  --dropout 0.3 --criterion seer --seer-alpha 0.5 --label-smoothing 0.1 \
  --max-tokens 4096 --max-epoch "$MAX_EPOCH" \
  --eval-bleu --eval-bleu-beam 1 --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 100 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/iwslt14_deen/evaluate.sh" "$SAVE"

#!/usr/bin/env bash
# Multilingual baseline, one-to-many en->{de,fr,cs} on the subsampled Multi30k set (prepare.sh;
# the same files as many-to-one), CPU preset, encoder tag = source (en), decoder tag = target.
# Paper (LSSD): no comparable number. nmt-sd (2026-11-24, 5,000 updates): avg 28.60 sacreBLEU
# on test2016 (en-de 34.28, en-fr 40.26, en-cs 11.26; README results).
#   bash recipes/multi30k_multi/prepare.sh && bash recipes/multi30k_multi/train_o2m.sh
# Overridable: DATA SAVE SEED MAX_UPDATE; extra flags are passed through ("$@").
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/multi30k_multi}
SAVE=${SAVE:-$REPO/checkpoints/multi30k_o2m_baseline}
SEED=${SEED:-1}
MAX_UPDATE=${MAX_UPDATE:-5000}
PAIRS=en-de,en-fr,en-cs
mkdir -p "$SAVE"

nmt-sd-train "$DATA/bin" \
  --task multilingual_translation --lang-pairs "$PAIRS" --encoder-langtok src --decoder-langtok \
  --sampling-method temperature --sampling-temperature 1 \
  --arch transformer_cpu --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 1000 --warmup-init-lr 1e-07 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens 2048 --max-update "$MAX_UPDATE" --bf16 \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 50 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

python -m nmt_sd.cli.plot_valid "$SAVE" --title "Multi30k O2M baseline"
PAIRS=$PAIRS bash "$REPO/recipes/multi30k_multi/evaluate.sh" "$SAVE"

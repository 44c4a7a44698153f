#!/usr/bin/env bash
# nmt-sd quickstart (the README's first command): install, prepare Multi30k de->en
# (from ../shared/data when present, else download), train the CPU preset for a few
# minutes, translate test2016 with beam 5 and print sacreBLEU with its signature.
#   bash recipes/quickstart.sh            # MAX_UPDATE=800 by default (~5 min on 2 cores)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
MAX_UPDATE=${MAX_UPDATE:-800}
SAVE=${SAVE:-$REPO/checkpoints/quickstart}
DATA=$REPO/data/multi30k_de_en

pip install -q -e .
bash recipes/multi30k/prepare.sh
rm -f "$SAVE/checkpoint_last.pt"  # the quickstart always trains afresh
nmt-sd-train "$DATA/bin" \
  --arch transformer_cpu --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9, 0.98)' --weight-decay 0.0001 \
  --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 400 --warmup-init-lr 1e-07 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens 2048 --max-update "$MAX_UPDATE" --bf16 \
  --save-dir "$SAVE" --no-epoch-checkpoints --log-interval 50
nmt-sd-generate "$DATA/bin" --path "$SAVE/checkpoint_best.pt" --gen-subset test \
  --beam 5 --max-tokens 4096 --remove-bpe sentencepiece --bf16 --results-path "$SAVE/test" --quiet
echo "== sacreBLEU on Multi30k test2016 (de->en), $MAX_UPDATE updates =="
nmt-sd-score --sys "$SAVE/test/test.hyp.detok" --ref "$DATA/raw/test.en"

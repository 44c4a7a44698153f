#!/usr/bin/env bash
# TED-8 many-to-one baseline, the LSSD paper's setup (official scripts, ../shared/docs/methods.md 5(d)):
# transformer_iwslt_de_en, pre-norm, layernorm-embedding, shared decoder in/out embeddings,
# source tag + decoder tag, temperature 1, lr 2e-3, 8 x 8192 tokens (one GPU: update-freq 8),
# 300 epochs / 200k updates, seed 222.
# Paper (TED-8-Diverse M2O, re-run by Huang et al. 2023): 29.00 avg BLEU. nmt-sd: not yet run.
#   SET=diverse bash recipes/ted8/prepare.sh && SET=diverse bash recipes/ted8/train_m2o.sh
# Overridable: SET LANGS DATA SAVE SEED UPDATE_FREQ PRECISION (fp16 on GPU, bf16 on CPU); "$@".
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SET=${SET:-diverse}
DATA=${DATA:-$REPO/data/ted8_$SET}
SAVE=${SAVE:-$REPO/checkpoints/ted8_${SET}_m2o_baseline}
SEED=${SEED:-222}
LANGS=${LANGS:-$([[ "$SET" == related ]] && echo aze,bel,glg,slk,tur,rus,por,ces || echo bos,mar,hin,mkd,ell,bul,fra,kor)}
PAIRS=$(for x in ${LANGS//,/ }; do printf '%s-eng,' "$x"; done)
PAIRS=${PAIRS%,}
mkdir -p "$SAVE"

nmt-sd-train "$DATA/bin" \
  --task multilingual_translation --lang-pairs "$PAIRS" --encoder-langtok src --decoder-langtok \
  --sampling-method temperature --sampling-temperature 1 \
  --arch transformer_iwslt_de_en --encoder-normalize-before --decoder-normalize-before \
  --layernorm-embedding --share-decoder-input-output-embed \
  --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-6 --weight-decay 0.0 \
  --lr 2e-3 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --dropout 0.3 --attention-dropout 0.3 \
  --max-tokens 8192 --update-freq "${UPDATE_FREQ:-8}" --max-epoch 300 --max-update 200000 --"${PRECISION:-fp16}" \
  --seed "$SEED" --save-dir "$SAVE" --log-interval 100 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

python -m nmt_sd.cli.plot_valid "$SAVE" --title "TED-8-$SET M2O baseline"
PAIRS=$PAIRS bash "$REPO/recipes/ted8/evaluate.sh" "$SAVE"

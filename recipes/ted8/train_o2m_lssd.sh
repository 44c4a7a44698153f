#!/usr/bin/env bash
# TED-8 one-to-many LSSD: train_o2m.sh plus --criterion lssd, teachers keyed by target language,
# Whole gate, language-aware KD, Diverse w 0.6 (Related: "$@" = --lssd-weight 0.5 without
# language-aware is the official Whole script; Selective: --lssd-gate selective --lssd-weight 0.5;
# Adaptive: --lssd-gate adaptive --lssd-gate-level sentence --lssd-weight 0.5).
# Paper (TED-8-Diverse O2M, re-run by Huang et al. 2023): 23.55 avg BLEU. nmt-sd: not yet run.
#   SET=diverse bash recipes/ted8/prepare.sh && SET=diverse bash recipes/ted8/train_o2m_lssd.sh
# Overridable: SET LANGS DATA SAVE SEED UPDATE_FREQ PRECISION (fp16 on GPU, bf16 on CPU); "$@".
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SET=${SET:-diverse}
DATA=${DATA:-$REPO/data/ted8_$SET}
SAVE=${SAVE:-$REPO/checkpoints/ted8_${SET}_o2m_lssd}
SEED=${SEED:-222}
LANGS=${LANGS:-$([[ "$SET" == related ]] && echo aze,bel,glg,slk,tur,rus,por,ces || echo bos,mar,hin,mkd,ell,bul,fra,kor)}
PAIRS=$(for x in ${LANGS//,/ }; do printf 'eng-%s,' "$x"; done)
PAIRS=${PAIRS%,}
mkdir -p "$SAVE"

nmt-sd-train "$DATA/bin" \
  --task multilingual_translation --lang-pairs "$PAIRS" --encoder-langtok src --decoder-langtok \
  --sampling-method temperature --sampling-temperature 1 \
  --arch transformer_iwslt_de_en --encoder-normalize-before --decoder-normalize-before \
  --layernorm-embedding --share-decoder-input-output-embed \
  --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-6 --weight-decay 0.0 \
  --lr 2e-3 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07 \
  --criterion lssd --lssd-weight 0.6 --lssd-gate whole --lssd-language-aware \
  --label-smoothing 0.1 --dropout 0.3 --attention-dropout 0.3 \
  --max-tokens 8192 --update-freq "${UPDATE_FREQ:-8}" --max-epoch 600 --max-update 200000 --"${PRECISION:-fp16}" \
  --seed "$SEED" --save-dir "$SAVE" --log-interval 100 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

python -m nmt_sd.cli.plot_valid "$SAVE" --title "TED-8-$SET O2M LSSD"
PAIRS=$PAIRS bash "$REPO/recipes/ted8/evaluate.sh" "$SAVE"

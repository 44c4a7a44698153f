#!/usr/bin/env bash
# CBBGCA on Multi30k de->en, CPU preset (Zhou et al., ACL 2022, arXiv 2202.13663; no official code,
# nmt-sd design: docs/cmlm_kd.md): the baseline recipe (recipes/multi30k/train.sh) plus
# --criterion cmlm_kd, same 5,000 updates. Stage 1 (joint NMT + CMLM training) is the first half
# (MAX_UPDATE/2, the ../shared/docs/methods.md 3(h) default) and the KD weight anneals linearly 1.0 -> 0.1
# over the second half; threshold gate tau 0.5, live CMLM teacher (3 layers, shared embeddings).
# Both lengths are written out so that a resumed or split run keeps the same schedule.
# Paper (WMT14 En-De +1.02, WMT19 Zh-En +1.30, WMT14 En-Fr +0.57 BLEU over a Transformer
# baseline; different data, abstract-level only, absolute BLEU and convention unverified,
# ../shared/docs/methods.md 3(e)). nmt-sd: see README results.
#   bash recipes/multi30k/prepare.sh && bash recipes/multi30k/train_cmlm_kd.sh
# Ablations (use another SAVE): JOINT=0 (no stage 1), or append flags: --cmlm-kd-gate none,
# --cmlm-kd-anneal constant, --cmlm-kd-weight 0, --cmlm-kd-cmlm-weight 0, --cmlm-kd-teacher frozen.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/multi30k_de_en}
SAVE=${SAVE:-$REPO/checkpoints/multi30k_cmlm_kd}
SEED=${SEED:-1}
MAX_UPDATE=${MAX_UPDATE:-5000}
JOINT=${JOINT:-$((MAX_UPDATE / 2))}
mkdir -p "$SAVE"

nmt-sd-train "$DATA/bin" \
  --arch transformer_cpu --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 1000 --warmup-init-lr 1e-07 \
  --criterion cmlm_kd --label-smoothing 0.1 --cmlm-kd-cmlm-weight 1.0 \
  --cmlm-kd-joint-updates "$JOINT" --cmlm-kd-anneal-updates $((MAX_UPDATE - JOINT)) \
  --cmlm-kd-gate threshold --cmlm-kd-threshold 0.5 --cmlm-kd-teacher live \
  --cmlm-kd-weight 1.0 --cmlm-kd-weight-min 0.1 --cmlm-kd-anneal linear --cmlm-kd-combine add \
  --max-tokens 2048 --max-update "$MAX_UPDATE" --bf16 \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 50 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/multi30k/evaluate.sh" "$SAVE"

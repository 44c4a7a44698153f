#!/usr/bin/env bash
# Sequence-level KD on Multi30k de->en (Kim & Rush 2016): nmt-sd-seqkd translates the training
# sources with the train_teacher.sh teacher (beam 5, as evaluate.sh), then the baseline recipe
# trains the CPU-preset student on the distilled set (same dictionaries, valid and test; same
# 5,000 updates). On CPU, SEQKD_PROCS processes decode at once (default: the cores available,
# one thread each; the output does not depend on it; an interrupted run decodes only the rest). SEQ_INTER=1 keeps the beam candidate closest to the reference (sentence BLEU).
# Paper: Seq-KD "seems to eliminate the need for beam search" (../shared/docs/methods.md 6.2).
# nmt-sd (2026-11-24, 5,000 updates, bf16): 39.83 sacreBLEU on test2016 with beam 5, 39.47 greedy
# (plain student 40.38 / teacher 41.71 with beam 5; README results).
#   bash recipes/multi30k/train_teacher.sh && bash recipes/multi30k/train_kd_seq.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/multi30k_de_en}
SEQ_INTER=${SEQ_INTER:-0}
INTER=$([[ "$SEQ_INTER" == 1 ]] && echo _inter || true)
SAVE=${SAVE:-$REPO/checkpoints/multi30k_kd_seq$INTER}
SEED=${SEED:-1}
MAX_UPDATE=${MAX_UPDATE:-5000}
TEACHER=${TEACHER:-$REPO/checkpoints/multi30k_teacher/checkpoint_avg5.pt}
DISTILLED=${DISTILLED:-$DATA/bin_seqkd$INTER}
mkdir -p "$SAVE"
PROCS=${SEQKD_PROCS:-$(python -c "import os, torch; print(1 if torch.cuda.is_available() else len(os.sched_getaffinity(0)))")}

if [[ ! -f "$DISTILLED/train.${SRC:-de}-${TGT:-en}.${TGT:-en}.idx" ]]; then  # written last
  nmt-sd-seqkd "$DATA/bin" --path "$TEACHER" --destdir "$DISTILLED" \
    --beam 5 --lenpen 1.0 --max-tokens 4096 --remove-bpe sentencepiece --bf16 \
    --inter-threads "$PROCS" ${INTER:+--seq-inter} 2>&1 | tee -a "$SAVE/seqkd.log"
fi

nmt-sd-train "$DISTILLED" \
  --arch transformer_cpu --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 1000 --warmup-init-lr 1e-07 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens 2048 --max-update "$MAX_UPDATE" --bf16 \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 50 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/multi30k/evaluate.sh" "$SAVE"

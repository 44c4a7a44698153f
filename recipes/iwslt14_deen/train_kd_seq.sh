#!/usr/bin/env bash
# Sequence-level KD on IWSLT14 de->en (Kim & Rush, EMNLP 2016, arXiv 1606.07947): nmt-sd-seqkd
# translates the training sources with the train_teacher.sh teacher (beam 5), then a
# transformer_iwslt_de_en student trains on the distilled set with train_rdrop.sh's
# hyperparameters and plain LS-CE. SEQ_INTER=1 keeps the beam candidate closest to the
# reference by sentence BLEU. Paper: +4.2 BLEU greedy / +1.7 beam over no KD (LSTMs, WMT14
# en-de; ../shared/docs/methods.md 6.2). nmt-sd: not yet run.
#   bash recipes/iwslt14_deen/train_teacher.sh && bash recipes/iwslt14_deen/train_kd_seq.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DATA:-$REPO/data/iwslt14_de_en}
SEQ_INTER=${SEQ_INTER:-0}
INTER=$([[ "$SEQ_INTER" == 1 ]] && echo _inter || true)
SAVE=${SAVE:-$REPO/checkpoints/iwslt14_kd_seq$INTER}
SEED=${SEED:-1}
MAX_UPDATE=${MAX_UPDATE:-300000}
TEACHER=${TEACHER:-$REPO/checkpoints/iwslt14_teacher/checkpoint_best.pt}
DISTILLED=${DISTILLED:-$DATA/bin_seqkd$INTER}
LAUNCH=${LAUNCH:-}
mkdir -p "$SAVE"

if [[ ! -f "$DISTILLED/train.de-en.en.idx" ]]; then  # written last
  nmt-sd-seqkd "$DATA/bin" --path "$TEACHER" --destdir "$DISTILLED" --beam 5 --lenpen 1.0 \
    --max-tokens 8000 --remove-bpe sentencepiece ${INTER:+--seq-inter} 2>&1 | tee -a "$SAVE/seqkd.log"
fi

$LAUNCH $(command -v nmt-sd-train) "$DISTILLED" \
  --arch transformer_iwslt_de_en --share-all-embeddings \
  --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0001 \
  --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07 \
  --dropout 0.3 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens 4096 --max-update "$MAX_UPDATE" \
  --eval-bleu --eval-bleu-beam 5 --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
  --seed "$SEED" --save-dir "$SAVE" --keep-last-epochs 5 --log-interval 100 \
  "$@" 2>&1 | tee -a "$SAVE/train.log"

bash "$REPO/recipes/iwslt14_deen/evaluate.sh" "$SAVE"

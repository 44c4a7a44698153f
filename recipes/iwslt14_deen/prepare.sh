#!/usr/bin/env bash
# IWSLT14 de->en: the standard fairseq splits (valid = every 23rd cleaned training pair,
# test = dev2010 + TEDX.dev2012 + tst2010-2012, 6,750 pairs), lowercased as in the standard
# setup, joint SentencePiece (10k), binarized with a joined dictionary.
#   bash recipes/iwslt14_deen/prepare.sh                     # downloads fairseq's de-en.tgz
#   INPUT=/path/to/de-en.tgz bash recipes/iwslt14_deen/prepare.sh   # or an extracted dir
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-$REPO/data/iwslt14_de_en}
VOCAB=${VOCAB:-10000}
INPUT=${INPUT:-http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz}

SRC=de TGT=en INPUT=$INPUT OUT=$OUT VOCAB=$VOCAB LOWERCASE=${LOWERCASE:-1} \
  bash "$REPO/data_prep/prepare_iwslt14_deen.sh"
if [[ -f "$OUT/bin/.done" ]]; then
  echo "prepare.sh: $OUT/bin already binarized"
else
  nmt-sd-preprocess --source-lang de --target-lang en \
    --trainpref "$OUT/spm/train" --validpref "$OUT/spm/valid" --testpref "$OUT/spm/test" \
    --destdir "$OUT/bin" --joined-dictionary --workers "${WORKERS:-4}"
  touch "$OUT/bin/.done"
fi

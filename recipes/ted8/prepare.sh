#!/usr/bin/env bash
# TED-8 (Wang et al. 2020, used by LSSD): 8 languages <-> eng from the TED corpus of Qi et al.
# (2018), one joint SentencePiece model (VOCAB, default 32k; the LSSD data used 8k spm per
# language) and one joint dictionary with __xxx__ tags, binarized X-eng pairs.
#   SET=diverse bash recipes/ted8/prepare.sh       # bos mar hin mkd ell bul fra kor (default)
#   SET=related bash recipes/ted8/prepare.sh       # aze bel glg slk tur rus por ces
#   INPUT=/path/to/ted_talks.tar.gz (or a directory of X_eng/ted-{train,dev,test}.orig.* dirs)
#   LANGS=aze INPUT=../shared/data/ted-qi2018 bash recipes/ted8/prepare.sh   # offline, one pair
# INPUT default: the corpus archive http://phontron.com/data/ted_talks.tar.gz (downloaded into
# $OUT/orig). Others report that this address now answers with a web page (not checked here: no
# network); the download then stops with a one-line error: pass a local copy (the three
# all_talks_{train,dev,test}.tsv, or per-pair directories; OPUS's NeuLab-TedTalks holds the
# training part only). Re-runnable; extra flags: "$@".
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SET=${SET:-diverse}
case "$SET" in
  diverse) DEFAULT_LANGS=bos,mar,hin,mkd,ell,bul,fra,kor ;;
  related) DEFAULT_LANGS=aze,bel,glg,slk,tur,rus,por,ces ;;
  *) echo "prepare.sh: error: SET must be diverse or related, got $SET" >&2; exit 2 ;;
esac
LANGS=${LANGS:-$DEFAULT_LANGS}
OUT=${OUT:-$REPO/data/ted8_$SET}
VOCAB=${VOCAB:-32000}
INPUT=${INPUT:-}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

args=(--format ted --input "$INPUT" --langs "$LANGS" --pivot eng --vocab-size "$VOCAB"
  --output "$OUT" --workers 4 "$@")
python -m data_prep.prepare_multilingual "${args[@]}"
{
  echo "TED-8-$SET ($LANGS <-> eng), prepared by nmt-sd recipes/ted8/prepare.sh"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); nmt-sd commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "input: ${INPUT:-http://phontron.com/data/ted_talks.tar.gz}; splits: train / dev / test of Qi et al. 2018"
  echo "spm/: joint unigram SentencePiece, vocab $VOCAB; bin/: one dictionary with __xxx__ tags"
  echo "command: python -m data_prep.prepare_multilingual ${args[*]}"
  echo "line counts:"
  (cd "$OUT" && wc -l raw/* | grep -v total)
} > "$OUT/README.txt"
echo "prepare.sh: data ready in $OUT/bin"

#!/usr/bin/env bash
# IWSLT14 German-English (the fairseq prepare-iwslt14.sh splits, untokenized) + one joint
# SentencePiece model.
#   INPUT=/path/to/de-en.tgz OUT=data/iwslt14_de_en bash data_prep/prepare_iwslt14_deen.sh
# INPUT: URL (default: fairseq's copy of the WIT3 2014-01 archive), .tgz or extracted dir.
# Splits: valid = every 23rd cleaned training pair, train = the rest (length 1-175, ratio
# 1.5), test = dev2010 + TEDX.dev2012 + tst2010 + tst2011 + tst2012 (6,750 pairs).
# LOWERCASE=1 (default) follows the standard lowercased IWSLT14 setup; TEST_ONLY=1 writes
# only raw/test.* (for a directory with just the XML sets) and skips SentencePiece.
# Outputs: $OUT/raw/{train,valid,test}.{de,en}, $OUT/spm/spm.{model,vocab},
#   $OUT/spm/{train,valid,test}.{de,en}, $OUT/README.txt. Re-runnable (.done markers).
set -euo pipefail

SRC=${SRC:-de}
TGT=${TGT:-en}
INPUT=${INPUT:-http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz}
OUT=${OUT:-data/iwslt14_de_en}
VOCAB=${VOCAB:-8000}
LOWERCASE=${LOWERCASE:-1}
TEST_ONLY=${TEST_ONLY:-0}
WORKERS=${WORKERS:-1}
PYTHON=${PYTHON:-python}

if [[ "$SRC-$TGT" != de-en && "$SRC-$TGT" != en-de ]]; then
  echo "prepare_iwslt14_deen.sh: error: SRC/TGT must be de/en or en/de, got $SRC/$TGT" >&2
  exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

raw_args=(--input "$INPUT" --output "$OUT/raw")
[[ "$LOWERCASE" == 1 ]] && raw_args+=(--lowercase)
[[ "$TEST_ONLY" == 1 ]] && raw_args+=(--test-only)
spm_args=(--input-dir "$OUT/raw" --output "$OUT/spm" --src "$SRC" --tgt "$TGT"
  --vocab-size "$VOCAB" --model-type unigram --character-coverage 1.0 --workers "$WORKERS")

"$PYTHON" -m data_prep.prepare_iwslt14_deen "${raw_args[@]}"
if [[ "$TEST_ONLY" == 1 ]]; then
  spm_note="spm/: skipped (TEST_ONLY=1: no training data to train SentencePiece on)"
else
  "$PYTHON" -m data_prep.spm "${spm_args[@]}"
  spm_note="spm/: joint unigram SentencePiece, vocab $VOCAB, character coverage 1.0, trained on raw/train.de + raw/train.en; decode with --remove-bpe sentencepiece"
fi

{
  echo "IWSLT14 de-en, prepared by nmt-sd data_prep/prepare_iwslt14_deen.sh"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nmt-sd commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "input: $INPUT"
  echo "lowercase: $LOWERCASE; test only: $TEST_ONLY"
  echo "raw/: untokenized text; train/valid cleaned (1-175 tokens, ratio 1.5; tokens counted"
  echo "      with sacreBLEU's 13a tokenizer instead of Moses), valid = every 23rd pair"
  echo "$spm_note"
  "$PYTHON" -c 'import sacrebleu, sentencepiece, sys; print("versions: python", sys.version.split()[0], "sentencepiece", sentencepiece.__version__, "sacrebleu", sacrebleu.__version__)'
  echo "commands:"
  echo "  python -m data_prep.prepare_iwslt14_deen ${raw_args[*]}"
  [[ "$TEST_ONLY" == 1 ]] || echo "  python -m data_prep.spm ${spm_args[*]}"
  echo "line counts:"
  (cd "$OUT" && wc -l raw/*.de raw/*.en $( [[ "$TEST_ONLY" == 1 ]] || echo spm/*.de spm/*.en ) | grep -v total)
} > "$OUT/README.txt"
echo "done: $OUT (see $OUT/README.txt)"

#!/usr/bin/env bash
# Multi30k task 1 (Elliott et al., 2016): raw cased splits + one joint SentencePiece model.
#   SRC=de TGT=en INPUT=../shared/data/multi30k-task1 OUT=data/multi30k_de_en \
#     bash data_prep/prepare_multi30k.sh
# INPUT empty = download the release (multi30k/dataset, pinned commit). Outputs:
#   $OUT/raw/{train,valid,test}.{$SRC,$TGT}  raw text (valid = val, test = test_2016_flickr)
#   $OUT/spm/spm.{model,vocab}, $OUT/spm/{train,valid,test}.{$SRC,$TGT}  pieces
#   $OUT/README.txt
# Re-runnable: finished steps are skipped (.done markers). Binarize with nmt-sd-preprocess.
set -euo pipefail

SRC=${SRC:-de}
TGT=${TGT:-en}
INPUT=${INPUT:-}
OUT=${OUT:-data/multi30k_${SRC}_${TGT}}
VOCAB=${VOCAB:-8000}
LOWERCASE=${LOWERCASE:-0}
WORKERS=${WORKERS:-1}
PYTHON=${PYTHON:-python}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

raw_args=(--src "$SRC" --tgt "$TGT" --output "$OUT/raw")
[[ -n "$INPUT" ]] && raw_args+=(--input "$INPUT")
[[ "$LOWERCASE" == 1 ]] && raw_args+=(--lowercase)
spm_args=(--input-dir "$OUT/raw" --output "$OUT/spm" --src "$SRC" --tgt "$TGT"
  --vocab-size "$VOCAB" --model-type unigram --character-coverage 1.0 --workers "$WORKERS")

"$PYTHON" -m data_prep.prepare_multi30k "${raw_args[@]}"
"$PYTHON" -m data_prep.spm "${spm_args[@]}"

{
  echo "Multi30k task 1 $SRC-$TGT, prepared by nmt-sd data_prep/prepare_multi30k.sh"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nmt-sd commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "input: ${INPUT:-download of multi30k/dataset@a3d2e0d2 data/task1/raw}"
  echo "splits: train = train, valid = val, test = test_2016_flickr; lowercase: $LOWERCASE"
  echo "raw/: untokenized text, unchanged except optional lowercasing"
  echo "spm/: joint unigram SentencePiece, vocab $VOCAB, character coverage 1.0,"
  echo "      trained on raw/train.$SRC + raw/train.$TGT; decode with --remove-bpe sentencepiece"
  "$PYTHON" -c 'import sacrebleu, sentencepiece, sys; print("versions: python", sys.version.split()[0], "sentencepiece", sentencepiece.__version__, "sacrebleu", sacrebleu.__version__)'
  echo "commands:"
  echo "  python -m data_prep.prepare_multi30k ${raw_args[*]}"
  echo "  python -m data_prep.spm ${spm_args[*]}"
  echo "line counts:"
  (cd "$OUT" && wc -l raw/*."$SRC" raw/*."$TGT" spm/*."$SRC" spm/*."$TGT" | grep -v total)
} > "$OUT/README.txt"
echo "done: $OUT (see $OUT/README.txt)"

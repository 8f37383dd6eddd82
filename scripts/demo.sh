#!/usr/bin/env bash
# `make demo`: a short study (configs/studies/demo.yaml) through `ds-distil experiment`, on the
# default data (../shared/data, or $DS_DISTIL_DATA): prepare the Tagalog corpus, pretrain a small
# teacher on it, distil a student, finetune teacher, student and the student's architecture from
# scratch on Hatespeech Filipino, and print the table beside the bag-of-words and majority rows.
# Writes under runs/demo/ (DEMO_OUT); run it again to continue or to see the table (finished
# stages are skipped); `make clean-demo` starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DS_DISTIL_DATA:-$(cd .. && pwd)/shared/data}
OUT=${DEMO_OUT:-runs/demo}
read -ra STUDY_ARGS <<<"${DEMO_OVERRIDES:-}"  # study keys for a quick check of this script, e.g. teacher.settings.train.max_steps=3
if [ ! -f "$DATA/corpus/tl_corpus_combined.txt" ] || [ ! -f "$DATA/mbert_tokenizer/vocab.txt" ] || [ ! -f "$DATA/hatespeech/train.csv" ]; then
  echo "demo: no Tagalog data at $DATA: point DS_DISTIL_DATA at the data directory (with corpus/, mbert_tokenizer/ and hatespeech/), or prepare OSCAR from the hub instead: ds-distil prepare --hf-dataset oscar-corpus/OSCAR-2301 --hf-config tl --tokenizer bert-base-multilingual-cased --out runs/shards/oscar-tl" >&2
  exit 2
fi
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -d "$OUT/.experiment" ]; then
  echo "demo: $OUT holds the output of an older demo (not a study's); remove it with \`make clean-demo\` (or set DEMO_OUT)" >&2
  exit 2
fi
export DS_DISTIL_DATA=$DATA
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
start=$(date +%s)

echo "== the plan: every stage as the command it runs"
ds-distil experiment configs/studies/demo.yaml --out "$OUT" --dry-run "${STUDY_ARGS[@]}"
echo
echo "== running it (each stage's log: $OUT/logs/)"
ds-distil experiment configs/studies/demo.yaml --out "$OUT" "${STUDY_ARGS[@]}"
echo
sed -n '/^## Table 2/,/^## /p' "$OUT/report/tables.md" | sed '$d'
echo "demo: done in $(( $(date +%s) - start )) s"
echo "demo: all tables and stage times: $OUT/report/tables.md; every run: $OUT/report/report.md"
echo "demo: the distilled student (a Hugging Face directory): $OUT/students/student-2x128/student"
echo "demo: TensorBoard: tensorboard --logdir $OUT"

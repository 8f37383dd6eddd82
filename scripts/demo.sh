#!/usr/bin/env bash
# `make demo`: the main job end to end on the default data (../shared/data, or $DS_DISTIL_DATA).
# Writes under runs/demo/. Each step is the CLI command a user would type.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DS_DISTIL_DATA:-$(cd .. && pwd)/shared/data}
OUT=${DEMO_OUT:-runs/demo}
if [ ! -f "$DATA/corpus/tl_corpus_combined.txt" ] || [ ! -f "$DATA/mbert_tokenizer/vocab.txt" ]; then
  echo "demo: no Tagalog data at $DATA: point DS_DISTIL_DATA at the data directory (with corpus/ and mbert_tokenizer/), or prepare OSCAR from the hub instead: ds-distil prepare --hf-dataset oscar-corpus/OSCAR-2301 --hf-config tl --tokenizer bert-base-multilingual-cased --out $OUT/shards" >&2
  exit 2
fi
run() { echo "+ $*"; "$@"; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
start=$(date +%s)

echo "== 1. prepare: the Tagalog corpus -> mBERT-tokenized WebDataset shards"
run ds-distil prepare --input "$DATA/corpus/tl_corpus_combined.txt" --tokenizer "$DATA/mbert_tokenizer" \
  --out "$OUT/shards" --seq-len 128 --overwrite

echo "== 2. stream: a few masked batches as one training rank sees them"
run ds-distil inspect --shards "$OUT/shards" --batch-size 8 --batches 2

echo "== 3. condition a small teacher on the corpus (MLM only)"
rm -rf "$OUT/teacher" "$OUT/student"
run ds-distil distill --config configs/demo-teacher.yaml --out "$OUT/teacher" data.shards="$OUT/shards"

echo "== 4. distil a smaller student from it: 2 ranks under the DeepSpeed launcher, ZeRO-2"
OMP_NUM_THREADS=1 run deepspeed --num_gpus 2 --module ds_distil distill --config configs/demo-student.yaml \
  --out "$OUT/student" data.shards="$OUT/shards" teacher.pretrained="$OUT/teacher/student"

echo "== 5. finetune the student on Hatespeech Filipino (3,000 training examples, 1 epoch, lr 5e-4) and tabulate"
rm -rf "$OUT/finetune"
run ds-distil finetune --model "$OUT/student/student" --task hatespeech --out "$OUT/finetune/hatespeech" \
  task.data_dir="$DATA/hatespeech" task.max_train_examples=3000 train.epochs=1 train.lr=0.0005  # a small model: a higher lr
run ds-distil report --runs "$OUT/finetune" --out "$OUT/report"

echo "demo: done in $(( $(date +%s) - start )) s"
echo "demo: student (Hugging Face directory): $OUT/student/student"
echo "demo: finetuning table: $OUT/report/report.md"
echo "demo: TensorBoard: tensorboard --logdir $OUT"

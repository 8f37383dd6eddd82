#!/usr/bin/env bash
# Issue 12's comparison: the same short distillation (same teacher, same steps, same batches) with the full
# mBERT vocabulary and with a target-language vocabulary, then both students finetuned on Hatespeech and POS.
#   ds-distil prepare --input ../shared/data/corpus/tl_corpus_combined.txt --tokenizer ../shared/data/mbert_tokenizer --out runs/shards/tl-128 --seq-len 128
#   ds-distil vocab --shards runs/shards/tl-128 --out runs/vocab/tl-128
#   PATH=.venv/bin:$PATH SEEDS="1 2" bash scripts/vocab_compare.sh   # -> runs/vcmp/{teacher,full,trimmed,ft-*,report}
# The teacher is a 4x256 BERT pretrained with MLM from random weights (the CPU studies' stand-in for mBERT),
# the students 2x128. A finished step is skipped on rerun (its .done file); an unfinished one is redone.
set -euo pipefail
cd "$(dirname "$0")/.."
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} TOKENIZERS_PARALLELISM=false
T=${VCMP_OUT:-runs/vcmp} S=${SHARDS:-runs/shards/tl-128} V=${VOCAB:-runs/vocab/tl-128}
COMMON=(deepspeed.config=ds_configs/zero2-bf16.json data.num_workers=1 log.every_steps=25 data.shards="$S")
run() {  # run OUT COMMAND...: the command's output in OUT.log, OUT.done after success
  local out=$1; shift
  [ -f "$out.done" ] && return 0
  rm -rf "$out"
  /usr/bin/time -f "$out: %e s wall" "$@" > "$out.log" 2>&1
  touch "$out.done"
}
mkdir -p "$T"
run "$T/teacher" ds-distil distill --out "$T/teacher" teacher.enabled=false "${COMMON[@]}" \
  student.preset=null student.num_layers=4 student.hidden_size=256 student.intermediate_size=1024 student.num_heads=4 \
  student.max_positions=512 train.micro_batch_size=32 train.max_steps=300 train.lr=0.001 train.warmup_ratio=0.06 checkpoint.every_steps=300
STUDENT=(student.preset=null student.num_layers=2 student.hidden_size=128 student.intermediate_size=512 student.num_heads=2
  student.max_positions=512 loss.a_kl=0.5 loss.a_mlm=0.5 loss.temperature=2.0 train.micro_batch_size=32 train.max_steps=200
  train.lr=0.001 train.warmup_ratio=0.06 teacher.dtype=bf16 checkpoint.every_steps=200 teacher.pretrained="$T/teacher/student")
run "$T/full" ds-distil distill --out "$T/full" "${STUDENT[@]}" "${COMMON[@]}"
run "$T/trimmed" ds-distil distill --out "$T/trimmed" "${STUDENT[@]}" "${COMMON[@]}" student.vocab="$V"
for seed in ${SEEDS:-1}; do
  for v in full trimmed; do
    run "$T/ft-$v-hatespeech-s$seed" ds-distil finetune --model "$T/$v/student" --task hatespeech --out "$T/ft-$v-hatespeech-s$seed" \
      --config configs/finetune/pretrained.yaml task.max_train_examples=2000 train.seed="$seed" model_name="$v"
    run "$T/ft-$v-pos-s$seed" ds-distil finetune --model "$T/$v/student" --task pos --out "$T/ft-$v-pos-s$seed" \
      --config configs/finetune/pretrained.yaml task.max_length=128 train.seed="$seed" model_name="$v"
  done
done
ds-distil report --runs "$T" --out "$T/report" --overwrite

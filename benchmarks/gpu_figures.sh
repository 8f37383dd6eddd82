#!/usr/bin/env bash
# Every GPU figure of the speed work (issue 11) in one command, on one GPU:
#
#   bash benchmarks/gpu_figures.sh OUT [STAGE ...]     STAGE: distill throughput levers finetune phases (default: all)
#
# On the lent GPU machine (../shared/gpu/README.md): carry .gpu-carry and run
#   source .gpu-carry/env.sh && bash benchmarks/gpu_figures.sh $OUT distill throughput
# Each stage writes into OUT: distill.log (a real `deepspeed --num_gpus 1` run: its logged tokens/s and MFU),
# throughput-cached-full_*.{json,md,png} (ours, reference, baseline, ours over the Tagalog vocabulary of `ds-distil vocab`, each
# from a teacher cache too, and the cache's build), throughput-full-levers_* (each lever off in turn),
# finetune_speed-full_* (ours, ours without ZeRO and the reference per model and task), step_phases_* and eval_speed_*
# (where a step's time goes with and without ZeRO; the evaluation pass). Commit the results under benchmarks/results/
# with `python -m benchmarks.report`.
#
# A device call brings back at most 8 files from $OUT: run distill with one or two of the others per call.
# Sizes: seq 128; dBERT Base at micro batch 128 and Tiny at 256 are the targets (Base >= 500k tokens/s and
# >= 30% MFU, ours/reference >= 0.95; Tiny >= 800k tokens/s). The stages are separate so that each fits one device
# call; their run time on an H100/H200 was not measured when this was written (no GPU was lent then).
set -euo pipefail
OUT=${1:?usage: bash benchmarks/gpu_figures.sh OUT [distill|throughput|levers|finetune|phases ...]}
shift
[ $# -gt 0 ] || set -- distill throughput levers finetune phases
mkdir -p "$OUT"
py=${PYTHON:-python3}
data=${DS_DISTIL_DATA:-../shared/data}
shards=${SHARDS:-/tmp/ds-distil-shards-128}

vocab=${VOCAB:-/tmp/ds-distil-vocab-128}
[ -f "$shards/manifest.json" ] || "$py" -m ds_distil prepare --input "$data/corpus/tl_corpus_combined.txt" \
  --tokenizer "$data/mbert_tokenizer" --out "$shards" --seq-len 128 >/dev/null
[ -f "$vocab/vocab_map.json" ] || "$py" -m ds_distil vocab --shards "$shards" --out "$vocab" --report-data none >/dev/null

for stage in "$@"; do
  echo "== $stage ($(date +%T))"
  case $stage in
    distill)
      # the paper's dBERT Base from an mBERT-architecture teacher (random weights: the hub is not reachable there)
      rm -rf /tmp/ds-distil-gpu-run
      deepspeed --num_gpus 1 --module ds_distil distill --config configs/dbert-base.yaml --out /tmp/ds-distil-gpu-run \
        data.shards="$shards" teacher.pretrained=null teacher.preset=mbert train.micro_batch_size=128 train.max_steps="${STEPS:-200}" \
        log.every_steps=25 checkpoint.every_steps=0 checkpoint.export=false 2>&1 | tee "$OUT/distill.log" | grep -E "perf:|step [0-9]+/|error"
      ;;
    throughput)
      "$py" -m benchmarks.throughput --full --vocab "$vocab" --cached --out "$OUT"   # --cached: issue 24's rows, same run
      ;;
    levers)
      "$py" -m benchmarks.throughput --full --levers --methods ours --out "$OUT"
      ;;
    finetune)
      "$py" -m benchmarks.finetune_speed --full --vocab "$vocab" --methods ours,ours-zero0,reference --out "$OUT"
      ;;
    phases)  # issue 27: where ours and the reference spend a step, with ZeRO-2 and without, and the evaluation pass
      "$py" -m benchmarks.step_phases --models dbert-tiny,dbert-base --profile --out "$OUT"
      "$py" -m benchmarks.eval_speed --out "$OUT"
      ;;
    *) echo "gpu_figures.sh: unknown stage '$stage' (distill, throughput, levers, finetune, phases)" >&2; exit 2 ;;
  esac
done

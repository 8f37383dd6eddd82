#!/usr/bin/env bash
# The cache-cpu study's three distillation-side stages, timed back to back on an idle machine: the cache's build, the
# student's 300 steps from it and the same 300 steps with the live teacher (the study's commands, other output dirs):
#
#   bash benchmarks/cache_timing.sh SHARDS TEACHER OUT
#
# SHARDS: the study's shards (runs/cache-cpu/shards/f100); TEACHER: its teacher (runs/objectives-cpu/teacher/student).
# Prints each stage's wall seconds and the machine's load; the runs' logs and outputs stay in OUT.
set -euo pipefail
SHARDS=${1:?usage: bash benchmarks/cache_timing.sh SHARDS TEACHER OUT}
TEACHER=${2:?usage: bash benchmarks/cache_timing.sh SHARDS TEACHER OUT}
OUT=${3:?usage: bash benchmarks/cache_timing.sh SHARDS TEACHER OUT}
py=${PYTHON:-python3}
mkdir -p "$OUT"
rm -rf "$OUT/cache" "$OUT/cached" "$OUT/live"
common=(loss.a_kl=0.5 loss.a_mlm=0.5 loss.temperature=2.0 train.micro_batch_size=32 train.max_steps=300 train.lr=0.001
        train.warmup_ratio=0.06 teacher.dtype=bf16 data.num_workers=1 checkpoint.every_steps=100 log.every_steps=25
        deepspeed.config=ds_configs/zero2-bf16.json student.preset=null student.num_layers=2 student.hidden_size=128
        student.intermediate_size=512 student.num_heads=4 student.max_positions=512 "data.shards=$SHARDS"
        "teacher.pretrained=$TEACHER" data.masking=static data.mask_copies=1)
timed() {
  local name=$1 t0
  shift
  t0=$(date +%s.%N)
  "$@" > "$OUT/$name.log" 2>&1
  echo "$name $(echo "$(date +%s.%N) - $t0" | bc) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
}
echo "start, load $(cut -d' ' -f1-3 /proc/loadavg)"
timed cache "$py" -m ds_distil teacher-cache --out "$OUT/cache" "data.shards=$SHARDS" "teacher.pretrained=$TEACHER" teacher.dtype=bf16 \
  cache.method=sampled cache.k=16 cache.temperature=2.0 data.mask_copies=1 cache.batch_size=64
timed cached "$py" -m ds_distil distill --out "$OUT/cached" "${common[@]}" "teacher.cache=$OUT/cache" teacher.cache_validation=live
timed live "$py" -m ds_distil distill --out "$OUT/live" "${common[@]}"

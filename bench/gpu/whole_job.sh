#!/usr/bin/env bash
# issue 10 on the GPU machine: whole `glance` jobs (encode + train + save) on a full-size random Qwen-Image or
# FLUX.2-klein-9B folder (bench/measure/full_folder.py; FLUX.1-dev: bench/gpu/memory_gpu.sh), one process per memory setting of
# bench/measure/memory_job.py, the bf16 anchor loop after them (Qwen-Image only: anchor_loop.py has no klein model).
#   bash bench/gpu/whole_job.sh qwen nf4-all nf4-all+adamw8bit int8-quanto      (carry .whl)
# The Qwen-Image folder is ~57 GB of the 64 GiB disk: every other bench folder is removed first, and this one at
# the end unless KEEP=1. Estimates (qwen): build ~60 s (random init on the GPU) + save ~60-120 s; per job ~90-150 s
# (load 41 GB + nf4 while loading ~40 s, encode, 6+6 steps at ~2.5 s, save); anchor ~60 s.
set -u
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
family=$1; shift
dir=/tmp/full-$family
for d in /tmp/fluxfull /tmp/te24 /tmp/full-qwen /tmp/full-klein /tmp/memjobs; do [ "$d" = "$dir" ] || rm -rf "$d"; done
df -h /tmp | tail -1
timeout 300 python3 bench/measure/full_folder.py --family "$family" --dir "$dir" 2>&1 | grep '^{' || { rm -rf "$dir"; exit 1; }
python3 bench/measure/memory_job.py --family "$family" --model "$dir" --steps ${STEPS:-6} --job-timeout ${JOB_TIMEOUT:-200} \
  ${ANCHOR:+--anchor $ANCHOR} ${@:+--only "$@"} 2>&1 | grep --line-buffered '^{'
[ -n "${KEEP:-}" ] || rm -rf "$dir"

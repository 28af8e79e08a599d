#!/usr/bin/env bash
# issue 10 on the GPU machine: whole glance jobs on the full-size random FLUX.1-dev pipeline per memory setting,
# with the bf16 anchor loop in the same call. Usage: bash bench/gpu/memory_gpu.sh [config names...] (carry .whl)
set -u
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
t=$SECONDS
[ -f /tmp/fluxfull/model_index.json ] || python3 bench/measure/seed_recipe.py --dir /tmp/fluxfull --build-only 2>&1 | tail -1
echo "{\"build_s\": $((SECONDS-t))}"
python3 bench/measure/memory_job.py --model /tmp/fluxfull --steps ${STEPS:-6} ${ANCHOR:+--anchor $ANCHOR} ${@:+--only "$@"} 2>&1 | grep --line-buffered '^{' 

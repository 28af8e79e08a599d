#!/usr/bin/env bash
# issue 10 on the GPU machine: whole glance jobs on the full-size random FLUX.1-dev pipeline per memory setting,
# with the bf16 anchor loop in the same call. Usage: bash bench/memory_gpu.sh [config names...] (carry .whl)
set -u
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
t=$SECONDS
[ -f /tmp/fluxfull/model_index.json ] || python3 bench/seed_recipe.py --dir /tmp/fluxfull --build-only 2>&1 | tail -1
echo "{\"build_s\": $((SECONDS-t))}"
python3 bench/memory_job.py --model /tmp/fluxfull --steps ${STEPS:-6} ${ANCHOR:+--anchor $ANCHOR} ${@:+--only "$@"} 2>&1 | grep --line-buffered '^{' 

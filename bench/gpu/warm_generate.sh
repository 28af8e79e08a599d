#!/usr/bin/env bash
# `glancetune generate` cold against the same command through a warm `glancetune serve`, whole processes timed from
# outside, in ONE device call (carry .whl; ~6 min): the full-size random FLUX.1-dev folder built on the machine, a
# 2+2-step glance run on it (as speed_gpu.sh sample), then bench/measure/warm_generate.py: cold in-process generate
# (prompt cache warm), the first served generate (the server loads), warm served generates, the naive diffusers
# script; ratios in the last JSON line (also in $OUT/warm_generate.jsonl).
#   run(command="bash bench/gpu/warm_generate.sh", carry=[".whl"])
#   bash bench/gpu/warm_generate.sh --cpu     the same logic on the CPU with a tiny FLUX.1 (~1-2 min; no naive row)
set -u
cd "$(dirname "$0")/../.."
R=${OUT:-/tmp}/warm_generate.jsonl; : > "$R"
if [ "${1:-}" = --cpu ]; then
  export PYTHONPATH=$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  W=/tmp/warm_generate_cpu; rm -rf $W; mkdir -p $W
  export GLANCETUNE_HOME=$W/home
  python -m glancetune tiny flux $W/model > /dev/null || exit 1
  python - <<'PY' || exit 1
from pathlib import Path
from conftest import write_configs
write_configs(Path("/tmp/warm_generate_cpu/job"), "/tmp/warm_generate_cpu/model", resolution=64, steps=2)
PY
  python -m glancetune glance --config $W/job/config/glance.json > $W/glance.log 2>&1 || { tail -5 $W/glance.log; exit 1; }
  python bench/measure/warm_generate.py --run $W/job/output --device cpu --repeats ${REPEATS:-2} --work $W/gen 2>&1 |
    tee -a "$R"
  exit
fi
source bench/gpu/gpu_env.sh
python3 -c "import fastapi, uvicorn" 2>/dev/null || {  # `serve` needs the [server] extra on the device
  echo '{"failed": "fastapi/uvicorn not importable on the device: add their wheels (fastapi, starlette, uvicorn, h11, anyio, click, python-multipart) to .whl"}'
  exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
[ -f /tmp/fluxfull/model_index.json ] || python3 bench/measure/seed_recipe.py --dir /tmp/fluxfull --build-only 2>&1 | tail -1
[ -f /tmp/sp/bf16/out/slow/pytorch_lora_weights.safetensors ] ||
  python3 bench/measure/memory_job.py --model /tmp/fluxfull --steps 2 --only bf16 --anchor 0 --work /tmp/sp 2>&1 | grep '^{'
timeout ${LIMIT:-420} python3 bench/measure/warm_generate.py --run /tmp/sp/bf16/out --model /tmp/fluxfull --naive \
  --repeats ${REPEATS:-3} 2>&1 | grep --line-buffered -v '^$' | tee -a "$R"

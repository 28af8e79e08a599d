#!/usr/bin/env bash
# The fast sampler on a full-size random FLUX.1-dev (1024², no quality claim possible): what search-ladder and a
# distill job cost, each beside the plain job in the same call. Carry .whl6 (diffusers, pydantic, bitsandbytes):
#   run(carry=[".whl6"], command="rm -rf .whl && mv .whl6 .whl && OUT=$OUT bash bench/gpu/fast_sampler_gpu.sh")
# 1. search-ladder, 10 steps, 1 prompt x 1 seed, FINE fine steps (default 20): transformer passes and seconds (the
#    passes scale with prompts x seeds: 8 prompts = 8x);
# 2. whole glance jobs (bench/measure/memory_job.py, gc on, rank 32, STEPS steps): distill (caption + 1 prompt,
#    teacher 2 x 40 steps) in bf16 and in the 24 GB setting (nf4-bnb base and T5, adamw8bit), and the plain
#    (flow) job in the 24 GB setting: wall time, teacher passes and seconds, peak memory per stage, s/step.
set -u
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
OUTDIR=${OUT:-/tmp/fs_out}
mkdir -p "$OUTDIR"
t=$SECONDS
[ -f /tmp/fluxfull/model_index.json ] || python3 bench/measure/seed_recipe.py --dir /tmp/fluxfull --build-only 2>&1 | tail -1
echo "{\"build_s\": $((SECONDS-t))}"
echo '{"p0": "a red fox in the snow"}' > /tmp/one_prompt.json
t=$SECONDS
timeout 150 python3 -m glancetune search-ladder --model /tmp/fluxfull --steps 10 --width 1024 --height 1024 \
  --prompts /tmp/one_prompt.json --seeds 1 --fine-steps "${FINE:-16}" --output "$OUTDIR/ladder-flux1-1024.json" 2>&1 \
  | grep -v "call/s" | tail -3
echo "{\"search_s\": $((SECONDS-t))}"
python3 bench/measure/memory_job.py --model /tmp/fluxfull --steps "${STEPS:-4}" --job-timeout 200 --anchor 0 \
  --out "$OUTDIR" --only ${JOBS:-distill-bf16 distill-nf4-all+adamw8bit nf4-all+adamw8bit} 2>&1 | grep --line-buffered '^{'
nvidia-smi --query-gpu=name --format=csv,noheader
echo "{\"total_s\": $SECONDS}"

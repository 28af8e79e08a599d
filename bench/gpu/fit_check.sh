#!/usr/bin/env bash
# The memory estimate against measured peaks, in ONE device call (carry .whl; ~9 min): bench/measure/fit_check.py runs
# glancetune's training step (bench/measure/train_step.py, 1 warm-up + 2 timed steps) on full-size random FLUX.1-dev,
# Qwen-Image and FLUX.2-klein-9B with nine settings the estimate was not fitted to (other ranks, resolutions, both
# phases, no checkpointing, the unsloth backend on Qwen-Image) and prints estimate / measured per setting.
# Each run ~40-90 s (build, quantize, 3 steps); the order alternates families so a short call still covers three.
# Usage: bash bench/gpu/fit_check.sh   (BUDGET seconds for all runs, default 540)
set -u
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
out=${OUT:-/tmp/fit_check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 bench/measure/fit_check.py --budget "${BUDGET:-540}" | tee "$out/fit_check.jsonl"

#!/usr/bin/env bash
# base_model_precision on the full-size FLUX.1-dev architecture (random weights, 1024², rank 32, gc on): our step
# with an int8-quanto base vs the bf16 plain diffusers+peft anchor, in one call. Prints the JSON lines.
set -u
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
timeout 150 python3 bench/measure/anchor_loop.py --model flux1 --gc 1 --steps 6 2>&1 | grep '^{'
timeout 200 python3 bench/measure/train_step.py --gc 1 --steps 6 --warmup 2 --precision int8-quanto 2>&1 | grep -E '^\{|after quantize|Error|error' | tail -4

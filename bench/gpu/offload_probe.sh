#!/usr/bin/env bash
# issue 10 feasibility on the GPU machine: quantization backends and group offload under a LoRA training step.
set -u
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
timeout 400 python3 bench/measure/offload_probe.py 2>&1 | grep -vE "W1202|register_constant" | tail -40

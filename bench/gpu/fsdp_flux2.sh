#!/usr/bin/env bash
# issue 15, FSDP2 on the full-size FLUX.2-dev architecture (32.2B transformer, random bf16; bench/measure/fsdp_flux2.py):
#   run(kind="nvidia-h200-x2", carry=[".whl"], command="bash bench/gpu/fsdp_flux2.sh")     (<= 10 min; NPROC=GPUs)
# One-image `train` at 1024², rank 32, gc on, 6 steps: `glancetune cache` once, then (SINGLE=1, the default) one
# process on one GPU, then FSDP2 through accelerate on NPROC GPUs; for each the job's own lines (peak GPU memory
# of the main process per phase, s/step, times), then the FSDP LoRA loaded with stock diffusers
# (`Flux2Pipeline.load_lora_weights`) and its largest difference from the single-GPU LoRA. On the single-GPU kind
# it runs too (NPROC=1: FSDP2 with one process, as bench/gpu/fsdp_smoke.sh). The 60 GiB folder goes to /tmp when the
# disk has room, else /dev/shm, and is removed at the end (KEEP=1 keeps it).
set -u
cd "$(dirname "$0")/../.."
. bench/gpu/multi_env.sh
W=${W:-/tmp/fsdp_flux2}
free=$(df -BG --output=avail /tmp | tail -1 | tr -dc 0-9)
DIR=/tmp/f2; [ "$free" -ge 70 ] || DIR=/dev/shm/f2
rm -rf "$W"; mkdir -p "$W"
python3 bench/measure/fsdp_flux2.py --build "$DIR" 2> "$W/build.err" | grep '^{' || { tail -5 "$W/build.err"; exit 1; }
CFG=$(python3 bench/measure/fsdp_flux2.py --config "$DIR" --out "$W" --steps "${STEPS:-6}")
lines() { grep --line-buffered -E "peak GPU memory|trained [0-9]+ step|^time:|^error|Error" | cut -c1-400; }
t=$SECONDS; python3 -m glancetune cache --config "$CFG" 2>&1 | tail -2; echo "{\"cache_s\": $((SECONDS - t))}"
if [ "${SINGLE:-1}" = 1 ]; then
  echo "== one process, one GPU"; t=$SECONDS
  timeout 200 python3 -m glancetune train --config "$CFG" output_dir="$W/single" 2>&1 | lines
  echo "{\"single_wall_s\": $((SECONDS - t))}"
fi
echo "== FSDP2, $NPROC process(es)"; t=$SECONDS
timeout 300 python3 -m accelerate.commands.launch --use_fsdp --fsdp_version 2 \
  --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_reshard_after_forward true --num_machines 1 \
  --num_processes "$NPROC" --mixed_precision bf16 --dynamo_backend no \
  -m glancetune train --config "$CFG" output_dir="$W/fsdp" 2>&1 | lines
echo "{\"fsdp_wall_s\": $((SECONDS - t)), \"nproc\": $NPROC}"
timeout 150 python3 - "$DIR" "$W" <<'PY'
import json, sys, torch
from pathlib import Path
from safetensors.torch import load_file
model, w = sys.argv[1], Path(sys.argv[2])
out = {}
f = load_file(str(w / "fsdp" / "pytorch_lora_weights.safetensors"))
if (w / "single" / "pytorch_lora_weights.safetensors").exists():
    s = load_file(str(w / "single" / "pytorch_lora_weights.safetensors"))
    out["fsdp_vs_single_max_abs"] = max((s[k].float() - f[k].float()).abs().max().item() for k in s)
    out["max_weight"] = max(v.float().abs().max().item() for v in s.values())
from diffusers import Flux2Pipeline
pipe = Flux2Pipeline.from_pretrained(model, dtype=torch.bfloat16)
pipe.load_lora_weights(str(w / "fsdp"))
out["stock_load_lora_layers"] = sum(1 for n, _ in pipe.transformer.named_modules() if n.endswith("lora_A"))
out["lora_tensors"] = len(f)
print(json.dumps(out))
PY
[ -n "${KEEP:-}" ] || rm -rf "$DIR"

#!/usr/bin/env bash
# FSDP2 through accelerate on the GPU machine, one process (the multi-GPU kinds are withheld): the same code path
# a sharded run takes (fully_shard, DTensor LoRA weights, optimizers re-pointed, LoRA gathered whole for saving,
# per-process optimizer shards in checkpoints). Compares with the plain single-GPU run, resumes a killed FSDP run,
# loads the result with stock diffusers. Run from the repository root: run(command="bash bench/gpu/fsdp_smoke.sh",
# carry=[".whl"]). Prints one JSON line at the end.
set -u
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests PYTHONUNBUFFERED=1 GLANCETUNE_HOME=/tmp/gt HF_HUB_OFFLINE=1
W=/tmp/fsdp_smoke; rm -rf $W; mkdir -p $W
python3 -m glancetune tiny flux $W/model > /dev/null || exit 1
python3 - <<'PY' || exit 1
from pathlib import Path
from conftest import write_configs
write_configs(Path("/tmp/fsdp_smoke/run"), "/tmp/fsdp_smoke/model", resolution=256, steps=8,
              **{"--checkpointing_steps": 3, "--lora_rank": 8})
PY
CFG=$W/run/config/glance.json
FSDP="--use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_reshard_after_forward true"
L="python3 -m accelerate.commands.launch --num_machines 1 --num_processes 1 --mixed_precision bf16 --dynamo_backend no"
echo "== single GPU"; python3 -m glancetune glance --config $CFG output_dir=$W/single 2>&1 | tail -3
echo "== FSDP2"; $L $FSDP -m glancetune glance --config $CFG output_dir=$W/fsdp 2>&1 | tail -5
echo "== FSDP2 killed at step 5"; $L $FSDP tests/kill_driver.py kill-step 5 -- glance --config $CFG output_dir=$W/fsdp_resumed 2>&1 | tail -2
ls $W/fsdp_resumed
echo "== FSDP2 resumed"; $L $FSDP -m glancetune glance --config $CFG output_dir=$W/fsdp_resumed 2>&1 | tail -4
python3 - <<'PY'
import json, torch
from safetensors.torch import load_file
W = "/tmp/fsdp_smoke"
def lo(d): return {r: load_file(f"{W}/{d}/{r}/pytorch_lora_weights.safetensors") for r in ("slow", "fast")}
out = {}
try:
    s, f, r = lo("single"), lo("fsdp"), lo("fsdp_resumed")
    out["fsdp_vs_single_max_abs"] = max((s[p][k] - f[p][k]).abs().max().item() for p in s for k in s[p])
    out["fsdp_vs_single_max_weight"] = max(s[p][k].abs().max().item() for p in s for k in s[p])
    out["resumed_equal_uninterrupted"] = all(torch.equal(f[p][k], r[p][k]) for p in f for k in f[p])
    out["resumed_vs_uninterrupted_max_abs"] = max((f[p][k] - r[p][k]).abs().max().item() for p in f for k in f[p])
    from diffusers import FluxPipeline
    pipe = FluxPipeline.from_pretrained(f"{W}/model")
    pipe.load_lora_weights(f"{W}/fsdp/slow", adapter_name="slow")
    out["stock_load_ok"] = "slow" in pipe.transformer.peft_config
    st = torch.load(f"{W}/fsdp/checkpoint-6/training_state.pt", weights_only=False)
    out["checkpoint_phases"] = sorted(st["ranks"][0])
    out["layout"] = json.load(open(f"{W}/fsdp/checkpoint-6/checkpoint.json"))["layout"]
    out["sharded_optimizer_state"] = type(st["ranks"][0]["slow"]["optimizer"]["state"][0]["exp_avg"]).__name__
    log = [json.loads(l) for l in open(f"{W}/fsdp/train_log.jsonl")]
    out["fsdp_last_losses"] = [round(x["loss"], 4) for x in log[-2:]]
except Exception as e:  # noqa: BLE001
    out["error"] = repr(e)
print(json.dumps(out))
PY

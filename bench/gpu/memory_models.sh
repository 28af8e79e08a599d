#!/usr/bin/env bash
# issue 10 on the GPU machine, in ONE device call (carry .whl; <= 9 min): peak memory and s/step of glancetune's
# transformer-only LoRA step (bench/measure/train_step.py: 1024², rank 32, batch 1, one phase, gc on) with quantized bases on
# the full-size random Qwen-Image (20.4B), FLUX.2-klein-9B and FLUX.2-dev (32B), and the bf16 plain diffusers+peft
# anchor (bench/measure/anchor_loop.py) on Qwen-Image. Issue 10 targets (whole job): Qwen-Image <= 20 GiB, klein-9B <= 14 GiB,
# FLUX.2-dev <= 24 GiB. JSON lines on stdout, also appended to $OUT/models.jsonl; each run's full log in $OUT/*.log
# (a failed run prints its last lines). Read peak_train_gib (the timed steps); peak_warmup_gib includes the bf16 build.
# Each run has its own timeout, cut to what is left of the call's budget (BUDGET seconds from the start, default
# 530), so the call ends before 9 minutes whatever happens.
#
# Estimates per run on one H200 (imports ~15 s each; a random bf16 build on the GPU ~10-30 s for 32B; quanto
# quantization ~30-60 s for 32B; eval_before = one no-grad forward of 5 samples; then 2 warm-up + 4 timed steps):
#   anchor qwen bf16 gc          ~50 s   build ~10 s, 3+4 train steps ~1.5 s, 2+4 forwards ~0.5 s     (limit 75)
#   qwen int8-quanto gc          ~80 s   build ~10 s, quantize ~20 s, steps ~2-4 s                      (limit 120)
#   flux2-klein-9b int8-quanto   ~50 s   build ~5 s, quantize ~10 s, steps ~1-2 s                       (limit 75)
#   flux2-dev int8-quanto gc     ~120 s  build ~20 s (64 GB bf16 fits before quantizing), quantize ~45 s, steps ~4-6 s
#                                                                                                         (limit 130)
#   flux2-dev int4-quanto gc     ~130 s  as int8; int4 packing and kernels may be slower                  (limit 130)
# Usage: bash bench/gpu/memory_models.sh   (SET=offload: the enable_group_offload runs instead; SET=nf4: nf4-bnb; SET=nf4split)
set -u
cd "$(dirname "$0")/../.."
end=$((SECONDS + ${BUDGET:-530}))
source bench/gpu/gpu_env.sh
out=${OUT:-/tmp/memory_models}
mkdir -p "$out"
n=0

run() {  # run NAME LIMIT_S script args...: its JSON lines to stdout and models.jsonl, its whole output to NAME.log
  local name=$1 limit=$2 left=$((end - SECONDS - 5))
  shift 2
  n=$((n + 1))
  ((left < limit)) && limit=$left
  if ((limit < 20)); then
    echo "{\"run\": \"$name\", \"skipped\": \"time budget spent\"}" | tee -a "$out/models.jsonl"
    return
  fi
  timeout "$limit" python3 "$@" 2>&1 | tee "$out/$n-$name.log" | grep --line-buffered '^{' | tee -a "$out/models.jsonl"
  local rc=${PIPESTATUS[0]}
  if ((rc != 0)); then
    echo "{\"run\": \"$name\", \"rc\": $rc, \"limit_s\": $limit}" | tee -a "$out/models.jsonl"
    tail -n 4 "$out/$n-$name.log" | cut -c1-300
  fi
}

step="bench/measure/train_step.py --gc 1 --warmup 2 --steps 4"
case "${SET:-quant}" in
  quant)  # session 10: 300 s
    run anchor-qwen-bf16 75 bench/measure/anchor_loop.py --model qwen --gc 1 --steps 4
    run qwen-int8 120 $step --model qwen --precision int8-quanto
    run klein9b-int8 75 $step --model flux2-klein-9b --precision int8-quanto
    run flux2dev-int8 130 $step --model flux2-dev --precision int8-quanto
    run flux2dev-int4 130 $step --model flux2-dev --precision int4-quanto
    ;;
  offload)  # block-level group offload of the trained transformer (enable_group_offload), int8 and bf16 bases
    # (int8-torchao: quanto weights cannot pass the hooks in training, refused by glancetune); blocks cross PCIe in
    # forward and again in the checkpoint recomputation: est. ~3-8 s/step for 32B
    step="bench/measure/train_step.py --gc 1 --warmup 1 --steps 3 --group-offload"
    run qwen-int8-offload 120 $step --model qwen --precision int8-torchao
    run flux2dev-int8-offload 150 $step --model flux2-dev --precision int8-torchao
    run flux2dev-bf16-offload 150 $step --model flux2-dev
    run klein9b-bf16-offload 90 $step --model flux2-klein-9b
    ;;
  nf4)  # nf4-bnb through diffusers' bitsandbytes quantizer (train_step.py: the calls from_pretrained makes, over
    # the random weights): the 4-bit candidate for Qwen-Image <= 20 GiB and FLUX.2-dev <= 24 GiB (int4-quanto: 42.8 s/step)
    run qwen-nf4 100 $step --model qwen --precision nf4-bnb
    run flux2dev-nf4 130 $step --model flux2-dev --precision nf4-bnb
    ;;
  nf4split)  # FLUX.2-dev nf4 (27.36 GiB in session 11): what the 10.5 GiB above the weights is (resident_gib:
    # weights + LoRA + optimizer states after warm-up) with the 8-bit AdamW, then also TREAD 0.5 over blocks 2..-2
    # (half the image tokens' activations in 52 of 56 blocks), then gradient_checkpointing_backend unsloth instead
    # (the 56 block inputs, ~3.2 GB at 4608 tokens x 6144, in pinned CPU memory): the candidates for <= 24 GiB
    run flux2dev-nf4-adamw8bit 140 $step --model flux2-dev --precision nf4-bnb --optimizer adamw8bit
    run flux2dev-nf4-adamw8bit-tread 140 $step --model flux2-dev --precision nf4-bnb --optimizer adamw8bit --tread 0.5
    run flux2dev-nf4-adamw8bit-unsloth 140 $step --model flux2-dev --precision nf4-bnb --optimizer adamw8bit \
      --gc-backend unsloth
    ;;
esac
echo "{\"memory_models_s\": $SECONDS}"

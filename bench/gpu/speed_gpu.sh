#!/usr/bin/env bash
# issue 12 on the GPU machine, one call per table (carry .whl):
#   bash bench/gpu/speed_gpu.sh train    anchor loop vs our step, gc on, without and with TREAD (0.5, blocks 2..-2) (~4 min)
#   bash bench/gpu/speed_gpu.sh sample   full-size random FLUX.1-dev pipeline + a 2+2-step glance run, then
#                                    bench/measure/sample_speed.py: warm image unfused vs fused, cold generate with a cold and
#                                    a warm prompt cache, the naive diffusers anchor as a process (~6 min)
#   bash bench/gpu/speed_gpu.sh load     stock from_pretrained + .to(cuda) vs device_map="cuda" on the full-size folder,
#                                    with and without the text encoders (bench/measure/load_speed.py) (~4 min)
#   bash bench/gpu/speed_gpu.sh tread2   FLUX.2-klein-9B and Qwen-Image steps gc on, without and with TREAD 0.5 over
#                                    blocks 2..-2 (~5 min)
#   bash bench/gpu/speed_gpu.sh qwen     Qwen-Image step: caption mask kept / dropped (training_text), TREAD, compile,
#                                    and a torch.profiler split of device-busy vs wall time (~7 min)
#   bash bench/gpu/speed_gpu.sh attention  FLUX.1-dev and Qwen-Image steps with diffusers' _native_flash / _native_efficient
#                                    attention backends against native SDPA (~6 min)
#   bash bench/gpu/speed_gpu.sh gc       our step: gc off / every block / interval 2, 4 / unsloth backend (~4 min)
#   bash bench/gpu/speed_gpu.sh cudagraphs  our step compiled with torch.compile's default / reduce-overhead (CUDA graphs)
#                                    / max-autotune-no-cudagraphs modes, gc on (~5 min; GCS="1 0" adds gc off)
#   bash bench/gpu/speed_gpu.sh fp8      our step gc on: bf16 vs torchao float8 matmuls, eager and compiled (~6 min)
#   bash bench/gpu/speed_gpu.sh compile  our step gc on without compile, with compile cold, with compile and inductor's
#                                    caches warm (a second process): compile cost and pay-off; then compile with
#                                    TREAD 0.5 (~6 min)
set -u
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
logs=/tmp/speed_logs; mkdir -p $logs; n=0

step() {  # step LIMIT_S train_step.py args...: its JSON lines; a failed run's log goes to $OUT and its tail is printed
  local limit=$1; shift; n=$((n + 1))
  timeout $limit python3 bench/measure/train_step.py "$@" > $logs/$n.log 2>&1
  local rc=$?
  grep '^{' $logs/$n.log
  if [ $rc != 0 ]; then
    echo "{\"failed\": \"train_step.py $*\", \"rc\": $rc, \"log\": \"step-$n.log\"}"
    tail -n 8 $logs/$n.log
    [ -n "${OUT:-}" ] && cp $logs/$n.log "$OUT/step-$n.log"
  fi
}
case "${1:-train}" in
  train)
    timeout 150 python3 bench/measure/anchor_loop.py --model flux1 --gc 1 --steps 6 2>&1 | grep --line-buffered '^{'
    step 200 --gc 1 --steps 6 --warmup 2
    step 200 --gc 1 --steps 6 --warmup 2 --tread 0.5
    ;;
  tread2)  # TREAD on FLUX.2-klein-9B (its single blocks take one [text | image] sequence) and Qwen-Image, gc on,
    # without / with
    for m in ${MODELS:-flux2-klein-9b qwen}; do
      for t in 0 0.5; do
        step 150 --model $m --gc 1 --steps 6 --warmup 2 --tread $t
      done
    done
    ;;
  qwen)  # Qwen-Image's step (session 13: TREAD 0.5 gained nothing, 1.53 -> 1.62 s/step): the caption mask as cached
    # (--keep-mask, glancetune before session 13) against the job's now (a mask of ones dropped, as the pipeline does:
    # SDPA's flash kernel instead of the masked one), TREAD and compile on top; then both mask forms under
    # torch.profiler: device-busy s/step against the wall s/step (launch-bound or not), top kernels to $OUT (~7 min)
    for flags in "--keep-mask" "" "--tread 0.5" "--keep-mask --tread 0.5" "--compile"; do
      step 200 --model qwen --gc 1 --steps 6 --warmup 2 $flags
    done
    step 150 --model qwen --gc 1 --steps 3 --warmup 2 --keep-mask --profile "${OUT:-/tmp}/qwen-profile-mask.txt"
    step 150 --model qwen --gc 1 --steps 3 --warmup 2 --profile "${OUT:-/tmp}/qwen-profile-nomask.txt"
    # FLUX.1-dev for comparison (where its step goes: device-busy vs wall; ~800 LoRA layers' small kernels)
    step 150 --gc 1 --steps 3 --warmup 2 --profile "${OUT:-/tmp}/flux1-profile.txt"
    ;;
  attention)  # diffusers' attention dispatcher backends against the native SDPA the job uses (no flash-attn /
    # sageattention packages on the machine: torch's own kernels), FLUX.1-dev and Qwen-Image, gc on (~6 min); a
    # failed backend prints its log tail
    for m in flux1 qwen; do
      for b in "" _native_flash _native_efficient; do
        step 150 --model $m --gc 1 --steps 6 --warmup 2 ${b:+--attention-backend $b}
      done
    done
    ;;
  gc)  # the memory/speed curve of gradient checkpointing: off, every block, every 2nd / 4th block
    # (gradient_checkpointing_interval), every block with its inputs in CPU memory (gradient_checkpointing_backend
    # unsloth); FLUX.1-dev full size
    for flags in "--gc 0" "--gc 1" "--gc 1 --gc-interval 2" "--gc 1 --gc-interval 4" "--gc 1 --gc-backend unsloth"; do
      step 100 --steps 6 --warmup 2 $flags
    done
    ;;
  cudagraphs)  # torch.compile modes for the regional compile, FLUX.1-dev gc on and off, one adapter: default,
    # reduce-overhead (CUDA graphs of each block: one-image Glance runs have static shapes), and (GCS="1 0": gc off too)
    # max-autotune-no-cudagraphs; cold inductor caches each (a fresh folder per run), read s/step and to_steady_s
    for gc in ${GCS:-1}; do
      for mode in default reduce-overhead max-autotune-no-cudagraphs; do
        export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-$mode-$gc
        flag=; [ $mode = default ] || flag="--compile-mode $mode"
        step 200 --gc $gc --steps 6 --warmup 2 --compile $flag
      done
    done
    ;;
  fp8)  # torchao float8 training matmuls on the frozen base (bench/measure/train_step.py --fp8): its backward also computes
    # the (unused) weight gradient, so measure before building; eager and with regional compile (casts fused), gc on
    for flags in "" "--fp8" "--compile" "--compile --fp8"; do
      step 140 --gc 1 --steps 6 --warmup 2 $flags
    done
    ;;
  compile)  # is regional compile worth a default? its cost cold, then with inductor's on-disk caches warm (a second
    # process, same TORCHINDUCTOR_CACHE_DIR), against no compile; read to_steady_s (eval + warm-up steps) and s/step;
    # PHASES=2: both adapters interleaved as a glance job (does switching the adapter recompile?)
    export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
    rm -rf "$TORCHINDUCTOR_CACHE_DIR"
    for run in ${RUNS:-nocompile compile-cold compile-warm compile-tread}; do
      flag=--compile; [ $run = nocompile ] && flag=
      [ $run = compile-tread ] && flag="--compile --tread 0.5"
      echo "{\"run\": \"$run\"}"
      step ${LIMIT:-200} --gc 1 --steps 6 --warmup 2 --phases ${PHASES:-1} $flag
    done
    ;;
  load)  # stock diffusers: from_pretrained + .to(cuda) vs device_map="cuda", fresh processes, alternating, twice each
    [ -f /tmp/fluxfull/model_index.json ] || python3 bench/measure/seed_recipe.py --dir /tmp/fluxfull --build-only 2>&1 | tail -1
    for i in 1 2; do
      for way in to device_map; do
        timeout 120 python3 bench/measure/load_speed.py --model /tmp/fluxfull --way $way --skip-encoders 2>&1 | grep '^{'
        timeout 150 python3 bench/measure/load_speed.py --model /tmp/fluxfull --way $way 2>&1 | grep '^{'
      done
    done
    ;;
  sample)
    [ -f /tmp/fluxfull/model_index.json ] || python3 bench/measure/seed_recipe.py --dir /tmp/fluxfull --build-only 2>&1 | tail -1
    python3 bench/measure/memory_job.py --model /tmp/fluxfull --steps 2 --only bf16 --anchor 0 --work /tmp/sp 2>&1 | grep --line-buffered '^{'
    # SAMPLE_ARGS="--fp8 --warm-only": the compiled fp8-matmul warm image too, without the cold processes. Lines also
    # go to $OUT/sample.jsonl as they come (session 14 lost a timed-out call's lines behind a `| tail`)
    timeout ${LIMIT:-400} python3 bench/measure/sample_speed.py --run /tmp/sp/bf16/out --model /tmp/fluxfull ${SAMPLE_ARGS:-} 2>&1 |
      grep --line-buffered '^{' | tee -a "${OUT:-/tmp}/sample.jsonl"
    ;;
esac

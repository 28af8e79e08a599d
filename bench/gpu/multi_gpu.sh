#!/usr/bin/env bash
# issue 15 on a multi-GPU machine, one call per table (carry .whl), with the full-size random FLUX.1-dev folder:
#   run(kind="nvidia-h200-x2", carry=[".whl"], command="bash bench/gpu/multi_gpu.sh ddp")      ~6 min
#   run(kind="nvidia-h200-x2", carry=[".whl"], command="bash bench/gpu/multi_gpu.sh phases")   ~6 min
# ddp: 1 process at train_batch_size NPROC against NPROC processes at 1 (samples/s, speed-up, loss curves);
# phases: the whole glance job, 1 process against parallel_phases on 2 (wall ratio, LoRA difference); see
# bench/measure/multi_gpu.py. NPROC defaults to the GPUs present (1 on the single-GPU kind: the script still runs there,
# the "many" side is then one process too; phases needs 2 GPUs). NVLink multicast stays off (the device's KINDS.md says why).
set -u
cd "$(dirname "$0")/../.."
. bench/gpu/multi_env.sh
t=$SECONDS
[ -f /tmp/fluxfull/model_index.json ] || python3 bench/measure/seed_recipe.py --dir /tmp/fluxfull --build-only 2>&1 | tail -1
echo "{\"build_s\": $((SECONDS - t)), \"nproc\": $NPROC}"
python3 bench/measure/multi_gpu.py --model /tmp/fluxfull --what "${1:-ddp}" --nproc "$NPROC" --steps "${STEPS:-12}" \
  --images "${IMAGES:-8}" --timeout "${RUN_TIMEOUT:-200}"

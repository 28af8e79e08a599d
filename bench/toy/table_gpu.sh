#!/usr/bin/env bash
# The fast-sampler table on GPU-trained toys, in one device call (carry .whl: diffusers, pydantic, pytorch-msssim,
# PyWavelets):
#   OUT=... bash bench/toy/table_gpu.sh all      train the three toys side by side (scenes: bench/toy/scenes.py, SD3
#                                                layout, true CFG; centre and quadrant: bench/toy/toy_model.py, FLUX.1
#                                                layout), then the three tables (glance_table.py) side by side: each
#                                                search and each variant x training seed is its own process (the small
#                                                models leave the GPU mostly idle); starts no job after DEADLINE s,
#                                                stops all at STOP s; returns results-TOY.tgz
#   OUT=... bash bench/toy/table_gpu.sh scenes   the scenes toy and its table only
# env: BASE_SECONDS (fmnist toys' training, 150), SCENES_SECONDS (200), DEADLINE (470), STOP (560), GUIDANCE (scenes:
# 3), SEEDS ("0 1"), TOY_ARGS (e.g. "--vae-steps 600": the VAE fit is ~0.1 s/step on an H100). On a CPU (a rehearsal): DEVICE=cpu SKIP_WHEELS=1 TOY_ARGS=--smoke TABLE_ARGS="--max-prompts 2".
set -u
cd "$(dirname "$0")/../.."
[ -n "${SKIP_WHEELS:-}" ] || source bench/gpu/gpu_env.sh
export PYTHONPATH=${PYTHONPATH:-$PWD/src} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GLANCETUNE_HOME=/tmp/gt_home
DEVICE=${DEVICE:-cuda}
OUTDIR=${OUT:-/tmp/table_out}
LOGS=/tmp/table_logs
mkdir -p "$OUTDIR" $LOGS
start=$(date +%s)
train() {  # $1: toy name
  case $1 in
  scenes) timeout $((start + ${DEADLINE:-470} - $(date +%s))) \
          python3 bench/toy/scenes.py --out /tmp/toy-scenes --device $DEVICE ${TOY_ARGS:-} \
            --base-seconds "${SCENES_SECONDS:-200}" ;;
  *) timeout $((start + ${DEADLINE:-470} - $(date +%s))) \
       python3 bench/toy/toy_model.py --out /tmp/toy-$1 --device $DEVICE --layout $1 ${TOY_ARGS:-} \
       --base-seconds "${BASE_SECONDS:-150}" ;;
  esac > "$LOGS/train-$1.log" 2>&1 || { echo "toy $1 failed:"; tail -20 "$LOGS/train-$1.log"; return 1; }
  grep '^{' "$LOGS/train-$1.log" | tail -1
}
table() {  # $1: toy name; the searches first, then every variant of that length x seed in parallel
  local toy=$1 T=/tmp/toy-$1 R=/tmp/table-$1 g=() v10="distill-searched-10 paper-10 distill-glance-10"
  [ "$toy" = scenes ] && { g=(--guidance "${GUIDANCE:-3}"); v10="$v10 distill-cfgslow-10 distill-cfgboth-10"; }
  local end=$((start + ${DEADLINE:-470}))
  tab() {  # $1: seeds, then the parts to run
    local seeds=$1; shift
    timeout $((start + ${STOP:-560} - $(date +%s))) python3 bench/toy/glance_table.py run --toy $T --out $R \
      --device $DEVICE "${g[@]}" --deadline $end --seeds $seeds ${TABLE_ARGS:-} --only "$@" \
      >> "$LOGS/table-$toy.log" 2>&1; }
  (tab 0 search-10 && { for v in $v10; do for s in ${SEEDS:-0 1}; do tab $s $v & done; done; wait; }) &
  (tab 0 search-6 && { for s in ${SEEDS:-0 1}; do tab $s distill-searched-6 & done; wait; }) &
  wait
  cp $T/toy_report.json $R/ 2>/dev/null
  cp $LOGS/*-$toy.log $R/ 2>/dev/null
  (cd $R && tar -czf "$OUTDIR/results-$toy.tgz" results.jsonl toy_report.json ladder-*.json eval_prompts.json \
     *.log $(ls -d */eval.md 2>/dev/null))
  echo "table $toy: $(grep -c '"event": "eval"' $R/results.jsonl 2>/dev/null) evals"
}
both() { train $1 && table $1; }
case "${1:-}" in
all) for t in scenes centre quadrant; do both $t & done; wait ;;
scenes) both scenes ;;
*) echo "usage: table_gpu.sh all|scenes"; exit 2 ;;
esac
ls -la "$OUTDIR"
echo "{\"total_s\": $(( $(date +%s) - start ))}"

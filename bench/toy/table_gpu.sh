#!/usr/bin/env bash
# The fast-sampler table's GPU part, one device call each (carry .whl: diffusers, pydantic, pytorch-msssim, PyWavelets):
#   OUT=... bash bench/toy/table_gpu.sh fmnist   train the two Fashion-MNIST toys (centre, quadrant) side by side and
#                                                return them in <16 MiB parts (cat toy-NAME.tgz.* | tar -xz -C DIR); their
#                                                table then runs on a CPU: bench/toy/glance_table.py run --device cpu
#   OUT=... bash bench/toy/table_gpu.sh scenes   train the scenes toy (bench/toy/scenes.py, SD3 layout, true CFG), then
#                                                its table (glance_table.py) with the searches and variants in parallel
#                                                processes; starts no job after DEADLINE s, stops all at STOP s;
#                                                returns results.tgz
#   OUT=... bash bench/toy/table_gpu.sh all      both at once on one GPU (the small models leave it mostly idle): the
#                                                three toys train side by side, then the scenes table runs
# env: BASE_SECONDS (fmnist 150), SCENES_SECONDS (200), DEADLINE (470), STOP (560), GUIDANCE (scenes: 3), SEEDS ("0 1")
set -u
cd "$(dirname "$0")/../.."
[ -n "${SKIP_WHEELS:-}" ] || source bench/gpu/gpu_env.sh
export PYTHONPATH=${PYTHONPATH:-$PWD/src} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GLANCETUNE_HOME=/tmp/gt_home
DEVICE=${DEVICE:-cuda}
OUTDIR=${OUT:-/tmp/table_out}
mkdir -p "$OUTDIR"
start=$(date +%s)
LOGS=/tmp/table_logs
mkdir -p $LOGS
fmnist_train() {
  for layout in centre quadrant; do
    python3 bench/toy/toy_model.py --out /tmp/toy-$layout --device $DEVICE --layout $layout ${TOY_ARGS:-} \
      --base-seconds "${BASE_SECONDS:-150}" > "$LOGS/toy-$layout.log" 2>&1 &
  done
  wait
}
fmnist_pack() {
  for layout in centre quadrant; do
    grep '^{' "$LOGS/toy-$layout.log" | tail -1
    tar -czf /tmp/toy-$layout.tgz -C /tmp/toy-$layout model judge.pt data config prompts.json labels.json toy_report.json
    (cd "$OUTDIR" && split -b 15M /tmp/toy-$layout.tgz toy-$layout.tgz.)
  done
}
scenes() {
  T=/tmp/toy-scenes R=/tmp/table-scenes
  python3 bench/toy/scenes.py --out $T --device $DEVICE ${TOY_ARGS:-} --base-seconds "${SCENES_SECONDS:-200}" \
    > "$LOGS/scenes.log" 2>&1 || { tail -20 "$LOGS/scenes.log"; return 1; }
  grep '^{' "$LOGS/scenes.log" | tail -1
  end=$((start + ${DEADLINE:-470}))
  tab() {  # $1: seeds, then the parts to run
    local seeds=$1; shift
    timeout $((start + ${STOP:-560} - $(date +%s))) python3 bench/toy/glance_table.py run --toy $T --out $R \
      --device $DEVICE --guidance "${GUIDANCE:-3}" --deadline $end --seeds $seeds ${TABLE_ARGS:-} --only "$@" \
      >> "$LOGS/table.log" 2>&1; }
  # every eval has the searched ladder of its length as a row: the variants of N steps start after search-N; each
  # variant x training seed is its own process (the GPU is mostly idle with these small models)
  (tab 0 search-10 && { for v in distill-searched-10 paper-10 distill-glance-10; do
                          for s in ${SEEDS:-0 1}; do tab $s $v & done; done; wait; }) &
  (tab 0 search-6 && { for s in ${SEEDS:-0 1}; do tab $s distill-searched-6 & done; wait; }) &
  wait
  grep '^{' "$LOGS/table.log"
  cp $T/toy_report.json $R/ 2>/dev/null
  cp $LOGS/*.log $R/ 2>/dev/null
  (cd $R && tar -czf "$OUTDIR/results.tgz" results.jsonl toy_report.json ladder-*.json eval_prompts.json *.log \
     $(ls -d */eval.md 2>/dev/null))
}
case "$1" in
fmnist) fmnist_train; fmnist_pack ;;
scenes) scenes ;;
all) fmnist_train & scenes; wait; fmnist_pack ;;
*) echo "usage: table_gpu.sh fmnist|scenes|all"; exit 2 ;;
esac
ls -la "$OUTDIR"
echo "{\"total_s\": $(( $(date +%s) - start ))}"

#!/usr/bin/env bash
# The fast-sampler table's GPU part, one device call each (carry .whl: diffusers, pydantic, pytorch-msssim, PyWavelets):
#   OUT=... bash bench/toy/table_gpu.sh fmnist   train the two Fashion-MNIST toys (centre, quadrant) side by side and
#                                                return them in <16 MiB parts (cat toy-NAME.tgz.* | tar -xz -C DIR); their
#                                                table then runs on a CPU: bench/toy/glance_table.py run --device cpu
#   OUT=... bash bench/toy/table_gpu.sh scenes   train the scenes toy (bench/toy/scenes.py, SD3 layout, true CFG), then
#                                                its table (glance_table.py) with the searches and variants in parallel
#                                                processes; stops starting jobs at DEADLINE s; returns results.tgz
# env: BASE_SECONDS (fmnist 150, scenes 200), DEADLINE (scenes: 520 s after the start), GUIDANCE (scenes: 3)
set -u
cd "$(dirname "$0")/../.."
[ -n "${SKIP_WHEELS:-}" ] || source bench/gpu/gpu_env.sh
export PYTHONPATH=${PYTHONPATH:-$PWD/src} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GLANCETUNE_HOME=/tmp/gt_home
DEVICE=${DEVICE:-cuda}
OUTDIR=${OUT:-/tmp/table_out}
mkdir -p "$OUTDIR"
start=$(date +%s)
case "$1" in
fmnist)
  for layout in centre quadrant; do
    python3 bench/toy/toy_model.py --out /tmp/toy-$layout --device $DEVICE --layout $layout ${TOY_ARGS:-} \
      --base-seconds "${BASE_SECONDS:-150}" > "$OUTDIR/toy-$layout.log" 2>&1 &
  done
  wait
  for layout in centre quadrant; do
    grep '^{' "$OUTDIR/toy-$layout.log" | tail -1
    tar -czf /tmp/toy-$layout.tgz -C /tmp/toy-$layout model judge.pt data config prompts.json labels.json toy_report.json
    (cd "$OUTDIR" && split -b 15M /tmp/toy-$layout.tgz toy-$layout.tgz.)
  done
  ls -la "$OUTDIR" ;;
scenes)
  T=/tmp/toy-scenes R=/tmp/table-scenes
  python3 bench/toy/scenes.py --out $T --device $DEVICE ${TOY_ARGS:-} --base-seconds "${BASE_SECONDS:-200}" \
    > "$OUTDIR/scenes.log" 2>&1 || { tail -20 "$OUTDIR/scenes.log"; exit 1; }
  grep '^{' "$OUTDIR/scenes.log" | tail -1
  end=$((start + ${DEADLINE:-520}))
  tab() { python3 bench/toy/glance_table.py run --toy $T --out $R --device $DEVICE --guidance "${GUIDANCE:-3}" \
            --deadline $end ${TABLE_ARGS:-} --only "$@" >> "$OUTDIR/table.log" 2>&1; }
  (tab search-10 && tab distill-searched-10) &
  (tab search-6 && tab distill-searched-6) &
  tab paper-10 &
  tab distill-glance-10 &
  wait
  grep '^{' "$OUTDIR/table.log"
  cp $T/toy_report.json $R/ 2>/dev/null
  (cd $R && tar -czf "$OUTDIR/results.tgz" results.jsonl toy_report.json ladder-*.json eval_prompts.json \
     $(ls -d */eval.md 2>/dev/null))
  ls -la "$OUTDIR" ;;
*) echo "usage: table_gpu.sh fmnist|scenes"; exit 2 ;;
esac
echo "{\"total_s\": $(( $(date +%s) - start ))}"

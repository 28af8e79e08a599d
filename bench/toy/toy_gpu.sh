#!/usr/bin/env bash
# issue 13 on the GPU machine, one call (<= 8 min): train the toy FLUX.1-layout model (bench/toy/toy_model.py), then the
# paper's Glance recipe on ONE of its images with glancetune itself, `glancetune eval` against base-50 / base-10
# on every colour x class caption x SEEDS seeds, and the judge's class / colour accuracy (bench/toy/toy_score.py); then,
# while the call is under BUDGET seconds, the same for glance_objective trajectory, rollout, and flow + prior
# (glance_prior_weight 1) (SEEDS_OBJ seeds).
# Usage (carry .whl: diffusers + pydantic wheels, NOT bitsandbytes: carry is 64 MiB in all):
#   OUT=... bash bench/toy/toy_gpu.sh   env: MODEL_ONLY (train + return the model only), LAYOUT (centre), BASE_SECONDS (150), SEEDS (1), SEEDS_OBJ (1), GLANCE_STEPS (60), BUDGET (400)
set -u
cd "$(dirname "$0")/../.."
[ -n "${SKIP_WHEELS:-}" ] || source bench/gpu/gpu_env.sh
# a CPU rehearsal of this script: SKIP_WHEELS=1 DEVICE=cpu TOY_ARGS=--smoke PROMPTS=<2-prompt file> EVAL_ARGS="--steps-base 4"
DEVICE=${DEVICE:-cuda}
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GLANCETUNE_HOME=/tmp/gt_home
OUTDIR=${OUT:-/tmp/toy_out}
TOY=${TOY:-/tmp/toy}
mkdir -p "$OUTDIR"
t=$SECONDS
python3 bench/toy/toy_model.py --out $TOY --device $DEVICE ${TOY_ARGS:-} --base-seconds "${BASE_SECONDS:-150}" --layout "${LAYOUT:-centre}" \
  --glance-steps "${GLANCE_STEPS:-60}" > "$OUTDIR/toy_model.log" 2>&1 || { tail -30 "$OUTDIR/toy_model.log"; exit 1; }
grep '^{' "$OUTDIR/toy_model.log"
echo "{\"toy_model_s\": $((SECONDS-t))}"
cp $TOY/toy_report.json $TOY/prompts.json $TOY/labels.json "$OUTDIR/" 2>/dev/null
# the trained model itself comes back too (transformer ~95 MB fp32: may exceed what $OUT returns; then see the log)
tar -czf "$OUTDIR/toy_model.tgz" -C $TOY model judge.pt data config prompts.json labels.json toy_report.json
if [ -n "${MODEL_ONLY:-}" ]; then  # bring the model back in <16 MiB parts (cat toy_model.tgz.* | tar -xz -C /tmp/toy)
  (cd "$OUTDIR" && split -b 15M toy_model.tgz toy_model.tgz. && rm toy_model.tgz && ls -la); exit 0
fi

one() {  # $1: tag (paper | trajectory | rollout | prior), $2: config file, $3: seeds
  local run=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['output_dir'])" "$2") t=$SECONDS
  python3 -m glancetune glance --config "$2" 2>&1 | tail -4
  echo "{\"$1_glance_s\": $((SECONDS-t))}"
  t=$SECONDS
  python3 -m glancetune eval --run "$run" --prompts "${PROMPTS:-$TOY/prompts.json}" --seeds "$3" --device $DEVICE ${EVAL_ARGS:-} \
    --output $TOY/report-$1 2>&1 | grep -v '^eval: ' | tail -16
  echo "{\"$1_eval_s\": $((SECONDS-t))}"
  python3 bench/toy/toy_score.py --report $TOY/report-$1 --toy $TOY --output "$OUTDIR/toy_score-$1.json"
  mkdir -p "$OUTDIR/$1"
  cp $TOY/report-$1/eval.json $TOY/report-$1/eval.md $TOY/report-$1/grid.png "$OUTDIR/$1/" 2>/dev/null
  cp "$run/slow/train_log.json" "$OUTDIR/$1/slow_train_log.json" 2>/dev/null
  cp "$run/fast/train_log.json" "$OUTDIR/$1/fast_train_log.json" 2>/dev/null
}
one paper $TOY/config/glance.json "${SEEDS:-1}"
for obj in trajectory rollout prior; do
  if [ $SECONDS -lt "${BUDGET:-400}" ]; then one $obj $TOY/config/glance-$obj.json "${SEEDS_OBJ:-1}";
  else echo "{\"skipped\": \"$obj\", \"at_s\": $SECONDS}"; fi
done
echo "{\"total_s\": $SECONDS}"
du -sh "$OUTDIR"/*

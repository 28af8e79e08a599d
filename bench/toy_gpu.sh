#!/usr/bin/env bash
# issue 13 on the GPU machine, one call (<= 8 min): train the toy FLUX.1-layout model (bench/toy_model.py), then the
# paper's Glance recipe on ONE of its images with glancetune itself, `glancetune eval` against base-50 / base-10
# on every colour x class caption x SEEDS seeds, and the judge's class / colour accuracy (bench/toy_score.py).
# Usage (carry .whl: diffusers + pydantic wheels, NOT bitsandbytes: carry is 64 MiB in all):
#   OUT=... bash bench/toy_gpu.sh        env: BASE_SECONDS (200), SEEDS (2), GLANCE_STEPS (60)
set -u
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GLANCETUNE_HOME=/tmp/gt_home
OUTDIR=${OUT:-/tmp/toy_out}
TOY=/tmp/toy
mkdir -p "$OUTDIR"
t=$SECONDS
python3 bench/toy_model.py --out $TOY --device cuda --base-seconds "${BASE_SECONDS:-200}" \
  --glance-steps "${GLANCE_STEPS:-60}" 2>&1 | grep --line-buffered '^{' | tee "$OUTDIR/toy_model.jsonl"
echo "{\"toy_model_s\": $((SECONDS-t))}"
cp $TOY/toy_report.json $TOY/prompts.json $TOY/labels.json "$OUTDIR/" 2>/dev/null
t=$SECONDS
python3 -m glancetune glance --config $TOY/config/glance.json 2>&1 | tail -6
echo "{\"glance_s\": $((SECONDS-t))}"
t=$SECONDS
python3 -m glancetune eval --run $TOY/glance --prompts $TOY/prompts.json --seeds "${SEEDS:-2}" --device cuda \
  --output $TOY/report 2>&1 | grep -v '^eval: ' | tail -20
echo "{\"eval_s\": $((SECONDS-t))}"
python3 bench/toy_score.py --report $TOY/report --toy $TOY
cp -r $TOY/report/eval.json $TOY/report/eval.md $TOY/report/grid.png $TOY/report/toy_score.json "$OUTDIR/" 2>/dev/null
cp $TOY/glance/slow/train_log.json "$OUTDIR/slow_train_log.json" 2>/dev/null
cp $TOY/glance/fast/train_log.json "$OUTDIR/fast_train_log.json" 2>/dev/null
# the trained model itself (a few MB) comes back too, so the next session can ship or reuse it
tar -czf "$OUTDIR/toy_model.tgz" -C $TOY model judge.pt data config prompts.json labels.json toy_report.json
du -sh "$OUTDIR"/*

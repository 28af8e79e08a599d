#!/usr/bin/env bash
# issue 13 on THIS machine's CPU, with a toy model trained on the GPU (bench/toy/toy_gpu.sh with MODEL_ONLY=1 brings it
# back; unpack it with `cat toy_model.tgz.* | tar -xz -C $TOY`): one Glance variant per call, trained by
# `glancetune glance` (the run's config + key=value overrides), evaluated by `glancetune eval` on EVAL_PROMPTS x
# SEEDS pairs (16 captions that no run trains on, x 4 seeds by default), scored by bench/toy/toy_score.py.
#   TOY=/tmp/toy-quadrant bash bench/toy/toy_cpu.sh NAME CONFIG [key=value ...]      e.g.
#   bash bench/toy/toy_cpu.sh paper glance.json ; bash bench/toy/toy_cpu.sh paper-lr2e-4 glance.json learning_rate=2e-4
# Writes $TOY/report-NAME/ and appends one JSON line to $TOY/results.jsonl. ~4 min on one thread.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOY=${TOY:-/tmp/toy-quadrant}
name=$1 cfg=$2; shift 2
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 PYTHONPATH=$PWD/src
PY=${PY:-python3}
[ -f "$TOY/eval_prompts.json" ] || $PY - "$TOY" <<'PYEOF'
import json, sys
toy = sys.argv[1]
prompts = json.load(open(f"{toy}/prompts.json"))
seen = set(json.load(open(f"{toy}/config/glance-trajectory.json"))["glance_prompts"]) | {"a red t-shirt"}
names = list(prompts)  # colour-major: 8 colours x 10 classes
pick = [names[c * 10 + k] for k in range(10) for c in ((3 * k + 3) % 8, (3 * k + 7) % 8)]
pick = [n for n in pick if prompts[n] not in seen]
json.dump({n: prompts[n] for n in pick}, open(f"{toy}/eval_prompts.json", "w"), indent=1)
print(f"{len(pick)} eval prompts, none trained on")
PYEOF
t=$SECONDS
$PY -m glancetune glance --config "$TOY/config/$cfg" output_dir="$TOY/runs/$name" overwrite_output_dir=true "$@" 2>&1 | tail -3
train_s=$((SECONDS - t)); t=$SECONDS
$PY -m glancetune eval --run "$TOY/runs/$name" --prompts "$TOY/eval_prompts.json" --seeds "${SEEDS:-4}" --device cpu \
  --output "$TOY/report-$name" 2>&1 | grep -E '^\| glance|^- glance vs base-10,'
eval_s=$((SECONDS - t))
$PY bench/toy/toy_score.py --report "$TOY/report-$name" --toy "$TOY" --output "$TOY/report-$name/toy_score.json" >/dev/null
$PY - "$TOY" "$name" "$train_s" "$eval_s" "$cfg $*" <<'PYEOF'
import json, sys
toy, name, train_s, eval_s, args = sys.argv[1:]
rep = json.load(open(f"{toy}/report-{name}/eval.json"))
score = json.load(open(f"{toy}/report-{name}/toy_score.json"))
row = {"run": name, "args": args, "pairs": rep["pairs"], "train_s": int(train_s), "eval_s": int(eval_s),
       "psnr": {k: round(v["psnr_mean"], 2) for k, v in rep["samplers"].items() if "psnr_mean" in v},
       "win_vs_base10": rep["win_rate"]["glance_vs_base-10"]["psnr"],
       "judge": {k: [v["class_acc"][0], v["colour_acc"][0]] for k, v in score["samplers"].items()}}
open(f"{toy}/results.jsonl", "a").write(json.dumps(row) + "\n")
print(json.dumps(row))
PYEOF

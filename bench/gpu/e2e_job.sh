#!/usr/bin/env bash
# issue 12's whole-job row on the GPU machine (carry .whl; ~8 min): the full-size random FLUX.1-dev folder, one 1024²
# image, rank 32; glancetune's one-command `glance` job (60+60 steps, cold caches), the same job again (caches warm:
# what is left without encoding), and the anchor in the same call: the seeds' two separate `train` runs (their
# flow_custom_timesteps ladders; what ../shared/bench/e2e_probe2.sh timed as 145 s). Each is a whole process timed from
# outside; the job's own split (`time: start-up, encode, load, train, save`) is printed next to it. JSON to $OUT/e2e_job.json.
#   bash bench/gpu/e2e_job.sh [anchor]   the table above        bash bench/gpu/e2e_job.sh warm   a job's second run (compile)
set -u
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
R=${OUT:-/tmp}/e2e_job.json; : > "$R"
export MODEL=${MODEL:-/tmp/fluxfull} RES=${RES:-1024} STEPS=${STEPS:-60}  # MODEL/RES/STEPS: a CPU check with a tiny folder
rm -rf /tmp/job
t=$SECONDS
[ -f $MODEL/model_index.json ] || python3 bench/measure/seed_recipe.py --dir /tmp/fluxfull --build-only 2>&1 | tail -1
echo "{\"build_s\": $((SECONDS - t))}"
python3 - <<'PY'
import json, os, numpy as np
from PIL import Image
os.makedirs("/tmp/job/data", exist_ok=True)
n = int(os.environ["RES"]); y, x = np.mgrid[0:n, 0:n]
im = np.stack([x * 255 // (n - 1), y * 255 // (n - 1), (x + y) * 127 // (n - 1)], -1).astype("uint8")
Image.fromarray(im).save("/tmp/job/data/glance.png"); open("/tmp/job/data/glance.txt", "w").write("a colourful gradient")
json.dump([{"id": "one", "type": "local", "instance_data_dir": "/tmp/job/data", "resolution": n,
            "resolution_type": "pixel_area", "caption_strategy": "textfile"}], open("/tmp/job/mdb.json", "w"))
base = {"model_family": "flux", "pretrained_model_name_or_path": os.environ["MODEL"], "data_backend_config": "/tmp/job/mdb.json",
        "max_train_steps": int(os.environ["STEPS"]), "lora_rank": 32, "model_type": "lora"}
json.dump(dict(base, output_dir="/tmp/job/out", cache_dir="/tmp/job/cacheA"), open("/tmp/job/glance.json", "w"))
for ph, ts in (("slow", "1000,986.9786,973.2042,958.6094,943.1188"), ("fast", "926.6473,825.7016,677.9868,441.1998,60.5503")):
    json.dump(dict(base, output_dir=f"/tmp/job/{ph}", cache_dir="/tmp/job/cacheB", flow_custom_timesteps=ts),
              open(f"/tmp/job/{ph}.json", "w"))
PY
timed() {  # timed NAME command...: whole-process wall seconds, rc and the job's own time split as one JSON line
  local name=$1; shift; local s=$(date +%s.%N)
  timeout 300 "$@" > /tmp/job/$name.log 2>&1; local rc=$?
  local wall=$(python3 -c "import time; print(round(time.time() - $s, 1))")
  local split=$(grep -o 'time: .*' /tmp/job/$name.log | tail -1)
  echo "{\"run\": \"$name\", \"wall_s\": $wall, \"rc\": $rc, \"split\": \"$split\"}" | tee -a "$R"
  [ $rc = 0 ] || { tail -n 6 /tmp/job/$name.log; cp /tmp/job/$name.log "${OUT:-/tmp}/"; }
}
if [ "${1:-anchor}" = warm ]; then  # does the second run of a job compile, and pay? (~7 min) A fresh inductor cache;
  # the eager job; the same job with compile_transformer forced (cold compile; it marks its graphs); the same job on
  # `auto` again, which now finds the mark and compiles with the cache warm (train/speed.py COMPILE_PAYS_AFTER_WARM)
  export TORCHINDUCTOR_CACHE_DIR=/tmp/job/inductor
  timed glance_eager python3 -m glancetune glance --config /tmp/job/glance.json
  timed glance_compile_cold python3 -m glancetune glance --config /tmp/job/glance.json --overwrite --compile_transformer=true
  timed glance_auto_after python3 -m glancetune glance --config /tmp/job/glance.json --overwrite
  grep -h 'compile: ' /tmp/job/glance_*.log
  python3 - "$R" <<'PY'
import json, sys
rows = {r["run"]: r["wall_s"] for r in map(json.loads, open(sys.argv[1]))}
print(json.dumps({**rows, "second_run_ratio": round(rows["glance_auto_after"] / rows["glance_eager"], 3)}))
PY
  exit
fi
timed glance_cold python3 -m glancetune glance --config /tmp/job/glance.json
timed glance_warm_caches python3 -m glancetune glance --config /tmp/job/glance.json --overwrite
timed seeds_slow python3 -m glancetune train --config /tmp/job/slow.json
timed seeds_fast python3 -m glancetune train --config /tmp/job/fast.json
python3 - "$R" <<'PY'
import json, sys
rows = {r["run"]: r for r in map(json.loads, open(sys.argv[1]))}
ours, seeds = rows["glance_cold"]["wall_s"], rows["seeds_slow"]["wall_s"] + rows["seeds_fast"]["wall_s"]
print(json.dumps({"glance_cold_s": ours, "seeds_two_runs_s": round(seeds, 1), "ratio": round(ours / seeds, 3),
                  "glance_warm_caches_s": rows["glance_warm_caches"]["wall_s"]}))
PY

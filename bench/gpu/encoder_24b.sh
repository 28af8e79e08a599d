#!/usr/bin/env bash
# issue 10 on the GPU machine: FLUX.2-dev's 24B text encoder on a 24 GB budget. One device call (<= 9 min, carry
# .whl): build the FLUX.2-dev-layout folder with the full-size Mistral-Small-3.1 text encoder (bench/measure/encoder_24b.py
# --build), then one `glancetune cache` process per memory setting, in order of value, each under `timeout` and
# within what is left of BUDGET seconds (a setting that cannot start with 75 s left is reported as skipped); the
# folder is removed at the end unless KEEP=1 or TE24_DIR is given. JSON lines go to $OUT/encoder_24b.jsonl as
# they come; each cache command's full output to $OUT/encoder_24b_NAME.log ('+' written as '_').
#   run(carry=[".whl"], command="bash bench/gpu/encoder_24b.sh")      [settings...]  BUDGET=530  TE24_DIR=folder
# A dry run of the whole script with the small encoder: TINY=1 NO_PIP=1 PY=.venv/bin/python OUT=... bash ...sh
# NARROW=1: the real width and depth with a 4096 MLP (11 GiB): placement checks (the load peak) in ~2 minutes
# Time plan (estimates, H200 machine, 16 cores): pip ~15 s; build ~100-140 s (random init on the GPU, 44 GiB of
# 5 GB safetensors shards written; the FLUX.1-dev full build, 33 GiB, took 79 s); then the settings, estimated in
# bench/measure/encoder_24b.py CONFIGS: bf16+group-offload 60-90, nf4-bnb 60-90, int8-quanto (quantized on the CPU)
# 150-250, probe-int4 ~30, int4-quanto 60-90, int8-quanto+group-offload 60-90: the last ones may be skipped.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp}
mkdir -p "$OUT"
PY=${PY:-python3}
[ -n "${NO_PIP:-}" ] || source bench/gpu/gpu_env.sh
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
BUDGET=${BUDGET:-530}
JSONL="$OUT/encoder_24b.jsonl"
emit() { echo "$1" | tee -a "$JSONL"; }
json_lines() { grep --line-buffered '^{' | tee -a "$JSONL"; }
free_gib() { local n; n=$(df -BG --output=avail "$1" 2>/dev/null | tail -1 | tr -dc 0-9); echo "${n:-0}"; }

# the folder: 44 GiB of shards; on the disk if it has room, else in /dev/shm (RAM: then ~88 GiB held while loading)
DIR=${TE24_DIR:-}
if [ -z "$DIR" ]; then
  for d in /tmp /dev/shm; do [ "$(free_gib $d)" -ge 50 ] && { DIR=$d/te24; break; }; done
fi
free="{\"/tmp\": $(free_gib /tmp), \"/dev/shm\": $(free_gib /dev/shm)}"
ram=$(free -g | awk '/Mem:/{print $2}')
emit "{\"free_gib\": $free, \"dir\": \"$DIR\", \"ram_gib\": $ram, \"cores\": $(nproc --all)}"
[ -n "$DIR" ] || { emit '{"error": "no folder with 50 GiB free for the 44 GiB text encoder; set TE24_DIR"}'; exit 1; }
$PY bench/measure/encoder_24b.py --build "$DIR" ${TINY:+--tiny} ${NARROW:+--narrow} 2>"$OUT/encoder_24b_build.err" | json_lines
[ -f "$DIR/model_index.json" ] || { tail -5 "$OUT/encoder_24b_build.err"; exit 1; }
emit "{\"after_build_s\": $SECONDS, \"free_gib_after\": $(free_gib "$(dirname "$DIR")")}"

for name in ${*:-bf16+group-offload nf4-bnb int8-quanto probe-int4 int4-quanto int8-quanto+group-offload}; do
  left=$((BUDGET - SECONDS))
  if [ $left -lt 75 ]; then emit "{\"config\": \"$name\", \"skipped\": \"${left}s of the budget left\"}"; continue; fi
  if [ "$name" = probe-int4 ]; then
    timeout 60 $PY bench/measure/encoder_24b.py --probe-int4 2>"$OUT/encoder_24b_probe.err" | json_lines
  else
    $PY bench/measure/encoder_24b.py --measure "$name" --model "$DIR" --work /tmp/te24work --logdir "$OUT" \
      --timeout $((left - 10)) 2>>"$OUT/encoder_24b_measure.err" | json_lines
  fi
done
emit "{\"total_s\": $SECONDS}"
# the 44 GiB folder would fill the warm machine's disk for the next call (session 10 lost a call to that)
[ -n "${KEEP:-}" ] || [ -n "${TE24_DIR:-}" ] || rm -rf "$DIR" /tmp/te24work

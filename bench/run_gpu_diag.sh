#!/usr/bin/env bash
# Second device call: where the gc-off gap of run 1 comes from, and regional compile with checkpointing on.
#   run(command="bash bench/run_gpu_diag.sh", carry=[".whl"])
# Repeats anchor/ours at gc 0 (noise estimate), then ours without the bench's own per-step sync (--sync ends),
# ours without the loop's per-step host syncs (--no-host-sync), and regional compile at gc 1 (and gc 0 + no sync).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT"
BUDGET=${BENCH_BUDGET_S:-540}
STEPS=${BENCH_STEPS:-8}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"

run() {  # name, max seconds, command...
  local name=$1 lim=$2; shift 2
  if (( SECONDS + lim > BUDGET )); then echo "=== $name: skipped (elapsed ${SECONDS}s, budget ${BUDGET}s)"; return; fi
  echo "=== $name: $* (elapsed ${SECONDS}s)"
  timeout "$lim" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep '^{' "$OUT/$name.log" | tail -n 1
  [[ $rc == 0 ]] || tail -n 5 "$OUT/$name.log"
  echo "--- $name rc=$rc"
}
T="python3 bench/train_step.py --steps $STEPS --warmup 3"
run anchor_gc0        120 python3 bench/anchor_loop.py --model flux1 --gc 0 --steps "$STEPS"
run ours_gc0          100 $T --gc 0
run ours_gc0_ends     100 $T --gc 0 --sync ends
run ours_gc0_nosync   100 $T --gc 0 --sync ends --no-host-sync
run ours_gc1_compile  150 $T --gc 1 --compile
run ours_gc0_compile_nosync 150 $T --gc 0 --compile --sync ends --no-host-sync
run anchor_gc1        120 python3 bench/anchor_loop.py --model flux1 --gc 1 --steps "$STEPS"
run ours_gc1_nosync   100 $T --gc 1 --sync ends --no-host-sync

python3 - "$OUT" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
def res(name):
    f = out / f"{name}.log"
    lines = [l for l in f.read_text().splitlines() if l.startswith("{")] if f.exists() else []
    return json.loads(lines[-1]) if lines else None
print("\n| run | gc | s/step | ratio vs anchor same gc | peak GiB |")
print("|---|---|---|---|---|")
for name in ("anchor_gc0", "ours_gc0", "ours_gc0_ends", "ours_gc0_nosync", "ours_gc0_compile_nosync",
             "anchor_gc1", "ours_gc1_nosync", "ours_gc1_compile"):
    v = res(name)
    if not v:
        print(f"| {name} | | no result | | |"); continue
    an = res(f"anchor_gc{v['gc']}")
    r = f"{v['train_s_per_step'] / an['train_s_per_step']:.3f}" if an else "n/a"
    print(f"| {name} | {v['gc']} | {v['train_s_per_step']:.4f} | {r} | {v['peak_train_gib']} |")
EOF
echo "total elapsed ${SECONDS}s"

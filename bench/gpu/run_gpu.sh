#!/usr/bin/env bash
# One device call: the plain diffusers+peft anchor (bench/measure/anchor_loop.py, a copy of ../shared/bench/anchor_loop.py)
# and glancetune's own step (bench/measure/train_step.py), gradient checkpointing on and off, then a table of ratios.
# Run from the repository root on the GPU machine, with the wheels folder carried:
#   run(command="bash bench/gpu/run_gpu.sh", carry=[".whl"])
# Optional variants of ours (slow+fast interleaved as `glance` runs them, regional compile) run last, only while time is left (BENCH_BUDGET_S).
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT"
BUDGET=${BENCH_BUDGET_S:-540}
STEPS=${BENCH_STEPS:-8}

source bench/gpu/gpu_env.sh
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, peft, transformers, accelerate, glancetune; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'glancetune', glancetune.__file__)" | tee "$OUT/versions.txt"

run() {  # name, max seconds, command...
  local name=$1 lim=$2; shift 2
  echo "=== $name: $* (elapsed ${SECONDS}s)"
  timeout "$lim" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -v '^{' "$OUT/$name.log" | tail -n 4
  grep '^{' "$OUT/$name.log" | tail -n 1
  echo "--- $name rc=$rc"
}
optional() {  # only if enough of the budget is left
  local name=$1 lim=$2
  if (( SECONDS + lim > BUDGET )); then echo "=== $name: skipped (elapsed ${SECONDS}s, budget ${BUDGET}s)"; return; fi
  run "$@"
}

run anchor_gc1 150 python3 bench/measure/anchor_loop.py --model flux1 --gc 1 --steps "$STEPS"
run ours_gc1   150 python3 bench/measure/train_step.py --gc 1 --steps "$STEPS" --warmup 3
run anchor_gc0 150 python3 bench/measure/anchor_loop.py --model flux1 --gc 0 --steps "$STEPS"
run ours_gc0   150 python3 bench/measure/train_step.py --gc 0 --steps "$STEPS" --warmup 3

optional ours_gc0_p2 150 python3 bench/measure/train_step.py --gc 0 --steps "$STEPS" --warmup 3 --phases 2
optional ours_gc0_compile 240 python3 bench/measure/train_step.py --gc 0 --steps "$STEPS" --warmup 3 --compile
optional ours_gc1_compile 240 python3 bench/measure/train_step.py --gc 1 --steps "$STEPS" --warmup 3 --compile

python3 - "$OUT" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
def res(name):
    f = out / f"{name}.log"
    if not f.exists():
        return None
    lines = [l for l in f.read_text().splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else None
rows = []
print("\n| gc | anchor s/step | ours s/step | ratio s | anchor peak GiB | ours peak GiB | ratio GiB |")
print("|---|---|---|---|---|---|---|")
for gc in (1, 0):
    an, us = res(f"anchor_gc{gc}"), res(f"ours_gc{gc}")
    if not an or not us:
        print(f"| {gc} | {an and an['train_s_per_step']} | {us and us['train_s_per_step']} | n/a | | | |")
        continue
    a_s, u_s, a_m, u_m = an["train_s_per_step"], us["train_s_per_step"], an["peak_train_gib"], us["peak_train_gib"]
    print(f"| {'on' if gc else 'off'} | {a_s:.4f} | {u_s:.4f} | {u_s / a_s:.3f} | {a_m:.2f} | {u_m:.2f} | {u_m / a_m:.3f} |")
print("\nvariants of ours (ratio against the anchor with the same gc):")
for name in ("ours_gc0_p2", "ours_gc0_compile", "ours_gc1_compile"):
    v = res(name)
    if not v:
        print(f"  {name}: no result")
        continue
    an = res(f"anchor_gc{v['gc']}")
    r = f"{v['train_s_per_step'] / an['train_s_per_step']:.3f}" if an else "n/a"
    print(f"  {name}: {v['train_s_per_step']:.4f} s/step (median {v['median_s_per_step']:.4f}), peak "
          f"{v['peak_train_gib']:.2f} GiB, ratio s {r}, run {v['run_s']} s")
summary = {n: res(n) for n in ("anchor_gc1", "ours_gc1", "anchor_gc0", "ours_gc0", "ours_gc0_p2", "ours_gc0_compile", "ours_gc1_compile")}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
EOF
echo "total elapsed ${SECONDS}s"

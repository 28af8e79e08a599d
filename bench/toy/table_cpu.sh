#!/usr/bin/env bash
# The fast-sampler table on a CPU (when no GPU is lent): the CPU-scale toys (`python bench/toy/scenes.py --cpu` and
# `python bench/toy/toy_model.py --cpu --layout centre|quadrant`, ~1-1.5M parameters), then glance_table.py on each
# with 16 held-out prompts, one process per toy (OMP_NUM_THREADS=1). Usage:
#   bash bench/toy/table_cpu.sh /tmp/cpu-scenes:3 /tmp/cpu-centre /tmp/cpu-quadrant     (TOY[:GUIDANCE] ...)
# Writes /tmp/table-<toy name>/ (results.jsonl, eval reports); then `python bench/toy/glance_table.py table ...`.
set -u
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=${PYTHONPATH:-$PWD/src} PYTHONUNBUFFERED=1
for spec in "$@"; do
  toy=${spec%%:*} g=${spec#*:}
  [ "$g" = "$spec" ] && g=""
  name=$(basename "$toy")
  python3 bench/toy/glance_table.py run --toy "$toy" --out "/tmp/table-$name" --device cpu --max-prompts 16 \
    ${g:+--guidance $g} > "/tmp/table-$name.log" 2>&1 &
done
wait

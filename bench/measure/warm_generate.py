"""Whole-process `glancetune generate` cold (in-process: imports, load, sample) against the same command through a
warm `glancetune serve` (sampling/remote.py: the client imports no model library; the server keeps the pipeline), and
optionally the naive diffusers script (bench/measure/naive_generate.py, CUDA + FLUX.1 only) as a process. Each
figure is the wall time of a whole process, timed from outside; the prompt cache is filled first, so the cold rows
are the repeated-command case (no text encoders loaded). Prints JSON lines, the last one the summary with ratios and
whether the served PNG has the same bytes as the in-process one.

Usage (GPU machine): python3 bench/measure/warm_generate.py --run RUN_DIR --model PIPELINE_DIR --naive
Locally on CPU, to check the logic: python bench/measure/warm_generate.py --run RUN_DIR --device cpu --work /tmp/wg
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--run", required=True, help="a glance output folder (slow/ and fast/)")
p.add_argument("--model", help="the base pipeline folder (for --naive)")
p.add_argument("--device", default="cuda")
p.add_argument("--repeats", type=int, default=3, help="timed processes per way (their median is reported)")
p.add_argument("--naive", action="store_true", help="also the naive diffusers script as a process (CUDA, FLUX.1)")
p.add_argument("--work", default="/tmp/warm_generate", help="images and the GLANCETUNE_HOME of this measurement")
a = p.parse_args()
work = Path(a.work)
work.mkdir(parents=True, exist_ok=True)
env = dict(os.environ, GLANCETUNE_HOME=str(work / "home"))
PROMPT = "a photograph of a red fox in the snow"


def emit(**row):
    print(json.dumps(row), flush=True)
    return row


def timed(name, cmd, limit=600):
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=limit)
    wall = round(time.perf_counter() - t, 2)
    last = (r.stdout.strip().splitlines() or [""])[-1]
    row = emit(run=name, wall_s=wall, rc=r.returncode, summary=last)
    if r.returncode:
        print(r.stderr[-2000:], file=sys.stderr, flush=True)
    return row


def gen(out, *extra):
    return [sys.executable, "-m", "glancetune", "generate", "--run", a.run, "--prompt", PROMPT, "--seed", "0",
            "--device", a.device, "--output", str(work / out), *extra]


timed("cold_fill_prompt_cache", gen("fill.png", "--no-server"))
cold = [timed(f"cold_{i}", gen(f"cold-{i}.png", "--no-server"))["wall_s"] for i in range(a.repeats)]
state = work / "home" / "serve.json"
state.unlink(missing_ok=True)
t = time.perf_counter()
serve = subprocess.Popen([sys.executable, "-m", "glancetune", "serve", "--port", "0"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
while not state.exists() and serve.poll() is None and time.perf_counter() - t < 300:
    time.sleep(0.1)
emit(run="serve_started", wall_s=round(time.perf_counter() - t, 2), state=state.exists())
try:
    first = timed("served_first (server loads)", gen("first.png"))
    warm = [timed(f"served_warm_{i}", gen(f"warm-{i}.png")) for i in range(a.repeats)]
finally:
    serve.send_signal(signal.SIGTERM)
    try:
        serve.wait(60)
    except subprocess.TimeoutExpired:
        serve.kill()
served = all("(on http" in r["summary"] for r in [first, *warm])
same = (work / "warm-0.png").read_bytes() == (work / "cold-0.png").read_bytes() if served else None
naive = None
if a.naive:
    naive = timed("naive_diffusers", [sys.executable, "bench/measure/naive_generate.py", a.model,
                                      f"{a.run}/slow", f"{a.run}/fast", str(work / "naive.png")])["wall_s"]
cold_s, warm_s = statistics.median(cold), statistics.median([r["wall_s"] for r in warm])
emit(summary=True, device=a.device, cold_s=cold_s, served_first_s=first["wall_s"], warm_s=warm_s,
     warm_vs_cold=round(warm_s / cold_s, 3), cold_over_warm=round(cold_s / warm_s, 2), naive_s=naive,
     warm_vs_naive=round(warm_s / naive, 3) if naive else None, all_served=served, same_png_bytes=same,
     state_removed_on_exit=not state.exists())

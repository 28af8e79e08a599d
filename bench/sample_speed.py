"""Sampling speed of glancetune (issue 12) against the naive diffusers anchor, in one process call each:

  warm   one GlanceSampler, 10-step images at the trained size: unfused adapters (default) vs `lora_mode fused`
         vs unfused with the transformer's blocks compiled (compile_repeated_blocks; its first images timed apart)
         (1 warm-up + N timed images each, synchronised), and the max pixel difference of each to unfused;
  cold   `glancetune generate` as a whole process, twice with the same prompt: the first fills the prompt cache
         (text encoders loaded), the second finds it (no text encoder loaded); and the naive anchor
         (bench/naive_generate.py: one pipeline, two adapters, adapter switched in a callback) as a process.

Prints one JSON line. Usage (GPU machine): python3 bench/sample_speed.py --run RUN_DIR --model PIPELINE_DIR
Locally on CPU, to check the logic: python bench/sample_speed.py --run RUN_DIR --model tiny-folder --device cpu
"""
import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

p = argparse.ArgumentParser()
p.add_argument("--run", required=True)
p.add_argument("--model", required=True, help="the base pipeline folder (for the naive anchor)")
p.add_argument("--images", type=int, default=3)
p.add_argument("--device", default="cuda")
a = p.parse_args()
PROMPT = "a photograph of a red fox in the snow"
cuda = a.device.startswith("cuda")


def sync():
    if cuda:
        torch.cuda.synchronize()


def warm() -> dict:
    from glancetune.sample import GlanceSampler, resolve_spec
    from glancetune.train.speed import compile_blocks

    s = GlanceSampler.from_spec(resolve_spec(run=a.run), device=a.device)
    out = {}
    images = {}
    for mode in ("unfused", "fused", "compiled"):
        s.lora_mode = "fused" if mode == "fused" else "unfused"
        if mode == "compiled":  # measure before building: regional compile of the inference transformer
            t = time.perf_counter()
            compile_blocks(s.pipe.transformer)  # as the training job compiles
            s([PROMPT], seed=0, output_type="np")  # compiles (one graph per adapter)
            sync()
            out["compile_first_images_s"] = round(time.perf_counter() - t, 2)
        images[mode] = s([PROMPT], seed=0, output_type="np")[0]  # warm-up (and the image compared)
        times = []
        for k in range(a.images):
            sync()
            t = time.perf_counter()
            s([PROMPT], seed=k + 1)
            sync()
            times.append(time.perf_counter() - t)
        out[f"warm_{mode}_s"] = round(float(np.median(times)), 3)
    out["fused_vs_unfused"] = round(out["warm_fused_s"] / out["warm_unfused_s"], 3)
    out["fused_max_pixel_diff_255"] = round(float(np.abs(images["fused"] - images["unfused"]).max() * 255), 2)
    out["compiled_vs_unfused"] = round(out["warm_compiled_s"] / out["warm_unfused_s"], 3)
    out["compiled_max_pixel_diff_255"] = round(float(np.abs(images["compiled"] - images["unfused"]).max() * 255), 2)
    if cuda:
        out["warm_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del s
    return out


def process(cmd: list[str]) -> tuple[float, int, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    return round(time.perf_counter() - t, 2), r.returncode, (r.stdout + r.stderr).strip().splitlines()[-1:]


def cold() -> dict:
    out = {}
    gen = [sys.executable, "-m", "glancetune", "generate", "--run", a.run, "--prompt", PROMPT + " (cold)",
           "--device", a.device]
    for name in ("cold_generate_cache_miss_s", "cold_generate_cache_hit_s"):
        out[name], rc, tail = process([*gen, "--output", f"/tmp/{name}.png"])
        out[name.replace("_s", "_rc")] = rc
        out[name.replace("_s", "_tail")] = tail
    if cuda:
        out["cold_naive_anchor_s"], rc, _ = process([sys.executable, "bench/naive_generate.py", a.model,
                                                     f"{a.run}/slow", f"{a.run}/fast", "/tmp/naive.png"])
        out["cold_naive_anchor_rc"] = rc
        out["cold_hit_vs_anchor"] = round(out["cold_generate_cache_hit_s"] / out["cold_naive_anchor_s"], 3)
    return out


print(json.dumps({**warm(), **cold()}), flush=True)

"""Sampling speed of glancetune (issue 12) against the naive diffusers anchor, in one process call each:

  warm   one GlanceSampler, 10-step images at the trained size: unfused adapters (default) vs `lora_mode fused`
         vs unfused with the transformer's blocks compiled (compile_repeated_blocks; its first images timed apart)
         and, with --fp8 (CUDA, sm89+), compiled with the base linears in torchao's fp8 dynamic-activation /
         fp8-weight form (real fp8 matmuls; LoRA layers stay as they are): the issue's "fp8 inference option",
         measured before building (1 warm-up + N timed images each, synchronised), and the max pixel difference of
         each to unfused;
  cold   `glancetune generate` as a whole process, twice with the same prompt: the first fills the prompt cache
         (text encoders loaded), the second finds it (no text encoder loaded); and the naive anchor
         (bench/measure/naive_generate.py: one pipeline, two adapters, adapter switched in a callback) as a process.

Prints one JSON line. Usage (GPU machine): python3 bench/measure/sample_speed.py --run RUN_DIR --model PIPELINE_DIR
Locally on CPU, to check the logic: python bench/measure/sample_speed.py --run RUN_DIR --model tiny-folder --device cpu
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
p.add_argument("--fp8", action="store_true", help="also the compiled fp8-matmul mode (CUDA sm89+)")
p.add_argument("--warm-only", action="store_true", help="skip the cold whole-process figures")
a = p.parse_args()
PROMPT = "a photograph of a red fox in the snow"
cuda = a.device.startswith("cuda")


def sync():
    if cuda:
        torch.cuda.synchronize()


def fp8_base(transformer) -> None:
    """torchao's fp8 dynamic-activation / fp8-weight linears (rowwise scales) for the base layers of the blocks;
    peft's LoRA layers (lora_A / lora_B) stay bf16. The blocks were compiled before: they recompile."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
              filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and "lora_" not in fqn)


def warm() -> dict:
    from glancetune.sampling.sampler import GlanceSampler, resolve_spec
    from glancetune.engine.speed import compile_blocks

    s = GlanceSampler.from_spec(resolve_spec(run=a.run), device=a.device)
    out = {}
    images = {}
    for mode in ("unfused", "fused", "compiled", *(("fp8",) if a.fp8 else ())):
        s.lora_mode = "fused" if mode == "fused" else "unfused"
        if mode in ("compiled", "fp8"):  # regional compile of the inference transformer (fp8: recompiled)
            t = time.perf_counter()
            if mode == "compiled":
                compile_blocks(s.pipe.transformer)  # as the training job compiles
            else:
                try:
                    fp8_base(s.pipe.transformer)
                    s([PROMPT], seed=0, output_type="np")
                except Exception as e:  # noqa: BLE001 - a bench: the failure is the figure
                    print(json.dumps({**out, "fp8_error": f"{type(e).__name__}: {e}"[:400]}), flush=True)
                    break
            s([PROMPT], seed=0, output_type="np")  # compiles (one graph per adapter)
            sync()
            out[f"{mode}_first_images_s"] = round(time.perf_counter() - t, 2)
        images[mode] = s([PROMPT], seed=0, output_type="np")[0]  # warm-up (and the image compared)
        times = []
        for k in range(a.images):
            sync()
            t = time.perf_counter()
            s([PROMPT], seed=k + 1)
            sync()
            times.append(time.perf_counter() - t)
        out[f"warm_{mode}_s"] = round(float(np.median(times)), 3)
        print(json.dumps({"partial": mode, **out}), flush=True)  # a later mode's crash or a timeout keeps these
    out["fused_vs_unfused"] = round(out["warm_fused_s"] / out["warm_unfused_s"], 3)
    out["fused_max_pixel_diff_255"] = round(float(np.abs(images["fused"] - images["unfused"]).max() * 255), 2)
    for mode in ("compiled", "fp8")[:1 + a.fp8]:
        if mode not in images:
            continue
        out[f"{mode}_vs_unfused"] = round(out[f"warm_{mode}_s"] / out["warm_unfused_s"], 3)
        out[f"{mode}_max_pixel_diff_255"] = round(float(np.abs(images[mode] - images["unfused"]).max() * 255), 2)
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
        out["cold_naive_anchor_s"], rc, _ = process([sys.executable, "bench/measure/naive_generate.py", a.model,
                                                     f"{a.run}/slow", f"{a.run}/fast", "/tmp/naive.png"])
        out["cold_naive_anchor_rc"] = rc
        out["cold_hit_vs_anchor"] = round(out["cold_generate_cache_hit_s"] / out["cold_naive_anchor_s"], 3)
    return out


print(json.dumps({**warm(), **({} if a.warm_only else cold())}), flush=True)

"""The memory estimate (src/glancetune/engine/fit.py) against measured peaks on settings it was NOT fitted to.

Each setting runs bench/measure/train_step.py (glancetune's training step on a full-size random architecture) in its
own process, with its own timeout cut to what is left of --budget; the estimate is computed here from the same
shape (the run's parameter and LoRA counts, the architecture's width and blocks, image + text tokens) and the same
settings, and printed beside the measured peak (GiB allocated over the timed steps) with the ratio. One JSON line
per setting, then a summary line (how many within +-15%).

    python3 bench/measure/fit_check.py [--budget 540] [--only NAME ...]
CPU check of the logic (tiny architectures, no peak measured, the estimate still printed):
    python bench/measure/fit_check.py --tiny
"""
import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from step_models import MODELS  # noqa: E402

from glancetune.engine.fit import Shape, train_gib  # noqa: E402

# name -> (model, precision, optimizer, gc, gc backend, rank, resolution, phases); none of these is a row the
# estimate's constants were fitted to (those are 1024², rank 32, mostly gradient checkpointing; tests/test_fit.py)
SETTINGS = {
    "flux1-bf16-r16-768-2ph": ("flux1", "no_change", "adamw", 1, "torch", 16, 768, 2),
    "qwen-bf16-nogc-512": ("qwen", "no_change", "adamw", 0, "torch", 32, 512, 1),
    "klein-bf16-1024-2ph": ("flux2-klein-9b", "no_change", "adamw", 1, "torch", 32, 1024, 2),
    "flux1-nf4-a8-r64-2ph": ("flux1", "nf4-bnb", "adamw8bit", 1, "torch", 64, 1024, 2),
    "qwen-nf4-a8-unsloth": ("qwen", "nf4-bnb", "adamw8bit", 1, "unsloth", 32, 1024, 1),
    "klein-nf4-a8-nogc-512": ("flux2-klein-9b", "nf4-bnb", "adamw8bit", 0, "torch", 32, 512, 1),
    "flux1-int8-nogc-512": ("flux1", "int8-quanto", "adamw", 0, "torch", 32, 512, 1),
    "qwen-int8-r64-768-2ph": ("qwen", "int8-quanto", "adamw", 1, "torch", 64, 768, 2),
    "klein-int8-r16-768": ("flux2-klein-9b", "int8-quanto", "adamw", 1, "torch", 16, 768, 1),
}


def estimate(name: str, measured: dict) -> float:
    model, precision, optimizer, gc, backend, rank, res, phases = SETTINGS[name]
    arch = MODELS[model].arch
    hidden = arch["num_attention_heads"] * arch["attention_head_dim"]
    blocks = arch.get("num_layers", 0) + arch.get("num_single_layers", 0)
    tokens = (res // 16) ** 2 + MODELS[model].text_tokens
    shape = Shape(int(measured["params_b"] * 1e9), int(measured["lora_m"] * 1e6), hidden, blocks, tokens)
    settings = {"base_model_precision": precision, "optimizer": optimizer, "gradient_checkpointing": bool(gc),
                "gradient_checkpointing_backend": backend}
    return train_gib(shape, settings, 16, 1, phases)["total"]


def run(name: str, limit: float, tiny: bool) -> dict:
    model, precision, optimizer, gc, backend, rank, res, phases = SETTINGS[name]
    cmd = [sys.executable, str(HERE / "train_step.py"), "--model", model, "--precision", precision, "--optimizer",
           optimizer, "--gc", str(gc), "--gc-backend", backend, "--rank", str(rank), "--res", str(res),
           "--phases", str(phases), "--warmup", "1", "--steps", "2"]
    if tiny:
        cmd += ["--tiny", "--device", "cpu"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"setting": name, "skipped": f"timed out after {limit:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"setting": name, "rc": proc.returncode, "tail": (proc.stdout + proc.stderr)[-600:]}
    got = json.loads(lines[-1])
    est = estimate(name, got)
    peak = got.get("peak_train_gib")
    row = {"setting": name, "model": model, "precision": precision, "optimizer": optimizer, "gc": gc,
           "gc_backend": backend, "rank": rank, "res": res, "phases": phases, "estimate_gib": round(est, 2),
           "measured_gib": peak, "s_per_step": got["train_s_per_step"], "wall_s": round(time.perf_counter() - t0, 1)}
    if peak:
        row["ratio"] = round(est / peak, 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=540, help="seconds for all settings together")
    ap.add_argument("--only", nargs="*", default=list(SETTINGS))
    ap.add_argument("--tiny", action="store_true", help="tiny architectures on the CPU: checks the logic only")
    a = ap.parse_args()
    unknown = [n for n in a.only if n not in SETTINGS]
    if unknown:
        sys.exit(f"--only: unknown setting(s) {unknown}; known: {list(SETTINGS)}")
    end = time.monotonic() + a.budget
    rows = []
    for name in a.only:
        left = end - time.monotonic() - 5
        if left < 30:
            rows.append({"setting": name, "skipped": "time budget spent"})
        else:
            rows.append(run(name, min(left, 200), a.tiny))
        print(json.dumps(rows[-1]), flush=True)
    ratios = [r["ratio"] for r in rows if "ratio" in r]
    print(json.dumps({"measured": len(ratios), "within_15pct": sum(abs(r - 1) <= 0.15 for r in ratios),
                      "ratios": ratios, "families": sorted({r["model"] for r in rows if "ratio" in r})}), flush=True)


if __name__ == "__main__":
    main()

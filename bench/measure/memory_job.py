"""Whole `glancetune glance` jobs (encode + train + save, one process each, cold caches) on a full-size random
pipeline at 1024², rank 32, batch 1, gradient checkpointing on, one configuration per memory setting; the bf16
anchor loop (bench/measure/anchor_loop.py) runs in the same call. --family: flux (FLUX.1-dev, bench/measure/seed_recipe.py
--build-only), qwen or klein (Qwen-Image, FLUX.2-klein-9B: bench/measure/full_folder.py); `te` in CONFIGS is the family's
one big text encoder (FLUX.1: T5 = text_encoder_2). Prints one JSON line per job: peak allocated /
reserved GiB per phase (the job's own report), s per phase step (train_log.jsonl, after 2 warm-up steps), the
first and last losses per phase, wall time, and the ratio of s/step to the anchor's.

    python3 bench/measure/memory_job.py --model /tmp/fluxfull --steps 10 [--family flux|qwen|klein] [--only NAME ...]
CPU check of the logic: --family qwen --model <full_folder.py --tiny folder> --res 256 --anchor 0
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {  # name -> config keys on top of the common ones
    "bf16": {},
    "int8-quanto": {"base_model_precision": "int8-quanto", "te": "int8-quanto"},
    "nf4-bnb": {"base_model_precision": "nf4-bnb", "te": "int8-quanto"},
    "nf4-bnb+adamw8bit": {"base_model_precision": "nf4-bnb", "te": "int8-quanto",
                          "optimizer": "adamw8bit"},
    "nf4-all": {"base_model_precision": "nf4-bnb", "te": "nf4-bnb"},
    "nf4-all+adamw8bit": {"base_model_precision": "nf4-bnb", "te": "nf4-bnb", "optimizer": "adamw8bit"},
    "int4-quanto+startup": {"base_model_precision": "int4-quanto", "te": "int4-quanto",
                            "offload_during_startup": True},
    "int8-torchao": {"base_model_precision": "int8-torchao", "te": "int8-quanto"},
    # distill: 1 caption + 1 glance_prompt x 1 seed: the teacher samples 2 trajectories of 40 steps first
    "distill-bf16": {"glance_objective": "distill", "glance_prompts": ["a red fox"]},
    "distill-nf4-all+adamw8bit": {"base_model_precision": "nf4-bnb", "te": "nf4-bnb", "optimizer": "adamw8bit",
                                  "glance_objective": "distill", "glance_prompts": ["a red fox"]},
    # quanto bases cannot be group-offloaded for training (refused); torchao weights pass diffusers' hooks
    "int8-torchao+group-offload": {"base_model_precision": "int8-torchao", "te": "int8-quanto",
                                   "enable_group_offload": True, "group_offload_text_encoder": True,
                                   "group_offload_vae": True},
}

FAMILY = {  # --family -> (config keys, the big text encoder's precision key, anchor_loop.py --model or None)
    "flux": ({"model_family": "flux"}, "text_encoder_2_precision", "flux1"),
    "qwen": ({"model_family": "qwen_image"}, "text_encoder_1_precision", "qwen"),
    "klein": ({"model_family": "flux2", "model_flavour": "klein-9b"}, "text_encoder_1_precision", None),
}

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="/tmp/fluxfull")
ap.add_argument("--family", choices=("flux", "qwen", "klein"), default="flux")
ap.add_argument("--res", type=int, default=1024)
ap.add_argument("--job-timeout", type=int, default=240, help="seconds per job process")
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--only", nargs="*", default=list(CONFIGS))
ap.add_argument("--work", default="/tmp/memjobs")
ap.add_argument("--anchor", type=int, default=1, help="run the anchor loop after the jobs (1) or not (0)")
ap.add_argument("--out", default=os.environ.get("OUT", "/tmp"), help="memory_jobs.jsonl is appended here, line by line")
a = ap.parse_args()
work = Path(a.work)
(work / "data").mkdir(parents=True, exist_ok=True)


def dataset():
    import numpy as np
    from PIL import Image

    n = a.res - 1
    y, x = np.mgrid[0:a.res, 0:a.res]
    im = np.stack([(x * 255 // n), (y * 255 // n), ((x + y) * 127 // n)], -1).astype("uint8")
    Image.fromarray(im).save(work / "data" / "glance.png")
    (work / "data" / "glance.txt").write_text("a colourful gradient")
    (work / "mdb.json").write_text(json.dumps([{"backend": "simple", "resolution": a.res, "image_dir":
                                                str(work / "data"), "caption_extension": ".txt"}]))


def phase_stats(jsonl: Path) -> dict:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    out = {}
    for ph in sorted({r["phase"] for r in rows}):
        r = [x for x in rows if x["phase"] == ph]
        secs = [x["seconds"] for x in r[2:]]
        out[ph] = {"loss_first": r[0]["loss"], "loss_last": r[-1]["loss"],
                   "s_per_step": round(sum(secs) / len(secs), 4) if secs else None,
                   "peak_gib_steps": max(x["peak_memory_gib"] or 0 for x in r)}
    return out


def job(name: str) -> dict:
    d = work / name
    keys = {FAMILY[a.family][1] if k == "te" else k: v for k, v in CONFIGS[name].items()}
    cfg = {**FAMILY[a.family][0], "pretrained_model_name_or_path": a.model, "data_backend_config":
           str(work / "mdb.json"), "max_train_steps": a.steps, "lora_rank": 32, "output_dir": str(d / "out"),
           "cache_dir": str(d / "cache"), "gradient_checkpointing": True, "checkpointing_steps": 0,
           "seed": 0, "glance_objective": "flow", "glance_ladder": "glance", **keys}  # the paper's mode unless a
    # row names another (the defaults search the ladder and distil: minutes more, measured in their own rows)
    d.mkdir(parents=True, exist_ok=True)
    (d / "glance.json").write_text(json.dumps(cfg))
    t = time.time()
    try:
        p = subprocess.run([sys.executable, "-m", "glancetune", "glance", "--config", str(d / "glance.json")],
                           capture_output=True, text=True, timeout=a.job_timeout)
    except subprocess.TimeoutExpired as e:
        p = subprocess.CompletedProcess(e.cmd, 124, (e.stdout or b"").decode(errors="replace"),
                                        (e.stderr or b"").decode(errors="replace"))
    row = {"job": name, "rc": p.returncode, "wall_s": round(time.time() - t, 1)}
    text = p.stdout + p.stderr
    m = re.search(r"peak GPU memory \(allocated / reserved\): (.*)", text)
    if m:
        for part in m.group(1).split("; "):
            k, v = part.rsplit(" ", 4)[0], part.rsplit(" ", 4)[1:]
            row[f"peak_{k}"] = {"allocated": float(v[0]),
                                                                     "reserved": float(v[2])}
    m = re.search(r"teacher: (\d+) trajectories of (\d+) steps sampled \((\d+) transformer passes, ([\d.]+)s\)", text)
    if m:
        row["teacher"] = {"trajectories": int(m.group(1)), "steps": int(m.group(2)), "passes": int(m.group(3)),
                          "seconds": float(m.group(4))}
    m = re.search(r"allocator \(train\): (.*)", text)  # the caching allocator's split / segment counts
    if m:
        row["allocator_train"] = m.group(1)
    row["phases"] = phase_stats(d / "out" / "train_log.jsonl")
    if p.returncode:
        row["tail"] = text.strip().splitlines()[-3:]
    return row


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)
    with open(Path(a.out) / "memory_jobs.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


dataset()
rows = []
for name in a.only:  # jobs first: a call cut short still returns their lines
    rows.append(job(name))
    emit(rows[-1])
    os.system(f"rm -rf {work / name / 'cache'}")
if a.anchor and FAMILY[a.family][2]:  # the same call: ratios of every job's s/step to the anchor's
    p = subprocess.run([sys.executable, "bench/measure/anchor_loop.py", "--model", FAMILY[a.family][2], "--gc", "1", "--steps", "4"],
                       capture_output=True, text=True)
    lines = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    anchor = next((x.get("train_s_per_step") for x in lines), None)
    emit({"anchor": lines})
    if anchor:
        emit({"s_per_step_vs_anchor": {r["job"]: round(sum(per) / len(per) / anchor, 3) for r in rows
                                       if (per := [v["s_per_step"] for v in r["phases"].values() if v["s_per_step"]])}})

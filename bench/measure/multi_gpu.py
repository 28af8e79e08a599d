"""Issue 15 on a multi-GPU machine, one table per call (also runs with one GPU, and on the CPU over gloo):

  --what ddp     `glance` on K images: 1 process at train_batch_size B x N against N processes at B (the same global
                 batch): samples/s of each (median job step after warm-up, from train_log.jsonl), the speed-up, and
                 both loss curves' means over the second half (per-rank draws differ, so they agree within noise,
                 not bit for bit).
  --what phases  the whole `glance` job, one process against `parallel_phases: true` on 2 processes, caches warm
                 for both: wall seconds, the ratio, the largest LoRA difference between the two runs.

The dataset (K smooth random images with captions), the configs and the runs live under --work; the caches are
filled once first (`glancetune cache`), so no run pays for encoding. Prints one JSON line per run and one summary.

GPU machine (PYTHONPATH holds the carried wheels and src), the full-size random FLUX.1-dev folder from
bench/measure/seed_recipe.py --build-only:   python3 bench/measure/multi_gpu.py --model /tmp/fluxfull --what ddp --nproc 2
CPU check (two processes over gloo, tiny model):
    python bench/measure/multi_gpu.py --model "$(glancetune tiny flux /tmp/tf >/dev/null; echo /tmp/tf)" --cpu \
        --what ddp --nproc 2 --res 128 --steps 6 --images 4 --rank 4
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--what", choices=("ddp", "phases"), required=True)
p.add_argument("--nproc", type=int, default=2)
p.add_argument("--work", default="/tmp/multi_gpu")
p.add_argument("--res", type=int, default=1024)
p.add_argument("--steps", type=int, default=12, help="steps per phase")
p.add_argument("--images", type=int, default=8)
p.add_argument("--batch", type=int, default=1, help="train_batch_size per process (ddp)")
p.add_argument("--rank", type=int, default=32)
p.add_argument("--cpu", action="store_true", help="CPU processes over gloo (logic check)")
p.add_argument("--timeout", type=int, default=400, help="seconds per run")
a = p.parse_args()
work = Path(a.work)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", **({"OMP_NUM_THREADS": "1", "MKL_CBWR": "AUTO,STRICT"} if a.cpu else {})}


def dataset() -> Path:
    d = work / "data"
    if d.exists():
        return d
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(a.images):  # smooth random colour fields: cheap, distinct, compressible
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((a.res, a.res), Image.BICUBIC).save(d / f"img{k}.png")
        (d / f"img{k}.txt").write_text(f"a smooth colour field, number {k}")
    return d


def config(name: str, **keys) -> Path:
    root = work / name
    (root / "config").mkdir(parents=True, exist_ok=True)
    backend = root / "config" / "multidatabackend.json"
    backend.write_text(json.dumps([{"backend": "simple", "resolution": a.res, "shuffle": True,
                                    "image_dir": str(dataset()), "caption_extension": ".txt"}]))
    cfg = {"model_type": "lora", "model_family": "flux", "pretrained_model_name_or_path": a.model,
           "data_backend_config": str(backend), "max_train_steps": a.steps, "lora_rank": a.rank,
           "output_dir": str(root / "output"), "cache_dir": str(work / "cache"), "gradient_checkpointing": True,
           "mixed_precision": "no" if a.cpu else "bf16", "seed": 0, "logging_steps": 1, **keys}
    path = root / "config" / "glance.json"
    path.write_text(json.dumps(cfg))
    return path


def launch(cfg: Path, nproc: int, *extra: str) -> tuple[float, subprocess.CompletedProcess]:
    if nproc == 1:
        cmd = [sys.executable, "-m", "glancetune", "glance", "--config", str(cfg), *extra]
    else:  # --multi_gpu without GPUs runs torchrun with gloo (accelerate's --cpu starts one process without MPI)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
               "--num_machines", "1", "--mixed_precision", "no" if a.cpu else "bf16", "--dynamo_backend", "no",
               "-m", "glancetune", "glance", "--config", str(cfg), *extra]
    t = time.perf_counter()
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=a.timeout)
    return time.perf_counter() - t, r


def fail(name: str, r: subprocess.CompletedProcess) -> None:
    print(json.dumps({"run": name, "rc": r.returncode, "tail": (r.stderr or r.stdout).strip().splitlines()[-4:]}))
    sys.exit(1)


def log(cfg: Path) -> list[dict]:
    out = json.loads(cfg.read_text())["output_dir"]
    return [json.loads(x) for x in (Path(out) / "train_log.jsonl").read_text().splitlines()]


def curve(records: list[dict]) -> dict:
    """Median seconds per job step (both phases) after 2 warm-up steps; mean loss per phase over the second half."""
    steps: dict[int, float] = {}
    for x in records:
        steps[x["step"]] = steps.get(x["step"], 0.0) + x["seconds"]
    timed = [s for k, s in sorted(steps.items()) if k > 2]
    half = a.steps // 2
    loss = {ph: statistics.mean(x["loss"] for x in records if x["phase"] == ph and x["step"] > half)
            for ph in ("slow", "fast")}
    return {"s_per_job_step": round(statistics.median(timed), 4), "loss_second_half": loss}


def loras(cfg: Path) -> dict:
    from safetensors.torch import load_file

    out = Path(json.loads(cfg.read_text())["output_dir"])
    return {r: load_file(str(out / r / "pytorch_lora_weights.safetensors")) for r in ("slow", "fast")}


def fill_caches(cfg: Path) -> None:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "glancetune", "cache", "--config", str(cfg)], env=ENV,
                       capture_output=True, text=True, timeout=a.timeout)
    if r.returncode:
        fail("cache", r)
    print(json.dumps({"cache_s": round(time.perf_counter() - t, 1)}), flush=True)


if a.what == "ddp":
    one = config("ddp-one", train_batch_size=a.batch * a.nproc)
    many = config(f"ddp-n{a.nproc}", train_batch_size=a.batch)
    fill_caches(one)
    rows = []
    for name, cfg, n in (("1 process", one, 1), (f"{a.nproc} process(es)", many, a.nproc)):
        wall, r = launch(cfg, n)
        if r.returncode:
            fail(name, r)
        c = curve(log(cfg))
        global_batch = a.batch * a.nproc
        c.update(run=name, wall_s=round(wall, 1), global_batch=global_batch,
                 samples_per_s=round(2 * global_batch / c["s_per_job_step"], 3))  # a job step = one batch per phase
        rows.append(c)
        print(json.dumps(c), flush=True)
    print(json.dumps({"ddp_speedup": round(rows[1]["samples_per_s"] / rows[0]["samples_per_s"], 3),
                      "nproc": a.nproc}), flush=True)
else:  # needs 2 devices (or the CPU)
    single = config("single")
    par = config("parallel", parallel_phases=True)
    fill_caches(single)
    walls = {}
    for name, cfg, n in (("1 process", single, 1), ("parallel_phases, 2 processes", par, 2)):
        wall, r = launch(cfg, n)
        if r.returncode:
            fail(name, r)
        walls[n] = wall
        print(json.dumps({"run": name, "wall_s": round(wall, 1), **curve(log(cfg))}), flush=True)
    x, y = loras(single), loras(par)
    diff = max(float((x[r][k].float() - y[r][k].float()).abs().max()) for r in x for k in x[r])
    print(json.dumps({"parallel_vs_single_wall": round(walls[2] / walls[1], 3), "lora_max_abs_diff": diff}),
          flush=True)

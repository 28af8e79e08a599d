"""What a checkpoint costs on the built-in tiny model (CPU): seconds per checkpoint write, its size on disk, and
the job's wall time with checkpoints every step vs none. Run from the repository root:
    OMP_NUM_THREADS=1 python bench/measure/checkpoint_cost.py [--steps 40] [--rank 16]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from conftest import write_configs  # noqa: E402  (the tests' tiny dataset + config writer)

from glancetune.cli import main  # noqa: E402
from glancetune.train import checkpoint  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=40)
p.add_argument("--rank", type=int, default=16)
p.add_argument("--resolution", type=int, default=512)
a = p.parse_args()

saves = []
orig = checkpoint.Checkpoints.save


def timed(self, run, step):
    t = time.perf_counter()
    orig(self, run, step)
    saves.append(time.perf_counter() - t)


checkpoint.Checkpoints.save = timed
root = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
os.environ["GLANCETUNE_HOME"] = str(root / "home")
model = root / "tiny-flux"
assert main(["tiny", "flux", str(model)]) == 0
out = {}
for every in (0, 1):
    cfg = write_configs(root / f"run{every}", str(model), resolution=a.resolution, steps=a.steps,
                        **{"--lora_rank": a.rank, "--checkpointing_steps": every, "--checkpoints_total_limit": 3})
    main(["cache", "--config", str(cfg)])  # encodings first: both runs start from a warm cache
    t = time.perf_counter()
    assert main(["glance", "--config", str(cfg)]) == 0
    out[every] = time.perf_counter() - t
ck = sorted((root / "run1" / "output").glob("checkpoint-*"))[-1]
size = sum(f.stat().st_size for f in ck.rglob("*") if f.is_file())
res = {"steps": a.steps, "rank": a.rank, "resolution": a.resolution, "checkpoints": len(saves),
       "s_per_checkpoint_mean": round(sum(saves) / len(saves), 4), "s_per_checkpoint_max": round(max(saves), 4),
       "checkpoint_mib": round(size / 2**20, 2), "job_s_no_checkpoints": round(out[0], 2),
       "job_s_checkpoint_every_step": round(out[1], 2)}
print(json.dumps(res))
shutil.rmtree(root, ignore_errors=True)

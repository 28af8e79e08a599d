"""A 200-image synthetic dataset on the tiny FLUX.1 model (CPU): time `glancetune cache` per image (cold and warm),
then start training on it (2 steps) from the warm cache. Run: python bench/measure/cache_200.py [--n 200] [--res 256]."""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=200)
ap.add_argument("--res", type=int, default=256)
a = ap.parse_args()

root = Path(tempfile.mkdtemp(prefix="glancetune-cache200-"))
os.environ["GLANCETUNE_HOME"] = str(root / "home")
from glancetune.cli import main  # noqa: E402

data = root / "data"
data.mkdir()
rng = np.random.default_rng(0)
sizes = [(640, 480), (480, 640), (512, 512), (800, 450)]  # four aspect buckets
for i in range(a.n):
    w, h = sizes[i % len(sizes)]
    Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(data / f"img{i:03d}.jpg", quality=90)
    (data / f"img{i:03d}.txt").write_text(f"synthetic picture number {i}")
backend = root / "multidatabackend.json"
backend.write_text(json.dumps([{"id": "synthetic", "type": "local", "instance_data_dir": str(data),
                                "caption_strategy": "textfile", "resolution": a.res, "resolution_type": "pixel_area",
                                "cache_dir_vae": str(root / "cache" / "vae")},
                               {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True,
                                "cache_dir": str(root / "cache" / "text")}]))
cfg = root / "config.json"
cfg.write_text(json.dumps({"model_family": "flux", "pretrained_model_name_or_path": "tiny:flux",
                           "data_backend_config": str(backend), "max_train_steps": 2, "train_batch_size": 2,
                           "lora_rank": 4, "output_dir": str(root / "out")}))
main(["tiny", "flux", str(root / "warm")])  # import + build once, outside the timings

t0 = time.perf_counter()
assert main(["cache", "--config", str(cfg)]) == 0
cold = time.perf_counter() - t0
t0 = time.perf_counter()
assert main(["cache", "--config", str(cfg)]) == 0
warm = time.perf_counter() - t0
t0 = time.perf_counter()
assert main(["glance", "--config", str(cfg)]) == 0
train = time.perf_counter() - t0
print(f"\n{a.n} images at {a.res}^2 area, tiny FLUX.1, CPU ({os.cpu_count()} cores), python {sys.version.split()[0]}")
print(f"cache cold: {cold:.1f}s = {cold / a.n * 1000:.0f} ms/image (discovery + decode/crop + VAE + text encoders)")
print(f"cache warm: {warm:.1f}s = {warm / a.n * 1000:.1f} ms/image (all hits: hash files, read entries)")
print(f"glance (2 steps per phase) from the warm cache: {train:.1f}s")

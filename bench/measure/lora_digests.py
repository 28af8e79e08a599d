"""Same-seed LoRA files, as digests: train three tiny jobs (`glance` with the flow loss, `train`, `glance` with
`glance_objective: trajectory`) on a fixed image with fixed seeds, and print per LoRA file the sha256 of its tensors,
of its header and of its whole bytes (the run's temporary folder masked). Run it on two checkouts to show a change
leaves the trained files byte-identical (CPU, one thread, ~15 s):

    python bench/measure/lora_digests.py > after.json
    cd /path/to/other/checkout && PYTHONPATH=src python /path/to/this/bench/measure/lora_digests.py > before.json
    diff before.json after.json

A fresh $GLANCETUNE_HOME also rebuilds the tiny model from the code of the checkout that runs.
"""
import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402

from glancetune.cli import main  # noqa: E402


def dataset(root: Path) -> Path:
    root.mkdir(parents=True)
    arr = (np.random.default_rng(0).random((128, 128, 3)) * 255).astype("uint8")
    Image.fromarray(arr).save(root / "img0.png")
    (root / "img0.txt").write_text("a red gradient")
    return root


def digests(f: Path, tmp: Path) -> list[str]:
    """sha256 (16 hex) of the tensors, of the header and of the whole file, `tmp` masked."""
    h = hashlib.sha256()
    with safe_open(str(f), "pt") as s:
        meta = s.metadata() or {}
        for k in sorted(s.keys()):
            h.update(k.encode())
            h.update(s.get_tensor(k).float().numpy().tobytes())
    header = json.dumps(meta, sort_keys=True).replace(str(tmp), "TMP").encode()
    whole = f.read_bytes().replace(str(tmp).encode(), b"TMP")
    return [h.hexdigest()[:16], hashlib.sha256(header).hexdigest()[:16], hashlib.sha256(whole).hexdigest()[:16]]


def run(tmp: Path, name: str, command: str, **extra) -> dict:
    root = tmp / name
    data = dataset(root / "data")
    backend = root / "backend.json"
    backend.write_text(json.dumps([{"backend": "simple", "resolution": 128, "image_dir": str(data),
                                    "caption_extension": ".txt"}]))
    cfg = {"model_family": "flux", "pretrained_model_name_or_path": "tiny:flux", "data_backend_config": str(backend),
           "max_train_steps": 4, "lora_rank": 4, "output_dir": str(root / "out"), "seed": 3, **extra}
    (root / "c.json").write_text(json.dumps(cfg))
    with contextlib.redirect_stdout(sys.stderr):  # the job's own lines; stdout is the digests
        assert main([command, "--config", str(root / "c.json")]) == 0
    return {str(f.relative_to(root)): digests(f, tmp) for f in sorted((root / "out").rglob("*.safetensors"))
            if "checkpoint" not in str(f)}


if __name__ == "__main__":
    tmp = Path(tempfile.mkdtemp())
    result = {"glance": run(tmp, "g", "glance"), "train": run(tmp, "t", "train"),
              "trajectory": run(tmp, "tr", "glance", glance_objective="trajectory")}
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")

"""How fast a diffusers pipeline folder reaches the GPU (issue 12, "loading straight to the device"), stock diffusers
only, one way per process: `to` = `from_pretrained(dir, dtype=bf16).to(device)` (what glancetune's generate does
today: weights staged in CPU memory first), `device_map` = `from_pretrained(dir, dtype=bf16, device_map="cuda")`
(weights materialised on the GPU as they are read). Prints one JSON line: seconds to a usable pipeline, peak CPU RSS.

Usage (GPU machine): python3 bench/measure/load_speed.py --model /tmp/fluxfull --way to|device_map [--skip-encoders]
"""
import argparse
import json
import resource
import time

t0 = time.perf_counter()
import torch  # noqa: E402
from diffusers import DiffusionPipeline  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--way", choices=("to", "device_map"), required=True)
p.add_argument("--device", default="cuda")
p.add_argument("--skip-encoders", action="store_true", help="text_encoder*=None (as generate with a prompt-cache hit)")
a = p.parse_args()
t_import = time.perf_counter() - t0
skip = {"text_encoder": None, "text_encoder_2": None, "tokenizer": None, "tokenizer_2": None} if a.skip_encoders else {}
t1 = time.perf_counter()
if a.way == "to":
    pipe = DiffusionPipeline.from_pretrained(a.model, dtype=torch.bfloat16, **skip).to(a.device)
else:
    pipe = DiffusionPipeline.from_pretrained(a.model, dtype=torch.bfloat16, device_map=a.device, **skip)
if a.device.startswith("cuda"):
    torch.cuda.synchronize()
t_load = time.perf_counter() - t1
where = sorted({str(q.device) for q in pipe.transformer.parameters()})
print(json.dumps(dict(way=a.way, skip_encoders=a.skip_encoders, import_s=round(t_import, 2), load_s=round(t_load, 2),
                      transformer_on=where, cpu_maxrss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                                 / 2**20, 2))), flush=True)

"""FLUX.2-dev's 24B text encoder on a 24 GB budget (issue 10): `glancetune cache` on a FLUX.2-dev-layout folder whose
text encoder is the full-size Mistral-Small-3.1-24B text model (random weights), one process per memory setting.

    python bench/measure/encoder_24b.py --build DIR [--tiny|--narrow]  write the folder (--tiny: a small encoder, CPU check;
                                                               --narrow: the real width and depth with an MLP of 4096,
                                                               5.9B, 11 GiB: placement checks without 44 GiB of disk)
    python bench/measure/encoder_24b.py --measure NAME --model DIR     one `glancetune cache` under `timeout`: one JSON line
    python bench/measure/encoder_24b.py --probe-int4                   quanto int4 made on the CPU, moved to CUDA: timing

The folder (Flux2Pipeline, model_index.json as FLUX.2-dev's): `text_encoder` is Mistral3ForConditionalGeneration with
the real text config (40 layers, hidden 5120: 23.57B parameters, lm_head untied as in the real model) and a 1-layer
tiny Pixtral vision tower: 23.60B parameters, 44.0 GiB in bf16. FLUX.2 encodes text only (Flux2Pipeline never passes
pixel values), so the tower plays no part, but the memory figures exclude ~0.41B parameters (0.77 GiB in bf16) of
the real vision tower and projector (the real model: 24.01B). Everything else is `glancetune.families.flux2.build_flux2_dev()`'s
(byte-level tokenizer with Mistral's real special-token ids, tiny VAE, tiny transformer), except the transformer's
`joint_attention_dim`: 3 x the encoder's hidden size (hidden states 10/20/30 stacked), so the folder is consistent.
Weights are built on the GPU in bf16 (CPU with --tiny and no GPU) and saved as 5 GB safetensors shards.

--measure writes a one-image dataset and a config under --work, runs `python -m glancetune cache` in its own process
under `timeout`, and prints: rc, wall s, load s (the cache's "encoders loaded in" line), encode s (the rest of the
cache's own time), GPU memory after loading and the peaks (max_memory_allocated / max_memory_reserved, whole
process), and the children's peak CPU RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

# FLUX.2-dev text_encoder = Mistral-Small-3.1-24B's text model. Values as in DiffSynth-Studio's FLUX.2 text encoder
# config (github.com/modelscope/DiffSynth-Studio, diffsynth/models/flux2_text_encoder.py) and TensorRT-LLM's
# Mistral-Small-3.1-24B fixture (github.com/NVIDIA/TensorRT-LLM, tests/unittest/_torch/modeling/
# test_modeling_mistral.py, `mistral_small_3_1_24b_config`); both: image_token_index 10, spatial_merge_size 2, gelu
# projector without bias, vision_feature_layer -1.
MISTRAL_SMALL_31_TEXT = dict(
    hidden_size=5120, intermediate_size=32768, num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=8,
    head_dim=128, vocab_size=131072, max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu",
    rope_parameters={"rope_type": "default", "rope_theta": 1000000000.0}, tie_word_embeddings=False)
# --narrow: the real encoder with a 4096-wide MLP (5.9B; a layer 0.21 GiB, embeddings + lm_head 2.5 GiB)
NARROW_TEXT = dict(MISTRAL_SMALL_31_TEXT, intermediate_size=4096)
# --tiny: same layout, 31 layers so hidden states 10/20/30 exist
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=31, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16)

# name -> (config keys, timeout s), in the order run: by value. The text encoder is FLUX.2's only one, so its key is
# text_encoder_1_precision (memory.encoder_precisions: Flux2Dev.encoder_components = text_encoder, vae). Estimates on
# the H200 machine (16 cores), each including ~10 s of imports and loading 44.0 GiB of safetensors into CPU RAM
# (~30-60 s from the page cache the build leaves).
CONFIGS = {
    # (d) no quantization library: diffusers block-level group offload, one decoder layer (1.04 GiB) on the GPU at a
    # time plus embed/lm_head (2.5 GiB); one forward moves ~44 GiB over PCIe (~5 s). ~60-90 s. Session 13: the load
    # peaked at 43.96 GiB (the whole encoder went to the GPU first); fixed, the narrow build then peaked at 3.02.
    "bf16+group-offload": ({"group_offload_text_encoder": True, "group_offload_type": "block_level"}, 150),
    # (c) bitsandbytes NF4 while loading, straight onto the GPU (~12-14 GiB resident: 4-bit linears with fp32
    # absmax per 64 weights; transformers keeps lm_head in bf16). ~60-90 s.
    "nf4-bnb": ({"text_encoder_1_precision": "nf4-bnb"}, 150),
    # (a) quanto int8 on the CPU before moving, the GPU never holds bf16 (~22.6 GiB resident: 21.3 GiB int8 linears
    # + the 1.25 GiB bf16 embedding). quanto int8 on the CPU: 19M weights/s on one core (measured on the CPU
    # machine), 22.9B weights -> ~75 s on 16 ideal cores, say 2x that. ~150-250 s.
    "int8-quanto": ({"text_encoder_1_precision": "int8-quanto", "quantize_via": "cpu"}, 300),
    # (b) int4 quantized ON THE GPU: made on the CPU, quanto packs int4 for the CPU tinygemm kernel and unpacks it
    # when moving to CUDA with an identity matmul (optimum/quanto/tensor/weights/tinygemm/packed.py): ~300 TMAC for
    # this encoder, ~13 min on 16 ideal cores at the 24 GMAC/s per core measured on the CPU machine (--probe-int4
    # times it on the GPU machine). On the GPU the load peaks at bf16 (~44 GiB); "after loading" is the int4 figure
    # (~12.6 GiB: 10.7 int4 + 0.7 group scales/shifts + the 1.25 bf16 embedding). ~60-90 s.
    "int4-quanto": ({"text_encoder_1_precision": "int4-quanto", "quantize_via": "accelerator"}, 150),
    # (e) int8 + group offload, quantized on the GPU for time (on the CPU it is (a)'s quantization again). Session 13:
    # crashed in the first forward (the hooks leave quanto weights on the CPU); glancetune now refuses it in one line.
    "int8-quanto+group-offload": ({"text_encoder_1_precision": "int8-quanto", "quantize_via": "accelerator",
                                   "group_offload_text_encoder": True, "group_offload_type": "block_level"}, 150),
    # (f) session 13: quanto + group offload crashed (the hooks leave quanto weights on the CPU) and is now refused;
    # the quantized forms that may pass the hooks: torchao int8 quantized block by block on the GPU, and NF4
    "int8-torchao+group-offload": ({"text_encoder_1_precision": "int8-torchao", "quantize_via": "accelerator",
                                    "group_offload_text_encoder": True, "group_offload_type": "block_level"}, 150),
    "nf4-bnb+group-offload": ({"text_encoder_1_precision": "nf4-bnb", "group_offload_text_encoder": True,
                               "group_offload_type": "block_level"}, 150),
}


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


# --- the folder -------------------------------------------------------------------------------------------------
def text_encoder_config(tiny: bool, tok, vision, narrow: bool = False):
    from transformers import Mistral3Config

    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<pad>", "[IMG]")}
    text = dict(TINY_TEXT, vocab_size=len(tok)) if tiny else dict(NARROW_TEXT if narrow else MISTRAL_SMALL_31_TEXT)
    text.update(model_type="mistral", sliding_window=None, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                pad_token_id=ids["<pad>"])
    return Mistral3Config(text_config=text, vision_config=vision, image_token_index=ids["[IMG]"], spatial_merge_size=2,
                          multimodal_projector_bias=False, projector_hidden_act="gelu", vision_feature_layer=-1,
                          tie_word_embeddings=False)  # transformers 5 ties by the top-level key (default True)


def random_text_encoder(cfg, device):
    """Mistral3ForConditionalGeneration built directly on `device` in bf16 (random init there)."""
    import torch
    from transformers import Mistral3ForConditionalGeneration

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return Mistral3ForConditionalGeneration(cfg).eval()
    finally:
        torch.set_default_dtype(torch.float32)


def build(directory: Path, tiny: bool, narrow: bool = False) -> dict:
    import diffusers
    import torch
    import transformers
    from diffusers import Flux2Pipeline, Flux2Transformer2DModel

    from glancetune.families.flux2 import build_flux2_dev

    if (directory / "model_index.json").exists():  # a warm machine's earlier build: used as it is
        return {"build": str(directory), "reused": True}
    if directory.exists() and any(directory.iterdir()):
        raise SystemExit(f"--build: {directory} exists and is not empty")
    t0 = time.perf_counter()
    small = build_flux2_dev()  # tokenizer, VAE, scheduler, transformer config; its text encoder is replaced
    cfg = text_encoder_config(tiny, small.tokenizer, small.text_encoder.config.vision_config, narrow)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = random_text_encoder(cfg, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = Flux2Transformer2DModel.from_config(
            {**small.transformer.config, "joint_attention_dim": 3 * cfg.text_config.hidden_size})
    pipe = Flux2Pipeline(scheduler=small.scheduler, vae=small.vae, text_encoder=encoder, tokenizer=small.tokenizer,
                         transformer=transformer)
    built = time.perf_counter() - t0
    pipe.save_pretrained(directory, max_shard_size="5GB")
    params = sum(p.numel() for p in encoder.parameters())
    text = sum(p.numel() for n, p in encoder.named_parameters() if "vision_tower" not in n)
    files = sum(f.stat().st_size for f in (directory / "text_encoder").glob("*.safetensors"))
    return {"build": str(directory), "tiny": tiny, "narrow": narrow, "device": device, "torch": torch.__version__,
            "transformers": transformers.__version__, "diffusers": diffusers.__version__, "text_encoder_params": params,
            "params_outside_vision_tower": text, "text_encoder_disk_gib": round(files / 2**30, 3),
            "build_s": round(built, 1), "save_s": round(time.perf_counter() - t0 - built, 1)}


# --- one measurement --------------------------------------------------------------------------------------------
def dataset(work: Path) -> Path:
    """One 256x256 gradient + caption, and the dataloader JSON naming it."""
    import numpy as np
    from PIL import Image

    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:256, 0:256]
    Image.fromarray(np.stack([x, y, (x + y) // 2], -1).astype("uint8")).save(data / "img0.png")
    (data / "img0.txt").write_text("a colourful gradient, red to the right and green downwards", encoding="utf-8")
    backend = work / "multidatabackend.json"
    backend.write_text(json.dumps([{"backend": "simple", "resolution": 256, "image_dir": str(data),
                                    "caption_extension": ".txt"}]))
    return backend


def write_config(name: str, model: str, work: Path, device: str | None) -> Path:
    keys, _ = CONFIGS[name]
    d = work / name
    shutil.rmtree(d, ignore_errors=True)  # cold caches
    d.mkdir(parents=True)
    cfg = {"model_type": "lora", "model_family": "flux2", "model_flavour": "dev",
           "pretrained_model_name_or_path": model, "data_backend_config": str(dataset(work)),
           "train_batch_size": 1, "max_train_steps": 1, "lora_rank": 4, "output_dir": str(d / "out"),
           "cache_dir": str(d / "cache"), **({"device": device} if device else {}), **keys}
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    return d / "config.json"


PATTERNS = {  # the cache command's own lines (train/encode.py, cli.py cmd_cache)
    "load": r"encoders loaded in ([\d.]+)s(?:; GPU memory: ([\d.]+) GiB allocated now, peak ([\d.]+) / ([\d.]+) GiB)?",
    "total": r"entries computed, \d+ reused, in ([\d.]+)s",
    "peak": r"peak GPU memory \(allocated / reserved\): encode ([\d.]+) / ([\d.]+) GiB",
}


def parse(text: str) -> dict:
    m = {k: re.search(p, text) for k, p in PATTERNS.items()}
    row = {}
    if m["load"]:
        row["load_s"] = float(m["load"].group(1))
        if m["load"].group(2):
            row.update(after_load_alloc_gib=float(m["load"].group(2)), load_peak_alloc_gib=float(m["load"].group(3)),
                       load_peak_reserved_gib=float(m["load"].group(4)))
    if m["total"]:
        row["cache_s"] = float(m["total"].group(1))
        if "load_s" in row:
            row["encode_s"] = round(row["cache_s"] - row["load_s"], 1)
    if m["peak"]:
        row.update(peak_alloc_gib=float(m["peak"].group(1)), peak_reserved_gib=float(m["peak"].group(2)))
    return row


def measure(name: str, model: str, work: Path, timeout: int, device: str | None, logdir: Path) -> dict:
    cfg = write_config(name, model, work, device)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    p = subprocess.run(["timeout", "-k", "10", str(timeout), sys.executable, "-m", "glancetune", "cache", "--config",
                        str(cfg)], capture_output=True, text=True, env=env)
    text = p.stdout + p.stderr
    logdir.mkdir(parents=True, exist_ok=True)
    (logdir / f"encoder_24b_{name.replace('+', '_')}.log").write_text(text)  # plain file names for $OUT
    keys = CONFIGS[name][0]
    row = {"config": name, "keys": keys, "rc": p.returncode, "timeout_s": timeout,
           "timed_out": p.returncode in (124, 137), "wall_s": round(time.perf_counter() - t, 1), **parse(text),
           "cpu_maxrss_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2)}
    if p.returncode:
        row["tail"] = text.strip().splitlines()[-3:]
    return row


# --- int4 made on the CPU, moved to CUDA ------------------------------------------------------------------------
def probe_int4() -> dict:
    """One gate/up-projection shape (5120 -> 32768) quantized to quanto int4 on the CPU, then moved to CUDA: the
    move unpacks the CPU tinygemm layout with an identity matmul (cost ~ in^2 x out). Extrapolated to the encoder."""
    import torch
    from optimum.quanto import freeze, qint4, quantize

    m = torch.nn.Sequential(torch.nn.Linear(5120, 32768, bias=False, dtype=torch.bfloat16))
    t = time.perf_counter()
    quantize(m, weights=qint4)
    freeze(m)
    q = time.perf_counter() - t
    emit({"probe": "int4-quanto on the CPU", "quantize_cpu_s": round(q, 2)})  # a timeout in the move still says this
    t = time.perf_counter()
    m.to("cuda")
    torch.cuda.synchronize()
    move = time.perf_counter() - t
    shapes = [(5120, 4096), (5120, 1024), (5120, 1024), (4096, 5120), (5120, 32768), (5120, 32768), (32768, 5120)]
    macs = 40 * sum(i * i * o for i, o in shapes) + 5120 * 5120 * 131072  # layers + lm_head
    per = 5120 * 5120 * 32768 / move
    return {"probe": "int4-quanto on the CPU, moved to CUDA", "shape": [32768, 5120], "quantize_cpu_s": round(q, 2),
            "move_to_cuda_s": round(move, 2), "threads": torch.get_num_threads(),
            "extrapolated_move_min_24b": round(macs / per / 60, 1), "weight": type(m[0].weight).__name__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", metavar="DIR", help="write the FLUX.2-dev-layout folder")
    ap.add_argument("--tiny", action="store_true", help="with --build: a small text encoder (CPU check)")
    ap.add_argument("--narrow", action="store_true", help="with --build: the real width and depth, a 4096 MLP")
    ap.add_argument("--measure", metavar="NAME", choices=list(CONFIGS), help="one memory setting")
    ap.add_argument("--model", help="the folder --build wrote")
    ap.add_argument("--work", default="/tmp/te24work", help="dataset, configs and caches")
    ap.add_argument("--timeout", type=int, help="at most this many seconds for the cache process (the setting's "
                    "own limit otherwise)")
    ap.add_argument("--device", help="the config's device key (default: auto)")
    ap.add_argument("--logdir", default=os.environ.get("OUT", "/tmp"), help="the cache command's full output")
    ap.add_argument("--probe-int4", action="store_true", help="time an int4 layer made on the CPU moved to CUDA")
    a = ap.parse_args()
    if a.build:
        emit(build(Path(a.build), a.tiny, a.narrow))
    elif a.measure:
        if not a.model:
            ap.error("--measure needs --model")
        limit = min(CONFIGS[a.measure][1], a.timeout or 10**6)
        emit(measure(a.measure, a.model, Path(a.work), limit, a.device, Path(a.logdir)))
    elif a.probe_int4:
        try:
            emit(probe_int4())
        except Exception as e:  # e.g. no CUDA: still one line
            emit({"probe": "int4-quanto on the CPU, moved to CUDA", "error": f"{type(e).__name__}: {e}"})
    else:
        ap.error("give --build, --measure or --probe-int4")


if __name__ == "__main__":
    main()

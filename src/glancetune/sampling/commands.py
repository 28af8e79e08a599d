"""The sampling commands: `generate` (a slow+fast pair on its exact ladder) and `schedule` (a model's Glance ladder at
a resolution, from configs alone). Each command's parser and handler live here; cli.py registers them."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import GlanceError
from ..schedule import LADDER_STEPS


def add_parsers(sub) -> None:
    _generate_parser(sub)
    s = sub.add_parser("schedule", help="print the model's Glance ladder at a resolution")
    s.add_argument("--model", required=True, help="hub id, diffusers folder or tiny:<family>")
    s.add_argument("--resolution", type=int, default=1024)
    s.add_argument("--width", type=int)
    s.add_argument("--height", type=int)
    s.add_argument("--steps", type=int, default=LADDER_STEPS, help="N of the N-step schedule the ladder is cut from")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_schedule)
    _search_parser(sub)


def _search_parser(sub) -> None:
    s = sub.add_parser("search-ladder", help="find the N sigmas that best reproduce the base model's own fine-step "
                       "trajectory (a ladder file for generate --ladder-file)")
    s.add_argument("--model", required=True, help="hub id, diffusers folder or tiny:<family>")
    s.add_argument("--steps", type=int, default=10, help="N: sigmas in the ladder (transformer calls per image)")
    s.add_argument("--width", type=int, required=True)
    s.add_argument("--height", type=int, required=True)
    s.add_argument("--guidance", type=float, help="default: the family's inference default (true CFG scale or "
                   "guidance embedding)")
    s.add_argument("--prompts", help="prompt file: JSON name -> prompt, a JSON list, or text, one prompt a line (default: the "
                   "set shipped for eval)")
    s.add_argument("--seeds", type=int, default=1, help="seeds per prompt (0, 1, ...)")
    s.add_argument("--fine-steps", type=int, default=LADDER_STEPS, help="the teacher's steps: the model's own "
                   "schedule the ladder's sigmas are chosen from")
    s.add_argument("--max-sequence-length", type=int, metavar="N", help="the prompts' text length (default: the "
                   "family's; use the tokenizer_max_length you train and sample with)")
    s.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--output", required=True, help="the ladder file to write (JSON)")
    s.set_defaults(handler=cmd_search)


def cmd_search(args) -> int:
    from .ladder_search import run_search
    from .prompts import eval_prompts
    from .sampler import check_request

    for key, value, low in (("--steps", args.steps, 2), ("--seeds", args.seeds, 1), ("--fine-steps", args.fine_steps, 2)):
        if value < low:
            raise GlanceError(f"{key}: {value} is below {low}")
    if args.fine_steps <= args.steps:
        raise GlanceError(f"--fine-steps: {args.fine_steps} must be above --steps {args.steps} (the ladder's sigmas "
                          "are chosen from the fine schedule)")
    check_request(["x"], 0, args.width, args.height, args.guidance)
    prompts = [p.text for p in eval_prompts(args.prompts)]
    if args.max_sequence_length is not None and args.max_sequence_length < 1:
        raise GlanceError(f"--max-sequence-length: {args.max_sequence_length} is below 1")
    found = run_search(args.model, args.steps, args.width, args.height, args.guidance, prompts, args.seeds,
                       args.fine_steps, args.device, args.max_sequence_length)
    path = found.write(args.output)
    m = found.method
    print(f"wrote {path}: {len(found.sigmas)} sigmas " + ", ".join(f"{s:.4f}" for s in found.sigmas))
    print(f"distance to the {args.fine_steps}-step result: searched {m['cost']['searched']:.4g}, default "
          f"{len(found.sigmas)}-step schedule {m['cost']['default']:.4g}; {m['transformer_passes']} transformer "
          f"passes, {m['seconds']:.1f}s")
    return 0


class _Raising(argparse.ArgumentParser):
    """generate's arguments parsed from a `serve` request: an error is one line, not an exit."""

    def error(self, message):
        raise GlanceError(message)


def generate_parser() -> argparse.ArgumentParser:
    """generate's arguments alone (remote.py: the server reads a request with them)."""
    g = _Raising(prog="generate", add_help=False)
    _generate_args(g)
    return g


def _generate_parser(sub) -> None:
    _generate_args(sub.add_parser("generate", help="sample with a slow+fast pair on its exact ladder"))


def _generate_args(g) -> None:
    g.add_argument("--run", help="folder written by `glancetune glance` (holds slow/ and fast/)")
    g.add_argument("--slow", help="slow LoRA folder or .safetensors file")
    g.add_argument("--fast", help="fast LoRA folder or .safetensors file")
    g.add_argument("--prompt", action="append", required=True, help="prompt (repeat for a batch)")
    g.add_argument("--image", metavar="PATH", help="control image to edit (required for edit models, refused "
                   "for the others)")
    g.add_argument("--seed", type=int, default=0, help="0 to 2^64-1; image k of a batch uses seed+k")
    g.add_argument("--output", default="glance.png", help="image file: .png (parameters in a text chunk), .jpg/.jpeg "
                   "or .webp (parameters in the EXIF UserComment); a batch writes NAME-k.EXT; missing folders are "
                   "created")
    g.add_argument("--width", type=int, help="default: the size the LoRAs were trained at")
    g.add_argument("--height", type=int, help="default: the size the LoRAs were trained at")
    g.add_argument("--guidance", type=float, help="override the guidance stored at training time (>= 0)")
    g.add_argument("--model", help="override the base model stored in the LoRA metadata")
    g.add_argument("--negative-prompt", help="true-CFG families: replaces the pipeline's negative prompt")
    g.add_argument("--cfg-phases", choices=["both", "slow", "fast", "none"],
                   help="true-CFG families: which phases use CFG (default: both, as the official recipes)")
    g.add_argument("--ladder-file", metavar="FILE", help="sample on a searched ladder (search-ladder's JSON): with "
                   "the LoRAs given, or without --run/--slow/--fast the base model alone on it")
    g.add_argument("--ladder-slow-steps", type=int, metavar="K", help="with --ladder-file: the first K sigmas are "
                   "the slow phase (default: half)")
    g.add_argument("--slow-timesteps", help="explicit slow list (for LoRAs without glancetune metadata)")
    g.add_argument("--fast-timesteps", help="explicit fast list (for LoRAs without glancetune metadata)")
    g.add_argument("--sampler", choices=["exact", "official-compat"], default="exact",
                   help="exact: Euler on the ladder itself (default); official-compat: the official Glance Qwen "
                   "pipelines' trajectory (bf16 timesteps, their step grids), for the published weights")
    g.add_argument("--preset", default="auto", metavar="auto|none|glance-qwen",
                   help="published LoRA pair without glancetune metadata: auto-detected by key layout (default), "
                   "forced by name, or none")
    g.add_argument("--lora-mode", choices=["unfused", "fused"], default="unfused",
                   help="fused: each phase's adapter fused into the base weights for its steps (fused.py)")
    g.add_argument("--lora-load", choices=["as-trained", "stock"], default="as-trained",
                   help="as-trained: all LoRA keys, the training alpha (default); stock: exactly what "
                   "pipe.load_lora_weights does")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto: cuda if available)")
    g.add_argument("--compile", action="store_true", help="compile the transformer's blocks first: ~20 s once, then "
                   "~0.76x per image (FLUX.1-dev, H200); pays after ~40 images")
    from ..config.memory import PRECISIONS

    g.add_argument("--base-model-precision", choices=PRECISIONS, default="no_change",
                   help="sample on a quantized transformer (as the config key of train/glance)")
    g.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="URL", help="sample on this `glancetune serve` (default: the one running "
                       "on this machine, if any; else in this process)")
    where.add_argument("--no-server", action="store_true", help="sample in this process even if a `glancetune "
                       "serve` is running")
    g.set_defaults(handler=cmd_generate, loads_models=False)  # a client of `serve` imports no model library


def cmd_generate(args) -> int:
    from .images import write_files

    done = None
    if not args.no_server:
        from .remote import remote_generate

        done = remote_generate(args)  # None: no server running (or it is gone): sample here
    if done is None:
        from ..process import quiet_libraries

        quiet_libraries()
        done = generate_files(args)
    for p in write_files(done.files):
        print(f"wrote {p}")
    print(done.summary)
    return 0


@dataclass
class Generated:
    """`generate`'s result before it is written: each image file's path and bytes, and the summary line."""

    files: list[tuple[Path, bytes]]
    summary: str


def generate_files(args, load=None, check_output: bool = True) -> Generated:
    """`generate` with its parsed arguments, up to the encoded files. `load`: sample_with_cache's signature (a warm
    server passes its own); `check_output`: the output folder checked here (False on a server: its client writes)."""
    import torch

    from ..data.images import open_image
    from ..engine.runtime import select
    from ..families import model_info
    from .images import encode_images, image_info, output_names, output_paths
    from .prompt_cache import sample_with_cache
    from .sampler import check_image_arg, check_request, check_size, resolve_spec

    # every argument is checked before any weights load
    check_request(args.prompt, args.seed, args.width, args.height, args.guidance)
    try:
        device, _ = select(args.device)  # the device rule of training; from_spec applies it again
    except GlanceError as e:
        raise GlanceError(f"--{e}") from None  # its message names the config key `device`
    if args.compile:
        from ..engine.speed import check_compile

        check_compile(device.type, "--compile")
    (output_paths if check_output else output_names)(args.output, len(args.prompt))
    spec = resolve_spec(slow=args.slow, fast=args.fast, run=args.run, model=args.model,
                        slow_sigmas=args.slow_timesteps, fast_sigmas=args.fast_timesteps, width=args.width,
                        height=args.height, guidance=args.guidance, preset=args.preset,
                        ladder_file=args.ladder_file, ladder_slow_steps=args.ladder_slow_steps)
    control = None
    if args.image is not None:
        if not Path(args.image).is_file():
            raise GlanceError(f"--image: {args.image}: file not found")
        control = open_image(Path(args.image))
    info = model_info(spec.base_model)
    check_image_arg(info.family, control)
    check_size(info, spec.width, spec.height)
    if args.negative_prompt is not None and not info.family.true_cfg:
        raise GlanceError(f"--negative-prompt: {info.family.name} has no true CFG, so no negative prompt")
    dtype = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    t0 = time.perf_counter()
    sampler, images, load_s = (load or sample_with_cache)(args, spec, info, dtype, control)
    t2 = time.perf_counter()
    t1 = t0 + load_s
    params = image_info(spec, args.prompt, args.seed, sampler.guidance, args.sampler)
    if args.image is not None:
        params["image"] = str(args.image)
    if args.negative_prompt is not None:
        params["negative_prompt"] = args.negative_prompt
    files = encode_images(images, args.output, params, check=check_output)
    return Generated(files, f"{len(spec.ladder.sigmas)} {args.sampler} steps ({spec.ladder.boundary} slow + "
          f"{len(spec.ladder.fast)} fast), "
          f"{sampler.nfe(args.cfg_phases)} transformer passes per image, guidance {sampler.guidance}, "
          f"load {t1 - t0:.1f}s{_load_parts(sampler.load_parts, load_s)}, sample {t2 - t1:.1f}s")


def _load_parts(parts: dict[str, float], load_s: float) -> str:
    """generate's load split, e.g. " (imports 4.4, pipeline 3.1, to device 2.0, adapters 1.2, prompts 0.4)": what is left of
    the load after from_spec's parts is the prompt cache (its lookup, and encoding a missed prompt)."""
    if not parts:
        return ""
    rest = {"prompts": load_s - sum(parts.values())}
    return " (" + ", ".join(f"{k} {v:.1f}" for k, v in {**parts, **rest}.items()) + ")"


def cmd_schedule(args) -> int:
    from ..families import model_info
    from ..ladder import model_schedule, scaled_indices
    from ..schedule import cut_ladder, timestep

    info = model_info(args.model)
    w, h = args.width or args.resolution, args.height or args.resolution
    align = info.family.alignment(info)
    if w % align or h % align:
        raise GlanceError(f"--resolution: {w}x{h} must be a multiple of {align} for {info.family.name}")
    sig = model_schedule(info, w, h, args.steps)
    si, fi = scaled_indices(args.steps)
    ladder = cut_ladder(sig, si, fi)
    seq = info.family.image_seq_len(info, h, w)
    if args.json:
        print(json.dumps({"model": args.model, "family": info.family.name, "width": w, "height": h,
                          "image_seq_len": seq, "steps": args.steps, "schedule": list(sig),
                          "slow_indices": list(si), "fast_indices": list(fi), "ladder": ladder.to_dict()}))
        return 0
    mu = info.family.mu(info.scheduler_config, seq, args.steps)
    print(f"{info.family.name} {w}x{h}: {seq} image tokens, {args.steps}-step schedule, mu={mu}")
    print(f"{'phase':<6}{'index':>6}{'timestep':>12}{'sigma':>12}")
    for phase, idx in (("slow", si), ("fast", fi)):
        for i in idx:
            print(f"{phase:<6}{i:>6}{timestep(sig[i]):>12.4f}{sig[i]:>12.7f}")
    print("slow: " + ",".join(f"{timestep(s):.4f}" for s in ladder.slow))
    print("fast: " + ",".join(f"{timestep(s):.4f}" for s in ladder.fast))
    return 0

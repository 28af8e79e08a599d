"""The sampling commands: `generate` (a slow+fast pair on its exact ladder) and `schedule` (a model's Glance ladder at
a resolution, from configs alone). Each command's parser and handler live here; cli.py registers them."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import GlanceError
from ..schedule import LADDER_STEPS
from .generate_args import Generated, add_generate_args


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


def _generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="sample with a slow+fast pair on its exact ladder")
    add_generate_args(g)
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

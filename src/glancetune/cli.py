"""The `glancetune` command line: train, glance, generate, eval (evaluate.py), export (comfyui.py), schedule, tiny,
quickstart, validate-dataset, server (server/)."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from .errors import GlanceError
from .process import torch_defaults, quiet_libraries, setup_logging
from .schedule import LADDER_STEPS

ASSETS = Path(__file__).parent / "assets"


def load_train_config(args):
    """The config of train / glance / cache: --config PATH, else SimpleTuner's places (config/config.json,
    .toml, .yaml; --env NAME: config/NAME/...), then --set items, then the positional key=value items."""
    from .config.schema import build_config, find_config, normalise_key, parse_overrides, read_config_file

    if args.config and args.env:
        raise GlanceError(f"--config {args.config} and --env {args.env}: give one of them")
    path = args.config or find_config(args.env)
    overrides = {}
    for items in (parse_overrides(args.set), parse_overrides(args.overrides, what="override")):
        for key, value in items.items():  # a positional item replaces a --set of the same key (any spelling)
            overrides = {k: v for k, v in overrides.items() if normalise_key(k) != normalise_key(key)}
            overrides[key] = value
    return build_config(read_config_file(path), str(path), overrides)


def cmd_train(args, command: str) -> int:
    from .train.job import Job
    from .train.loop import Interrupted

    from .engine.runtime import process_state
    from .plan.describe import describe, details

    cfg = load_train_config(args)
    job = Job(cfg, command)
    main_process = process_state(cfg).is_main_process
    if main_process:
        print(describe(job.plan))
    if args.dry_run:
        print(details(job.plan))
        return 0
    try:
        out = job.run(overwrite=args.overwrite)
    except Interrupted as e:
        import signal

        if main_process:
            print(f"interrupted at step {e.step}: checkpoint written in {cfg.output_dir}; run the same command again "
                  "to resume (resume_from_checkpoint: latest)", file=sys.stderr)
        return 130 if e.signum == signal.SIGINT else 143
    if main_process:
        print(f"wrote {out}")
    return 0


def cmd_cache(args) -> int:
    """Pre-compute the text-embedding and VAE-latent caches of a train/glance config (no transformer loaded)."""
    from .engine.encode import encode, sample_caches
    from .engine.memory import peak_memory
    from .plan.build import Plan
    from .engine.runtime import compute_dtype, select

    cfg = load_train_config(args)
    job = Plan.build(cfg, "cache")
    device, precision = select(cfg.device, cfg.mixed_precision)
    t0 = time.perf_counter()
    _, computed = encode(job.model, cfg, job.samples, device, compute_dtype(precision))
    dt = time.perf_counter() - t0
    caches = sample_caches(cfg, job.samples)
    n = len(job.samples)
    per = f", {dt / max(1, computed) * 2:.3f}s per sample" if computed else ""
    print(f"{n} samples: {computed} of {2 * n} entries computed, {2 * n - computed} reused, in {dt:.1f}s{per}")
    print("text embeddings: " + ", ".join(sorted({str(t.dir) for t, _ in caches})))
    print("VAE latents: " + ", ".join(sorted({str(v.dir) for _, v in caches})))
    peak = peak_memory(device)
    if peak:  # the same figure as a train job's "encode" peak
        print(f"peak GPU memory (allocated / reserved): encode {peak[0]:.2f} / {peak[1]:.2f} GiB")
    return 0


def cmd_generate(args) -> int:
    import torch

    from .data.images import open_image
    from .families import model_info
    from .sampling.prompt_cache import sample_with_cache
    from .sampling.images import image_info, output_paths, save_images
    from .sampling.sampler import check_image_arg, check_request, check_size, resolve_spec
    from .engine.runtime import select

    # every argument is checked before any weights load
    check_request(args.prompt, args.seed, args.width, args.height, args.guidance)
    try:
        device, _ = select(args.device)  # the device rule of training; from_spec applies it again
    except GlanceError as e:
        raise GlanceError(f"--{e}") from None  # its message names the config key `device`
    if args.compile:
        from .engine.speed import check_compile

        check_compile(device.type, "--compile")
    output_paths(args.output, len(args.prompt))
    spec = resolve_spec(slow=args.slow, fast=args.fast, run=args.run, model=args.model,
                        slow_sigmas=args.slow_timesteps, fast_sigmas=args.fast_timesteps, width=args.width,
                        height=args.height, guidance=args.guidance, preset=args.preset)
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
    sampler, images, load_s = sample_with_cache(args, spec, info, dtype, control)
    t2 = time.perf_counter()
    t1 = t0 + load_s
    params = image_info(spec, args.prompt, args.seed, sampler.guidance, args.sampler)
    if args.image is not None:
        params["image"] = str(args.image)
    if args.negative_prompt is not None:
        params["negative_prompt"] = args.negative_prompt
    for p in save_images(images, args.output, params):
        print(f"wrote {p}")
    print(f"{len(spec.ladder.sigmas)} {args.sampler} steps ({spec.ladder.boundary} slow + "
          f"{len(spec.ladder.fast)} fast), "
          f"{sampler.nfe(args.cfg_phases)} transformer passes per image, guidance {sampler.guidance}, "
          f"load {t1 - t0:.1f}s{_load_parts(sampler.load_parts, load_s)}, sample {t2 - t1:.1f}s")
    return 0


def _load_parts(parts: dict[str, float], load_s: float) -> str:
    """generate's load split, e.g. " (imports 4.4, pipeline 3.1, to device 2.0, adapters 1.2, prompts 0.4)": what is left of
    the load after from_spec's parts is the prompt cache (its lookup, and encoding a missed prompt)."""
    if not parts:
        return ""
    rest = {"prompts": load_s - sum(parts.values())}
    return " (" + ", ".join(f"{k} {v:.1f}" for k, v in {**parts, **rest}.items()) + ")"


def cmd_schedule(args) -> int:
    from .families import model_info
    from .ladder import model_schedule, scaled_indices
    from .schedule import cut_ladder, timestep

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


def cmd_validate(args) -> int:
    from .data.validate import run

    return run(args.path, args.data_backend_config, args.resolution, args.caption_extension)


def cmd_tiny(args) -> int:
    from .tiny import write_tiny

    print(f"wrote {write_tiny(args.family, args.dir)}")
    return 0


def cmd_quickstart(args) -> int:
    """Copy the bundled sample, write the configs, train Glance on tiny:flux, generate an image."""
    import torch

    from .config.schema import build_config
    from .sampling.images import image_info, save_images
    from .sampling.sampler import GlanceSampler, resolve_spec
    from .plan.describe import describe
    from .train.job import Job

    if args.model.startswith("tiny:"):
        torch.set_num_threads(1)  # tiny models gain nothing from threads and collapse when the cores are shared
    root = Path(args.dir)
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "config").mkdir(exist_ok=True)
    for f in ("glance.png", "glance.txt"):
        shutil.copyfile(ASSETS / f, root / "data" / f)
    backend = [{"backend": "simple", "resolution": args.resolution, "shuffle": True,
                "image_dir": str(root / "data"), "caption_extension": ".txt"}]
    (root / "config" / "multidatabackend.json").write_text(json.dumps(backend, indent=2) + "\n")
    cfg = {"model_type": "lora", "model_family": "flux", "pretrained_model_name_or_path": args.model,
           "data_backend_config": str(root / "config" / "multidatabackend.json"), "train_batch_size": 1,
           "max_train_steps": args.steps, "lora_rank": 16, "output_dir": str(root / "output" / "glance"),
           "overwrite_output_dir": True}
    (root / "config" / "glance.json").write_text(json.dumps(cfg, indent=2) + "\n")
    t0 = time.perf_counter()
    job = Job(build_config(cfg, str(root / "config" / "glance.json")), "glance")
    print(describe(job.plan))
    out = job.run()
    t1 = time.perf_counter()
    spec = resolve_spec(run=out)
    sampler = GlanceSampler.from_spec(spec)
    caption = (ASSETS / "glance.txt").read_text().strip()
    images = sampler([caption], seed=0)
    paths = save_images(images, root / "glance.png", image_info(spec, [caption], 0, sampler.guidance, "exact"))
    print(f"trained slow+fast in {t1 - t0:.1f}s, sampled 10 steps in {time.perf_counter() - t1:.1f}s: {paths[0]}")
    return 0


def _config_args(s: argparse.ArgumentParser) -> None:
    from .config.schema import CONFIG_NAMES

    s.add_argument("--config", help="JSON / YAML / TOML config (default: the first of "
                   + ", ".join(f"config/{n}" for n in CONFIG_NAMES) + ", as SimpleTuner)")
    s.add_argument("--env", metavar="NAME", help="use config/NAME/config.json (.toml, .yaml), SimpleTuner's ENV")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, like --set; "
                   "--KEY=VALUE works too (SimpleTuner's command line)")


def _generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="sample with a slow+fast pair on its exact ladder")
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
    from .config.memory import PRECISIONS

    g.add_argument("--base-model-precision", choices=PRECISIONS, default="no_change",
                   help="sample on a quantized transformer (as the config key of train/glance)")
    g.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glancetune", description="Glance slow/fast LoRA training and exact "
                                "chained sampling for flow-matching text-to-image models.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("train", "train one LoRA (SimpleTuner-style config, flow_custom_timesteps)"),
                        ("glance", "train the slow and fast LoRAs in one process")):
        from .config.schema import config_help

        s = sub.add_parser(name, help=help_, epilog=config_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
        _config_args(s)
        s.add_argument("--overwrite", action="store_true", help="replace an output_dir holding a different run")
        s.add_argument("--dry-run", action="store_true", help="print the plan (data, ladder) and exit")
    c = sub.add_parser("cache", help="pre-compute the VAE latent and text embedding caches of a config",
                       allow_abbrev=False)
    _config_args(c)
    _generate_parser(sub)
    s = sub.add_parser("schedule", help="print the model's Glance ladder at a resolution")
    s.add_argument("--model", required=True, help="hub id, diffusers folder or tiny:<family>")
    s.add_argument("--resolution", type=int, default=1024)
    s.add_argument("--width", type=int)
    s.add_argument("--height", type=int)
    s.add_argument("--steps", type=int, default=LADDER_STEPS, help="N of the N-step schedule the ladder is cut from")
    s.add_argument("--json", action="store_true")
    v = sub.add_parser("validate-dataset", help="list every problem of a dataset (exit 0 clean, 1 problems found)")
    v.add_argument("--path", help="folder of image + caption pairs (or image/ + control/ edit layout)")
    v.add_argument("--data-backend-config", help="dataloader JSON: check every dataset as train/glance read them")
    v.add_argument("--resolution", type=int, help="also report images with an area below RESOLUTION^2")
    v.add_argument("--caption-extension", default=".txt")
    t = sub.add_parser("tiny", help="write a tiny random pipeline folder (offline tests, demos)")
    t.add_argument("family")
    t.add_argument("dir")
    from .evaluation.evaluate import add_parser as add_eval

    add_eval(sub)
    from .export.comfyui import add_parser as add_export

    add_export(sub)
    from .server import add_parser as add_server

    add_server(sub)
    q = sub.add_parser("quickstart", help="train + sample Glance on the built-in tiny model and sample image")
    q.add_argument("--dir", default="glancetune-quickstart")
    q.add_argument("--model", default="tiny:flux")
    q.add_argument("--resolution", type=int, default=512)
    q.add_argument("--steps", type=int, default=60)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """argparse, except that train / glance / cache take unknown `--key=value` items as config overrides."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in ("train", "glance", "cache"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = (args.overrides or []) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch_defaults()
    try:
        quiet_libraries(models=args.command != "validate-dataset")
        setup_logging()
        if args.command in ("train", "glance"):
            return cmd_train(args, args.command)
        from .export.comfyui import cmd_export
        from .evaluation.evaluate import cmd_eval
        from .server import cmd_server

        return {"generate": cmd_generate, "eval": cmd_eval, "export": cmd_export, "cache": cmd_cache,
                "schedule": cmd_schedule, "tiny": cmd_tiny, "quickstart": cmd_quickstart,
                "validate-dataset": cmd_validate, "server": cmd_server}[args.command](args)
    except GlanceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (the loop itself stops after a step, see cmd_train)
        print("interrupted: files already written are complete (every write is atomic); a train/glance run "
              "continues from its last checkpoint when run again", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

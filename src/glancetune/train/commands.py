"""The training commands: `train` (one LoRA), `glance` (the slow and fast LoRAs in one process), `cache` (the text and
VAE caches of a config, no transformer loaded) and `quickstart` (train + sample Glance on the built-in tiny model).
Each command's parser and handler live here; cli.py registers them."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from ..errors import GlanceError

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def add_parsers(sub) -> None:
    from ..config.schema import config_help

    for name, help_ in (("train", "train one LoRA (SimpleTuner-style config, flow_custom_timesteps)"),
                        ("glance", "train the slow and fast LoRAs in one process")):
        s = sub.add_parser(name, help=help_, epilog=config_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
        _config_args(s)
        s.add_argument("--overwrite", action="store_true", help="replace an output_dir holding a different run")
        s.add_argument("--dry-run", action="store_true", help="print the plan (data, ladder) and exit")
        s.set_defaults(handler=lambda args: cmd_train(args, args.command), config_overrides=True)
    c = sub.add_parser("cache", help="pre-compute the VAE latent and text embedding caches of a config",
                       allow_abbrev=False)
    _config_args(c)
    c.set_defaults(handler=cmd_cache, config_overrides=True)
    q = sub.add_parser("quickstart", help="train + sample Glance on the built-in tiny model and sample image")
    q.add_argument("--dir", default="glancetune-quickstart")
    q.add_argument("--model", default="tiny:flux")
    q.add_argument("--resolution", type=int, default=512)
    q.add_argument("--steps", type=int, default=60)
    q.set_defaults(handler=cmd_quickstart)


def _config_args(s: argparse.ArgumentParser) -> None:
    from ..config.schema import CONFIG_NAMES

    s.add_argument("--config", help="JSON / YAML / TOML config (default: the first of "
                   + ", ".join(f"config/{n}" for n in CONFIG_NAMES) + ", as SimpleTuner)")
    s.add_argument("--env", metavar="NAME", help="use config/NAME/config.json (.toml, .yaml), SimpleTuner's ENV")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, like --set; "
                   "--KEY=VALUE works too (SimpleTuner's command line)")


def load_train_config(args):
    """The config of train / glance / cache: --config PATH, else SimpleTuner's places (config/config.json,
    .toml, .yaml; --env NAME: config/NAME/...), then --set items, then the positional key=value items."""
    from ..config.schema import build_config, find_config, normalise_key, parse_overrides, read_config_file

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
    from ..engine.runtime import process_state
    from ..plan.describe import describe, details
    from .job import Job
    from .loop import Interrupted

    cfg = load_train_config(args)
    job = Job(cfg, command)
    main_process = process_state(cfg).is_main_process
    if main_process:
        print(describe(job.plan))
    if args.dry_run:
        print(details(job.plan))
        job.check(overwrite=args.overwrite)  # what the run would refuse before loading: refused here too
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
    from ..engine.encode import encode, sample_caches
    from ..engine.memory import peak_memory
    from ..engine.runtime import compute_dtype, select
    from ..plan.build import Plan

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


def cmd_quickstart(args) -> int:
    """Copy the bundled sample, write the configs, train Glance on tiny:flux, generate an image."""
    import torch

    from ..config.schema import build_config
    from ..plan.describe import describe
    from ..sampling.images import image_info, save_images
    from ..sampling.sampler import GlanceSampler, resolve_spec
    from .job import Job

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
    print(f"the pair is in {out} (slow/ and fast/); from this folder, next:\n"
          f"  glancetune generate --run {out} --prompt \"a fox in the snow\" --output fox.png\n"
          f"  glancetune export --run {out}      # ComfyUI copies and a workflow that samples the pair\n"
          f"  glancetune glance --config {root / 'config' / 'glance.json'}      # train again (its paths are "
          "relative to this folder)")
    return 0

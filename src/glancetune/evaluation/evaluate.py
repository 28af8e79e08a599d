"""`glancetune eval`: is this slow/fast pair any good? Paired images against the base model, metrics, a report.

For every prompt x seed, with the same initial noise (a CPU generator seeded alike for every sampler):
  base-N           the base model's own N-step image (`--steps-base`, default 50): the reference;
  base-L           the base model's own L-step schedule, L = the ladder's length (10): the cheap baseline;
  base-L-ladder    the base model on the Glance ladder (the Glance sampler with the adapters off);
  base-K           where the pair costs fewer passes than base-L (a distilled pair on a true-CFG family samples at
                   CFG 1): the base model's own schedule at the pair's cost, K = its passes / 2 under CFG;
  base-K-searched  with `--ladder-file`: the base model on a searched ladder (`search-ladder`), training-free;
  NAME             each `--baseline NAME=LORA[:STEPS[:LADDER_FILE|SHIFT]]`: a published few-step LoRA (baselines.py);
  glance           the Glance image (the sampler of `glancetune generate`).
All at the pair's size and guidance; the base rows with the base model's CFG policy, the pair with its own
(compare.py). Edit models: every sampler edits the control image
`--image` (as `generate --image`); the report and each PNG record its path as `control_image` (`image` names the
sampler). Against base-N: PSNR, SSIM, MS-SSIM and latent MSE, and a no-reference noise / blur alarm on every
image (metrics.py). Per sampler: wall time per image and transformer passes per image (counted: the samples the
transformer saw, so batched CFG counts 2). Win-rate of Glance over each base-L sampler (per pair: the higher score wins, a tie is
half) with a 95% bootstrap interval over the pairs. With `--clip-model` (a CLIP model available locally; nothing is
downloaded): every image's CLIP score for its prompt (clipscore.py), its mean per sampler and Glance's win-rate on it
(the higher score wins). LPIPS is not computed (its weights would have to be downloaded). Output: report.py. The
verdict line says whether the pair beats the best training-free row that costs no more transformer passes (its PSNR win-rate interval above
one half), loses to it (below: the LoRAs add nothing over it), or neither.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..config.validation import BASE_REFERENCE_STEPS
from ..errors import GlanceError
from . import baselines as bl
from .metrics import alarm, check_installed, latent_mse, quality, scores, win_rate
from .report import REPORT, check_output, markdown, write_report

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="compare a slow+fast pair with the base model (PSNR/SSIM, win-rate, report)")
    e.add_argument("--run", required=True, help="folder written by `glancetune glance` (holds slow/ and fast/)")
    e.add_argument("--prompts", help="prompt file: JSON name -> prompt, a JSON list, or text, one prompt a line (default: the set shipped with "
                   "glancetune)")
    e.add_argument("--seeds", type=int, default=1, help="seeds per prompt (seed, seed+1, ...)")
    e.add_argument("--seed", type=int, default=0, help="first seed")
    e.add_argument("--steps-base", type=int, default=BASE_REFERENCE_STEPS, help="steps of the base reference")
    e.add_argument("--output", default="report", help="report folder (eval.json, eval.md, grid.png, images/)")
    e.add_argument("--image", metavar="PATH", help="control image (edit models)")
    e.add_argument("--guidance", type=float, help="override the stored guidance (>= 0)")
    e.add_argument("--grid-rows", type=int, default=8, help="prompt x seed rows shown in grid.png")
    e.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    e.add_argument("--ladder-file", metavar="FILE", help="add the base model on this searched ladder "
                   "(search-ladder) as a training-free row")
    e.add_argument("--baseline", action="append", default=[], metavar="NAME=LORA[:STEPS[:LADDER|SHIFT]]",
                   help="add a published few-step LoRA as a row (repeatable): STEPS on the model's own schedule, a "
                   "ladder file's sigmas or a fixed scheduler shift; sampled at CFG 1")
    e.set_defaults(handler=cmd_eval)
    e.add_argument("--clip-model", metavar="PATH", help="CLIP score with this local CLIP model folder (or a hub id "
                   "already in the local cache); nothing is downloaded")


class PassCounter:
    """Counts transformer passes: the batch rows of every forward call (a batched CFG step counts 2)."""

    def __init__(self, transformer):
        self.count = 0
        self.handle = transformer.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x = kwargs.get("hidden_states", args[0] if args else None)
        self.count += int(x.shape[0]) if x is not None else 1

    def close(self):
        self.handle.remove()


@contextmanager
def decoded_latents(pipe):
    """The latents the pipeline hands its VAE to decode, appended to the yielded list (one per decode call)."""
    seen, orig = [], pipe.vae.decode

    def decode(z, *args, **kwargs):
        seen.append(z.detach().float().cpu())
        return orig(z, *args, **kwargs)

    pipe.vae.decode = decode
    try:
        yield seen
    finally:
        del pipe.vae.decode


def rows(sampler, steps_base: int, image=None, searched=None, baselines=()) -> dict:
    """name -> fn(prompt, seed) -> [image], in report order (the module docstring's rows)."""
    from ..sampling.compare import base_on_ladder, base_own_schedule

    w, h = sampler.size
    n_lad = len(sampler.ladder.sigmas)
    extra = {"image": image} if image is not None else {}

    def own(k):
        return lambda p, s: base_own_schedule(sampler, k, [p], s, w, h, **extra)

    runs = {f"base-{steps_base}": own(steps_base), f"base-{n_lad}": own(n_lad)}
    per_step = 2 if sampler.base_cfg_phases(sampler.guidance) == "both" else 1
    k = max(1, sampler.nfe() // per_step)
    if k < n_lad:  # the pair is cheaper than base-L: the base model at the pair's cost
        runs[f"base-{k}"] = own(k)
    runs[f"base-{n_lad}-ladder"] = lambda p, s: base_on_ladder(sampler, [p], s, w, h, **extra)
    if searched is not None:
        runs[f"base-{len(searched.sigmas)}-searched"] = lambda p, s: base_on_ladder(sampler, [p], s, w, h,
                                                                                     ladder=searched, **extra)
    for b in baselines:
        runs[b.name] = lambda p, s, b=b: bl.sample(sampler, b, p, s, w, h, image)
    runs["glance"] = lambda p, s: sampler([p], s, w, h, **extra)
    return runs


def sample_all(sampler, prompts, seeds, steps_base: int, image=None, searched=None,
               baselines=()) -> tuple[list[dict], dict]:
    """Every prompt x seed through the rows (`searched`: a Ladder, the base model on it; `baselines`: parsed
    `--baseline` values, already loaded): (pairs, per-sampler cost)."""
    runs = rows(sampler, steps_base, image, searched, baselines)
    cost = {name: {"seconds": [], "passes": []} for name in runs}
    counter = PassCounter(sampler.pipe.transformer)
    pairs = []
    try:
        with decoded_latents(sampler.pipe) as latents:
            for p in prompts:
                for seed in seeds:
                    images, lat = {}, {}
                    for name, fn in runs.items():
                        counter.count, t0, before = 0, time.perf_counter(), len(latents)
                        images[name] = fn(p.text, seed)[0]
                        cost[name]["seconds"].append(time.perf_counter() - t0)
                        cost[name]["passes"].append(counter.count)
                        lat[name] = latents[-1] if len(latents) > before else None
                    pairs.append({"prompt": p.name, "text": p.text, "seed": seed, "images": images, "latents": lat})
                    latents.clear()
                    log.info("eval: %s seed %d done", p.name, seed)
    finally:
        counter.close()
    return pairs, cost


def clip_scores(pairs: list[dict], scorer) -> None:
    """Every image's CLIP score for its prompt, into pair["clip"] (sampler -> score)."""
    for pr in pairs:
        pr["clip"] = {n: scorer(im, pr["text"]) for n, im in pr["images"].items()}


def score_pairs(pairs: list[dict], reference: str) -> None:
    """Per pair: every row's scores against the reference (PSNR, SSIM, MS-SSIM, latent MSE) and every image's
    no-reference quality and alarms."""
    for pr in pairs:
        ref_im, ref_lat = pr["images"][reference], pr["latents"].get(reference)
        pr["scores"], pr["quality"], pr["alarms"] = {}, {}, {}
        for n, im in pr["images"].items():
            pr["quality"][n] = quality(im)
            if n == reference:
                continue
            sc = scores(im, ref_im)
            lat = pr["latents"].get(n)
            sc["latent_mse"] = latent_mse(lat, ref_lat) if lat is not None and ref_lat is not None else None
            pr["scores"][n] = sc
        pr["alarms"] = {n: a for n in pr["images"] if n != reference
                        for a in [alarm(pr["quality"][n], pr["quality"][reference])] if a}


def _mean(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


def summarise(pairs: list[dict], cost: dict, reference: str) -> dict:
    """Scores against `reference` (and CLIP scores, where computed), per-sampler means, costs, alarms and Glance's
    win-rates against every other row (JSON-able)."""
    others = [n for n in cost if n != reference]
    clip = bool(pairs) and "clip" in pairs[0]
    score_pairs(pairs, reference)
    samplers = {}
    for n, c in cost.items():
        s = {"passes_per_image": float(np.mean(c["passes"])), "seconds_median": float(np.median(c["seconds"])),
             "seconds_mean": float(np.mean(c["seconds"])),
             "noise_mean": _mean([pr["quality"][n]["noise"] for pr in pairs]),
             "blur_mean": _mean([pr["quality"][n]["blur"] for pr in pairs])}
        if n != reference:
            psnr = [pr["scores"][n]["psnr"] for pr in pairs]
            s.update(psnr_mean=_mean(psnr), identical=sum(1 for x in psnr if not np.isfinite(x)),
                     **{f"{m}_mean": _mean([pr["scores"][n][m] for pr in pairs])
                        for m in ("ssim", "ms_ssim", "latent_mse")},
                     alarms=sum(1 for pr in pairs if n in pr["alarms"]))
        if clip:
            s["clip_score_mean"] = float(np.mean([pr["clip"][n] for pr in pairs]))
        samplers[n] = s
    wins = {}
    metrics = [m for m in ("psnr", "ssim", "ms_ssim") if pairs and pairs[0]["scores"]["glance"][m] is not None]
    for n in others:
        if n == "glance":
            continue
        wins[f"glance_vs_{n}"] = {m: win_rate([pr["scores"]["glance"][m] for pr in pairs],
                                              [pr["scores"][n][m] for pr in pairs]) for m in metrics}
        if clip:
            wins[f"glance_vs_{n}"]["clip"] = win_rate([pr["clip"]["glance"] for pr in pairs],
                                                      [pr["clip"][n] for pr in pairs])
    return {"reference": reference, "samplers": samplers, "win_rate": wins, "verdict": verdict(samplers, wins)}


def verdict(samplers: dict, wins: dict) -> str:
    """Whether the pair beats the best training-free row at no more transformer passes (by PSNR win-rate)."""
    cost = samplers["glance"]["passes_per_image"]
    free = [n for n, s in samplers.items() if f"glance_vs_{n}" in wins and s["passes_per_image"] <= cost
            and s.get("psnr_mean") is not None and n.startswith("base-")]
    if not free:
        return "no training-free row costs as little as the pair"
    best = max(free, key=lambda n: samplers[n]["psnr_mean"])
    r = wins[f"glance_vs_{best}"]["psnr"]
    interval = f"PSNR win-rate {r['rate']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
    if r["ci95"][0] > 0.5:
        return f"the pair beats {best}, the best training-free row at equal cost ({interval})"
    if r["ci95"][1] < 0.5:
        return f"{best} beats the pair at equal cost: the LoRAs add nothing over it ({interval})"
    return f"no clear difference between the pair and {best}, the best training-free row at equal cost ({interval})"


def cmd_eval(args) -> int:
    from ..data.images import open_image
    from ..families import model_info
    from ..sampling.prompts import eval_prompts
    from ..sampling.sampler import GlanceSampler, check_image_arg, check_request, resolve_spec

    for name, value, low in (("--seeds", args.seeds, 1), ("--steps-base", args.steps_base, 1),
                             ("--grid-rows", args.grid_rows, 0)):
        if value < low:
            raise GlanceError(f"{name}: {value} must be at least {low}")
    check_request([], args.seed, None, None, args.guidance)
    seeds = list(range(args.seed, args.seed + args.seeds))
    check_request([], seeds[-1], None, None, None)
    prompts = eval_prompts(args.prompts)
    output = Path(args.output)
    check_output(output)
    check_installed()  # a missing metric package fails before any weights load
    if args.clip_model is not None:
        from .clipscore import check_clip_model

        check_clip_model(args.clip_model)
    spec = resolve_spec(run=args.run, guidance=args.guidance)
    control = None
    if args.image is not None:
        if not Path(args.image).is_file():
            raise GlanceError(f"--image: {args.image}: file not found")
        control = open_image(Path(args.image))
    check_image_arg(model_info(spec.base_model).family, control)
    searched = None
    if args.ladder_file is not None:
        from ..ladder import LadderFile

        searched = LadderFile.read(args.ladder_file).ladder()
    baselines = []
    for value in args.baseline:
        baselines.append(bl.parse(value, {"glance"} | {b.name for b in baselines}))
    sampler = GlanceSampler.from_spec(spec, device=args.device)
    bl.load(sampler, baselines)
    pairs, cost = sample_all(sampler, prompts, seeds, args.steps_base, control, searched, baselines)
    if args.clip_model is not None:
        from .clipscore import ClipScorer

        clip_scores(pairs, ClipScorer(args.clip_model, sampler.pipe.device))
    report = {"run": str(args.run), "base_model": spec.base_model, "family": sampler.family.name,
              "ladder": spec.ladder.to_dict(), "guidance": sampler.guidance, "size": list(sampler.size),
              "step": spec.train_steps, "steps_base": args.steps_base,
              "control_image": args.image, "clip_model": args.clip_model, "prompts": len(prompts), "seeds": seeds,
              "pairs": len(pairs), **summarise(pairs, cost, f"base-{args.steps_base}"),
              "baselines": [{"name": b.name, "lora": str(b.lora), "steps": b.steps, "shift": b.shift,
                             "ladder": b.ladder.to_dict() if b.ladder is not None else None} for b in baselines],
              "per_pair": [{"prompt": p["prompt"], "seed": p["seed"], "scores": p["scores"],
                            "quality": p["quality"], "alarms": p["alarms"],
                            **({"clip": p["clip"]} if "clip" in p else {})} for p in pairs]}
    write_report(report, pairs, output, args.grid_rows)
    print(markdown(report), end="")
    print(f"wrote {output / REPORT}, {output / 'eval.md'}, {output / 'grid.png'}, {output / 'images'}/")
    return 0

"""`glancetune eval`: is this slow/fast pair any good? Paired images against the base model, metrics, a report.

For every prompt x seed, with the same initial noise (a CPU generator seeded alike for every sampler):
  base-N           the base model's own N-step image (`--steps-base`, default 50): the reference;
  base-L           the base model's own L-step schedule, L = the ladder's length (10): the cheap baseline;
  base-L-ladder    the base model on the Glance ladder (the Glance sampler with the adapters off);
  base-K-searched  with `--ladder-file`: the base model on a searched ladder (`search-ladder`), training-free;
  glance           the Glance image (the sampler of `glancetune generate`).
All at the pair's size, guidance and CFG policy (compare.py). Edit models: every sampler edits the control image
`--image` (as `generate --image`); the report and each PNG record its path as `control_image` (`image` names the
sampler). Against base-N: PSNR and SSIM in pixel space
(scikit-image's `peak_signal_noise_ratio` / `structural_similarity`, data range 255, SSIM over the RGB channels).
Per sampler: wall time per image and transformer passes per image (counted: the samples the transformer saw,
so batched CFG counts 2). Win-rate of Glance over each base-L sampler (per pair: the higher score wins, a tie is
half) with a 95% bootstrap interval over the pairs. With `--clip-model` (a CLIP model available locally; nothing is
downloaded): every image's CLIP score for its prompt (clipscore.py), its mean per sampler and Glance's win-rate on it
(the higher score wins). LPIPS is not computed (its weights would have to be downloaded). Output: `eval.json`,
`eval.md`, `grid.png` and every image under `images/`, written into a temporary folder and renamed into `--output`
(an earlier report there is replaced; a folder holding anything else is refused). The verdict line says whether
the pair beats the best training-free row that costs no more transformer passes (its PSNR win-rate interval above
one half), loses to it (below: the LoRAs add nothing over it), or neither.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..config.validation import BASE_REFERENCE_STEPS
from ..errors import GlanceError
from ..export.files import replace_folder

log = logging.getLogger(__name__)
REPORT = "eval.json"
BOOTSTRAP = 2000


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="compare a slow+fast pair with the base model (PSNR/SSIM, win-rate, report)")
    e.add_argument("--run", required=True, help="folder written by `glancetune glance` (holds slow/ and fast/)")
    e.add_argument("--prompts", help="JSON file of name -> prompt (default: the set shipped with glancetune)")
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
    e.set_defaults(handler=cmd_eval)
    e.add_argument("--clip-model", metavar="PATH", help="CLIP score with this local CLIP model folder (or a hub id "
                   "already in the local cache); nothing is downloaded")


def _metric_functions():
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError:
        raise GlanceError("eval: scikit-image is not installed (PSNR/SSIM); pip install 'glancetune[eval]' "
                          "or pip install scikit-image") from None
    return peak_signal_noise_ratio, structural_similarity


def scores(image, reference) -> dict[str, float]:
    """PSNR (dB; inf for identical images, written as null) and SSIM of `image` against `reference` (PIL)."""
    psnr, ssim = _metric_functions()
    a = np.asarray(image.convert("RGB"))
    b = np.asarray(reference.convert("RGB"))
    if a.shape != b.shape:
        raise GlanceError(f"eval: image sizes differ ({a.shape} vs {b.shape})")
    p = float("inf") if np.array_equal(a, b) else float(psnr(b, a, data_range=255))
    return {"psnr": p, "ssim": float(ssim(b, a, data_range=255, channel_axis=-1))}


def win_rate(mine: list[float], other: list[float], seed: int = 0, n: int = BOOTSTRAP) -> dict:
    """Share of pairs where `mine` is higher (a tie counts half), with a 95% percentile bootstrap interval."""
    a, b = np.asarray(mine, dtype=float), np.asarray(other, dtype=float)
    wins = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    rng = np.random.default_rng(seed)
    boot = wins[rng.integers(0, len(wins), size=(n, len(wins)))].mean(axis=1)
    return {"rate": float(wins.mean()), "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "pairs": int(len(wins))}


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


def sample_all(sampler, prompts, seeds, steps_base: int, image=None, searched=None) -> tuple[list[dict], dict]:
    """Every prompt x seed through the samplers (`searched`: a Ladder, the base model on it): (pairs, per-sampler
    cost)."""
    from ..sampling.compare import base_on_ladder, base_own_schedule

    w, h = sampler.size
    n_lad = len(sampler.ladder.sigmas)
    extra = {"image": image} if image is not None else {}
    runs = {f"base-{steps_base}": lambda p, s: base_own_schedule(sampler, steps_base, [p], s, w, h, **extra),
            f"base-{n_lad}": lambda p, s: base_own_schedule(sampler, n_lad, [p], s, w, h, **extra),
            f"base-{n_lad}-ladder": lambda p, s: base_on_ladder(sampler, [p], s, w, h, **extra)}
    if searched is not None:
        runs[f"base-{len(searched.sigmas)}-searched"] = lambda p, s: base_on_ladder(sampler, [p], s, w, h,
                                                                                     ladder=searched, **extra)
    runs["glance"] = lambda p, s: sampler([p], s, w, h, **extra)
    cost = {name: {"seconds": [], "passes": []} for name in runs}
    counter = PassCounter(sampler.pipe.transformer)
    pairs = []
    try:
        for p in prompts:
            for seed in seeds:
                images = {}
                for name, fn in runs.items():
                    counter.count, t0 = 0, time.perf_counter()
                    images[name] = fn(p.text, seed)[0]
                    cost[name]["seconds"].append(time.perf_counter() - t0)
                    cost[name]["passes"].append(counter.count)
                pairs.append({"prompt": p.name, "text": p.text, "seed": seed, "images": images})
                log.info("eval: %s seed %d done", p.name, seed)
    finally:
        counter.close()
    return pairs, cost


def clip_scores(pairs: list[dict], scorer) -> None:
    """Every image's CLIP score for its prompt, into pair["clip"] (sampler -> score)."""
    for pr in pairs:
        pr["clip"] = {n: scorer(im, pr["text"]) for n, im in pr["images"].items()}


def summarise(pairs: list[dict], cost: dict, reference: str) -> dict:
    """Scores against `reference` (and CLIP scores, where computed), per-sampler means, costs and Glance's
    win-rates (JSON-able)."""
    others = [n for n in cost if n != reference]
    clip = bool(pairs) and "clip" in pairs[0]
    for pr in pairs:
        pr["scores"] = {n: scores(pr["images"][n], pr["images"][reference]) for n in others}
    samplers = {}
    for n, c in cost.items():
        s = {"passes_per_image": float(np.mean(c["passes"])), "seconds_median": float(np.median(c["seconds"])),
             "seconds_mean": float(np.mean(c["seconds"]))}
        if n != reference:
            psnr = [pr["scores"][n]["psnr"] for pr in pairs]
            finite = [x for x in psnr if np.isfinite(x)]
            s.update(psnr_mean=float(np.mean(finite)) if finite else None, identical=len(psnr) - len(finite),
                     ssim_mean=float(np.mean([pr["scores"][n]["ssim"] for pr in pairs])))
        if clip:
            s["clip_score_mean"] = float(np.mean([pr["clip"][n] for pr in pairs]))
        samplers[n] = s
    wins = {}
    for n in others:
        if n == "glance":
            continue
        wins[f"glance_vs_{n}"] = {m: win_rate([pr["scores"]["glance"][m] for pr in pairs],
                                              [pr["scores"][n][m] for pr in pairs]) for m in ("psnr", "ssim")}
        if clip:
            wins[f"glance_vs_{n}"]["clip"] = win_rate([pr["clip"]["glance"] for pr in pairs],
                                                      [pr["clip"][n] for pr in pairs])
    return {"reference": reference, "samplers": samplers, "win_rate": wins, "verdict": verdict(samplers, wins)}


def verdict(samplers: dict, wins: dict) -> str:
    """Whether the pair beats the best training-free row at no more transformer passes (by PSNR win-rate)."""
    cost = samplers["glance"]["passes_per_image"]
    free = [n for n, s in samplers.items() if f"glance_vs_{n}" in wins and s["passes_per_image"] <= cost
            and s.get("psnr_mean") is not None]
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


def _json(x):
    """JSON has no inf / NaN: such values become null."""
    if isinstance(x, dict):
        return {k: _json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def markdown(report: dict) -> str:
    lines = [f"# glancetune eval: {report['run']}", "",
             f"base model `{report['base_model']}`, {report['size'][0]}x{report['size'][1]}, guidance "
             f"{report['guidance']}, {report['prompts']} prompts x {len(report['seeds'])} seeds = "
             f"{report['pairs']} pairs; reference: **{report['reference']}** (same initial noise for every sampler)",
             "", "| sampler | passes / image | s / image (median) | PSNR vs ref (dB) | SSIM vs ref |",
             "|---|---|---|---|---|"]
    for n, s in report["samplers"].items():
        psnr = "reference" if n == report["reference"] else (
            "identical" if s.get("psnr_mean") is None else f"{s['psnr_mean']:.2f}")
        ssim = "" if n == report["reference"] else f"{s['ssim_mean']:.4f}"
        lines.append(f"| {n} | {s['passes_per_image']:g} | {s['seconds_median']:.3f} | {psnr} | {ssim} |")
    lines += ["", "Win-rate of Glance (closer to the reference than the other sampler, per pair; 95% bootstrap "
              f"interval over pairs, {BOOTSTRAP} resamples):", ""]
    for k, v in report["win_rate"].items():
        for m, r in v.items():
            lines.append(f"- {k.replace('_', ' ')}, {m.upper()}: {r['rate']:.3f} [{r['ci95'][0]:.3f}, "
                         f"{r['ci95'][1]:.3f}]")
    lines += ["", f"Verdict: {report['verdict']}."]
    if report.get("clip_model"):
        lines += ["", f"CLIP score (`{report['clip_model']}`, 100 x cosine of image and prompt embeddings, mean):", ""]
        lines += [f"- {n}: {s['clip_score_mean']:.3f}" for n, s in report["samplers"].items()]
        lines += ["", "LPIPS: not computed (no model is downloaded by glancetune eval)."]
    else:
        lines += ["", "LPIPS / CLIP score: not computed (no model is downloaded by glancetune eval; "
                  "--clip-model names a local CLIP model)."]
    return "\n".join(lines) + "\n"


def write_report(report: dict, pairs: list[dict], output: Path, grid_rows: int) -> None:
    """All files into a temporary sibling folder, then renamed into `output` (an earlier report is replaced)."""
    from ..sampling.compare import grid
    from ..sampling.images import save_images

    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    try:
        names = list(pairs[0]["images"]) if pairs else []
        for pr in pairs:
            for n, im in pr["images"].items():
                info = {"prompt": pr["text"], "seed": pr["seed"], "image": n, "base_model": report["base_model"],
                        "ladder": report["ladder"], "guidance": report["guidance"], "size": report["size"],
                        "step": report["step"],
                        **({"control_image": report["control_image"]} if report["control_image"] else {})}
                save_images([im], tmp / "images" / f"{pr['prompt']}-{pr['seed']}-{n}.png", info)
        shown = pairs[:grid_rows]
        save_images([grid([[pr["images"][n] for n in names] for pr in shown], names,
                          [f"{pr['prompt']}-{pr['seed']}" for pr in shown])], tmp / "grid.png", {"grid": names})
        (tmp / "eval.md").write_text(markdown(report), encoding="utf-8")
        (tmp / REPORT).write_text(json.dumps(_json(report), indent=2) + "\n", encoding="utf-8")
        replace_folder(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / REPORT).is_file())):
        raise GlanceError(f"--output: {output} exists and is not an earlier eval report; choose another folder")
    from ..export.files import nearest_existing

    base = nearest_existing(output.parent)
    if not base.is_dir() or not os.access(base, os.W_OK):
        raise GlanceError(f"--output: cannot write in {base}")


def cmd_eval(args) -> int:
    from ..data.images import open_image
    from ..families import model_info
    from ..sampling.prompts import eval_prompts
    from ..sampling.sampler import GlanceSampler, check_image_arg, check_request, resolve_spec

    if args.seeds < 1 or args.steps_base < 1 or args.grid_rows < 0:
        raise GlanceError("--seeds / --steps-base: must be at least 1 (--grid-rows at least 0)")
    check_request([], args.seed, None, None, args.guidance)
    seeds = list(range(args.seed, args.seed + args.seeds))
    check_request([], seeds[-1], None, None, None)
    prompts = eval_prompts(args.prompts)
    output = Path(args.output)
    check_output(output)
    _metric_functions()  # a missing scikit-image fails before any weights load
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
    sampler = GlanceSampler.from_spec(spec, device=args.device)
    pairs, cost = sample_all(sampler, prompts, seeds, args.steps_base, control, searched)
    if args.clip_model is not None:
        from .clipscore import ClipScorer

        clip_scores(pairs, ClipScorer(args.clip_model, sampler.pipe.device))
    report = {"run": str(args.run), "base_model": spec.base_model, "family": sampler.family.name,
              "ladder": spec.ladder.to_dict(), "guidance": sampler.guidance, "size": list(sampler.size),
              "step": spec.train_steps, "steps_base": args.steps_base,
              "control_image": args.image, "clip_model": args.clip_model, "prompts": len(prompts), "seeds": seeds,
              "pairs": len(pairs), **summarise(pairs, cost, f"base-{args.steps_base}"),
              "per_pair": [{"prompt": p["prompt"], "seed": p["seed"], "scores": p["scores"],
                            **({"clip": p["clip"]} if "clip" in p else {})} for p in pairs]}
    write_report(report, pairs, output, args.grid_rows)
    print(markdown(report), end="")
    print(f"wrote {output / REPORT}, {output / 'eval.md'}, {output / 'grid.png'}, {output / 'images'}/")
    return 0

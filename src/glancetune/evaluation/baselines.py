"""`eval --baseline NAME=LORA[:STEPS[:LADDER_FILE|SHIFT]]`: a published few-step LoRA (Lightning-style, any format
diffusers' `load_lora_weights` reads) as a row of the report, on the same pipeline, prompts and noise.

The LoRA loads with the stock `pipe.load_lora_weights(LORA, adapter_name=NAME)` and is the only active adapter for its
row. Its schedule: STEPS steps (default: the pair's ladder length) on the model's own schedule; or on a searched
ladder (a `search-ladder` file, its sigmas verbatim; STEPS must then equal its length or be left empty); or with a
fixed SHIFT (the scheduler's `shift`, dynamic shifting off: how Qwen-Image-Lightning's scheduler config samples).
True-CFG families sample a baseline at CFG 1, as the published few-step LoRAs are used (one pass per step); a
guidance embedding (FLUX.1-dev, FLUX.2-dev) gets the run's guidance.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import GlanceError

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


@dataclass(frozen=True)
class Baseline:
    name: str
    lora: Path
    steps: int | None  # None: the pair's ladder length (or the ladder file's)
    ladder: object | None = None  # schedule.Ladder from a ladder file
    shift: float | None = None


def parse(value: str, taken: set[str]) -> Baseline:
    """One `--baseline` value, checked before any weights load (`taken`: row names already used)."""
    import math

    where = f"--baseline {value!r}"
    if "=" not in value:
        raise GlanceError(f"{where}: expected NAME=LORA[:STEPS[:LADDER_FILE|SHIFT]]")
    name, rest = value.split("=", 1)
    if not NAME.match(name) or name in taken or name.startswith("base-"):
        raise GlanceError(f"{where}: the name must be 1-40 letters, digits, '_', '.', '-', not start with 'base-' "
                          f"and not be one of {', '.join(sorted(taken))}")
    parts = rest.split(":")
    if len(parts) > 3:
        raise GlanceError(f"{where}: expected NAME=LORA[:STEPS[:LADDER_FILE|SHIFT]] (at most two ':')")
    lora = Path(parts[0])
    if not (lora.is_file() or (lora / "pytorch_lora_weights.safetensors").is_file()):
        raise GlanceError(f"{where}: {lora}: no LoRA file (a .safetensors file, or a folder holding "
                          "pytorch_lora_weights.safetensors)")
    steps = None
    if len(parts) > 1 and parts[1]:
        if not parts[1].isdigit() or int(parts[1]) < 1:
            raise GlanceError(f"{where}: STEPS {parts[1]!r} is not a whole number >= 1")
        steps = int(parts[1])
    ladder = shift = None
    if len(parts) > 2 and parts[2]:
        try:
            shift = float(parts[2])
        except ValueError:
            from ..ladder import LadderFile

            ladder = LadderFile.read(parts[2]).ladder()
            if steps is not None and steps != len(ladder.sigmas):
                raise GlanceError(f"{where}: STEPS {steps} differs from the ladder file's {len(ladder.sigmas)} "
                                  "sigmas") from None
        if shift is not None and (not math.isfinite(shift) or shift <= 0):
            raise GlanceError(f"{where}: SHIFT {parts[2]!r} must be a number > 0")
    return Baseline(name, lora, steps, ladder, shift)


def load(sampler, baselines: list[Baseline]) -> None:
    """Every baseline LoRA into the sampler's pipeline under its name (stock loader); the pair's adapters stay."""
    for b in baselines:
        try:
            sampler.pipe.load_lora_weights(str(b.lora), adapter_name=b.name)
        except (ValueError, KeyError, RuntimeError, OSError) as e:
            raise GlanceError(f"--baseline {b.name}: {b.lora} did not load into {sampler.family.name}'s "
                              f"pipeline ({str(e).splitlines()[0][:200]})") from None


def sample(sampler, b: Baseline, prompt: str, seed: int, width: int, height: int, image=None):
    """One image of baseline `b`: its adapter alone, its schedule, CFG off for true-CFG families."""
    import torch

    pipe = sampler.pipe
    steps = b.steps or len((b.ladder or sampler.ladder).sigmas)
    _, cfg_off = sampler.guidance_kwargs(sampler.guidance)
    call = dict(width=width, height=height, generator=[torch.Generator("cpu").manual_seed(seed)], prompt=[prompt],
                num_inference_steps=steps, **cfg_off, **({"image": image} if image is not None else {}))
    identity = pipe.scheduler
    if b.ladder is not None:
        call["sigmas"] = list(b.ladder.sigmas)  # the identity scheduler uses them verbatim
    elif b.shift is not None:
        own = sampler.own_scheduler.config
        pipe.scheduler = type(sampler.own_scheduler).from_config({**own, "use_dynamic_shifting": False,
                                                                  "shift": b.shift})
    else:
        pipe.scheduler = sampler.own_scheduler
    pipe.set_adapters(b.name)
    try:
        return pipe(**call).images
    finally:
        pipe.scheduler = identity

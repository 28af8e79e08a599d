"""What `generate` samples, resolved before any weights load: the pair's LoRA files, the ladder, the base model, size
and guidance from the files' metadata (explicit arguments override it; a recognised published pair brings its own),
and the checks of a request (prompts, seed, size, a control image) that the command, `serve` and the server share.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path


from ..errors import GlanceError
from ..export.files import lora_file, read_record
from ..families import ModelInfo
from ..families.base import PublishedLoras
from ..schedule import LADDER_STEPS, Ladder, parse_sigma_list
from .lora_files import detect_published, published_by_name

log = logging.getLogger(__name__)


@dataclass
class GlanceSpec:
    """What generate needs, read from the two LoRA files' metadata (explicit arguments override it)."""

    slow: Path | None  # None (both): the base model alone on the ladder (a ladder file, no LoRAs)
    fast: Path | None
    ladder: Ladder
    base_model: str
    width: int
    height: int
    guidance: float | None
    max_sequence_length: int | None = None
    guidance_explicit: bool = False
    published: PublishedLoras | None = None  # a recognised published pair (its alpha is applied when loading)
    train_steps: int | None = None  # the training step the LoRAs are of (image metadata)
    ladder_steps: int = LADDER_STEPS  # N of the N-step schedule the ladder was cut from (official-compat's grid)
    cfg_phases: str | None = None  # the pair's true-CFG policy from its record (distill); None: the family's


def _sigmas(path: Path) -> tuple[float, ...] | None:
    found = read_record(path)
    return tuple(found[0].phases[found[1]]) if found else None


def resolve_spec(slow=None, fast=None, run=None, model=None, slow_sigmas=None, fast_sigmas=None, width=None,
                 height=None, guidance=None, preset: str = "auto", ladder_file=None,
                 ladder_slow_steps: int | None = None) -> GlanceSpec:
    """`ladder_file` (`search-ladder`'s JSON): sample on its sigmas (split slow/fast at `ladder_slow_steps`, default
    half), with the LoRAs given, or without any (no --run/--slow/--fast: the base model on the searched ladder, its
    model, size and guidance from the file unless given)."""
    if ladder_file is None:
        if ladder_slow_steps is not None:
            raise GlanceError("--ladder-slow-steps: only with --ladder-file")
        return _spec(slow, fast, run, model, slow_sigmas, fast_sigmas, width, height, guidance, preset)
    from ..ladder import LadderFile

    found = LadderFile.read(ladder_file)
    if slow_sigmas is not None or fast_sigmas is not None:
        raise GlanceError("--ladder-file: give it or --slow-timesteps/--fast-timesteps, not both")
    ladder = found.ladder(ladder_slow_steps)
    if run is None and slow is None and fast is None:
        return GlanceSpec(None, None, ladder, model or found.model, width or found.width, height or found.height,
                          found.guidance if guidance is None else guidance, found.max_sequence_length,
                          guidance_explicit=True)
    return replace(_spec(slow, fast, run, model, None, None, width, height, guidance, preset), ladder=ladder)


def _spec(slow, fast, run, model, slow_sigmas, fast_sigmas, width, height, guidance, preset) -> GlanceSpec:
    """Combine the LoRA metadata with explicit overrides; say exactly what is missing when metadata is absent.

    `preset`: "auto" recognises a published pair (files without glancetune metadata, see PublishedLoras) by its
    key layout; a preset name forces it; "none" turns recognition off. A preset supplies the ladder, base model,
    size and guidance that explicit arguments do not, and its training alpha for loading.
    """
    if run is not None:
        if slow is not None or fast is not None:
            raise GlanceError("--run: give either --run or --slow/--fast, not both")
        if not Path(run).is_dir():
            raise GlanceError(f"--run: {run}: no such folder (a glance output_dir, holding slow/ and fast/)")
        if not (Path(run) / "slow").is_dir() or not (Path(run) / "fast").is_dir():
            raise GlanceError(f"--run: {run} holds no slow/ and fast/ LoRA folders (a glance output_dir; a run "
                              "still training has them once it finishes)")
        slow, fast = Path(run) / "slow", Path(run) / "fast"
    if slow is None or fast is None:
        raise GlanceError("generate: give --run DIR or both --slow DIR and --fast DIR (or --ladder-file FILE: the "
                          "base model alone on a searched ladder)")
    slow, fast = Path(slow), Path(fast)
    found_s, found_f = read_record(slow), read_record(fast)
    check_pair(slow, fast, found_s, found_f)  # before their sigmas meet
    rs, rf = (found_s or (None,))[0], (found_f or (None,))[0]
    pub = None
    if preset not in ("auto", "none"):
        pub = published_by_name(preset)[1]
    elif preset == "auto" and rs is None and rf is None:
        found = detect_published(lora_file(slow), lora_file(fast))
        pub = found[1] if found else None
    missing = []
    if slow_sigmas is not None or fast_sigmas is not None:
        if slow_sigmas is None or fast_sigmas is None:
            raise GlanceError("--slow-timesteps/--fast-timesteps: give both")
        ladder = Ladder(parse_sigma_list(slow_sigmas, "--slow-timesteps"),
                        parse_sigma_list(fast_sigmas, "--fast-timesteps"))
    elif pub is not None:
        ladder = Ladder(parse_sigma_list(list(pub.slow_timesteps), f"--preset {pub.name}"),
                        parse_sigma_list(list(pub.fast_timesteps), f"--preset {pub.name}"))
    elif rs is not None and rf is not None:
        ladder = Ladder(_sigmas(slow), _sigmas(fast))
    else:
        ladder = None
        for name, r, p in (("slow", rs, slow), ("fast", rf, fast)):
            if r is None:
                missing.append(f"{name} sigmas ({lora_file(p)} has no glancetune metadata; pass "
                               f"--{name}-timesteps)")
    known = [r for r in (rs, rf) if r is not None]
    base = model or next((r.base_model for r in known), None) or (pub.base_model if pub else None)
    if base is None:
        missing.append("base model (pass --model)")
    if missing:
        raise GlanceError("generate: missing " + "; ".join(missing))
    if model is None and len(known) == 2 and rs.base_model != rf.base_model:
        raise GlanceError(f"generate: slow and fast LoRAs were trained on different base models "
                          f"({rs.base_model} vs {rf.base_model}); pass --model to choose")
    w, h = known[0].resolution if known else (pub.resolution if pub else (1024, 1024))
    explicit = guidance is not None
    if not explicit and known:
        guidance = known[0].guidance
    if not explicit and pub is not None:
        guidance, explicit = pub.guidance, True  # the published recipe's value, as if given
    msl = known[0].max_sequence_length if known else None
    steps = known[0].train_steps if known else None
    n = known[0].ladder_steps if known else LADDER_STEPS
    cfg_phases = known[0].cfg_phases if known else None
    explicit = explicit or cfg_phases is not None  # the record's guidance is the one to sample with
    return GlanceSpec(slow, fast, ladder, base, width or w, height or h, guidance, msl, explicit, pub, steps, n,
                      cfg_phases)


def check_pair(slow: Path, fast: Path, found_slow, found_fast) -> None:
    """Two glancetune LoRAs given as a pair: one family, and each in its own role (not swapped, not one role
    twice)."""
    if not found_slow or not found_fast:
        return
    (rs, role_s), (rf, role_f) = found_slow, found_fast
    if rs.model_family != rf.model_family:
        raise GlanceError(f"--slow/--fast: the slow LoRA ({slow}) is for {rs.model_family}, the fast one ({fast}) "
                          f"for {rf.model_family}; give the two LoRAs of one run")
    if (role_s, role_f) == ("fast", "slow"):
        raise GlanceError(f"--slow/--fast: swapped: {slow} holds a fast LoRA and {fast} a slow one")
    for given, role, want in ((slow, role_s, "slow"), (fast, role_f, "fast")):
        if role in ("slow", "fast") and role != want:
            raise GlanceError(f"--{want}: {given} holds a {role} LoRA, not a {want} one")


def check_image_arg(family, image) -> None:
    """`--image` is required for edit models and refused for the others (checked before any weights load)."""
    if family.needs_control_image and image is None:
        raise GlanceError(f"--image: {family.name} is an edit model; give the control image to edit "
                          "(--image PATH)")
    if not family.needs_control_image and image is not None:
        raise GlanceError(f"--image: {family.name} is not an edit model; --image is only for edit models "
                          "(Qwen-Image-Edit / Edit-Plus)")


SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed's unsigned 64-bit range (negative seeds are refused)


def check_request(prompts: list[str], seed: int, width: int | None, height: int | None,
                  guidance: float | None) -> None:
    """The values of one generate request, checked before any weights load (the sampler checks them again)."""
    import math

    for k, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            where = f" {k + 1} of {len(prompts)}" if len(prompts) > 1 else ""
            raise GlanceError(f"--prompt: prompt{where} is empty")
    last = seed + len(prompts) - 1
    if seed < 0 or last > SEED_MAX:
        extra = f" (image k of a batch of {len(prompts)} uses seed+k)" if len(prompts) > 1 else ""
        raise GlanceError(f"--seed: {seed} is outside 0..{SEED_MAX}{extra}")
    for name, v in (("--width", width), ("--height", height)):
        if v is not None and v <= 0:
            raise GlanceError(f"{name}: {v} is not a positive number of pixels")
    if guidance is not None and (not math.isfinite(guidance) or guidance < 0):
        raise GlanceError(f"--guidance: {guidance} must be a finite number >= 0")


def check_size(info: ModelInfo, width: int, height: int) -> None:
    """Image sides must be positive multiples of the family's alignment."""
    check_request([], 0, width, height, None)
    align = info.family.alignment(info)
    if width % align or height % align:
        raise GlanceError(f"--width/--height: {width}x{height} must be multiples of {align}")

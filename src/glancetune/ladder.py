"""Which sigmas each phase trains on: the Glance ladder (slow | fast) cut from the model's own N-step schedule, or
one list for a single-phase `train`. Used by the training job and by `glancetune schedule`, so both print and
train the same numbers. The sigma math itself lives in schedule.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .errors import GlanceError
from .schedule import FAST_INDICES, LADDER_STEPS, SLOW_INDICES, Ladder, cut_ladder, parse_index_list, parse_sigma_list

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    name: str  # adapter name and role: slow | fast | lora
    sigmas: tuple[float, ...]
    subdir: str  # output sub-folder; "" = output_dir itself


def scaled_indices(steps: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The Glance index pattern ([0,2,4,6,8] | [10,20,30,40,49] at 50 steps) scaled to another N."""
    if steps == LADDER_STEPS:
        return SLOW_INDICES, FAST_INDICES
    scale = steps / LADDER_STEPS
    slow = tuple(round(i * scale) for i in SLOW_INDICES)
    fast = tuple(round(i * scale) for i in FAST_INDICES[:-1]) + (steps - 1,)
    idx = slow + fast
    if any(b <= a for a, b in zip(idx, idx[1:])):
        raise GlanceError(f"glance_ladder_steps: {steps} is too few to scale the default indices "
                          f"(got {list(idx)}); give glance_slow_indices and glance_fast_indices")
    return slow, fast


def model_schedule(info, width: int, height: int, steps: int) -> tuple[float, ...]:
    """The model's own `steps`-step sigmas at this image size (what its pipeline would sample on)."""
    return info.family.own_schedule(info, width, height, steps)


def default_ladder(info, width: int, height: int, steps: int = LADDER_STEPS) -> Ladder:
    """The model's own N-step schedule cut at the (scaled) Glance indices: what `glance` trains by default."""
    si, fi = scaled_indices(steps)
    return cut_ladder(model_schedule(info, width, height, steps), si, fi)


def glance_ladder(cfg, info, width: int, height: int) -> Ladder:
    """The config's ladder: explicit lists, explicit indices, or the default cut of the N-step schedule."""
    slow, fast = cfg.glance_slow_timesteps, cfg.glance_fast_timesteps
    if (slow is None) != (fast is None):
        missing = "glance_fast_timesteps" if fast is None else "glance_slow_timesteps"
        raise GlanceError(f"{missing}: give both explicit lists or neither")
    if slow is not None:
        lists = {}
        for key, value in (("glance_slow_timesteps", slow), ("glance_fast_timesteps", fast)):
            given = parse_sigma_list(value, key)
            lists[key] = tuple(sorted(given, reverse=True))
            if lists[key] != given:
                log.info("notice: %s: sorted from high to low noise (the order sampling runs in)", key)
        return Ladder(lists["glance_slow_timesteps"], lists["glance_fast_timesteps"])
    si, fi = cfg.glance_slow_indices, cfg.glance_fast_indices
    if (si is None) != (fi is None):
        raise GlanceError("glance_slow_indices / glance_fast_indices: give both or neither")
    if si is None:
        return default_ladder(info, width, height, cfg.glance_ladder_steps)
    si, fi = parse_index_list(si, "glance_slow_indices"), parse_index_list(fi, "glance_fast_indices")
    return cut_ladder(model_schedule(info, width, height, cfg.glance_ladder_steps), si, fi)


def job_phases(cfg, info, width: int, height: int, command: str) -> tuple[Ladder | None, list[Phase]]:
    """(ladder, phases) of a job: `glance` trains slow then fast; `train` one LoRA on flow_custom_timesteps or on
    the model's whole N-step schedule."""
    if command == "glance":
        if cfg.flow_custom_timesteps is not None:
            raise GlanceError("flow_custom_timesteps: not used by `glance`; give glance_slow_timesteps and "
                              "glance_fast_timesteps (or nothing: the model's own ladder)")
        ladder = glance_ladder(cfg, info, width, height)
        return ladder, [Phase("slow", ladder.slow, "slow"), Phase("fast", ladder.fast, "fast")]
    if cfg.flow_custom_timesteps is not None:
        return None, [Phase("lora", parse_sigma_list(cfg.flow_custom_timesteps, "flow_custom_timesteps"), "")]
    return None, [Phase("lora", model_schedule(info, width, height, cfg.glance_ladder_steps), "")]

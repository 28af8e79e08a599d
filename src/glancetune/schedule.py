"""Sigma / timestep math: the model's own N-step flow schedule, Glance ladders cut from it, user timestep lists.

A ladder is a tuple of float32 sigmas (1 = pure noise). Values are kept as Python floats that are exactly
representable in float32, so they survive JSON round trips bit for bit. Nothing here touches model weights; the
one diffusers object used is `FlowMatchEulerDiscreteScheduler`, so the numbers are the ones a pipeline uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .errors import GlanceError

LADDER_STEPS = 50
SLOW_INDICES = (0, 2, 4, 6, 8)
FAST_INDICES = (10, 20, 30, 40, 49)
GLANCE_STEPS = len(SLOW_INDICES) + len(FAST_INDICES)  # steps of the Glance ladder (and of the searched one)
NUM_TRAIN_TIMESTEPS = 1000


def f32(x: float) -> float:
    """Round to the nearest float32 and return it as a Python float (exact round trip)."""
    return float(np.float32(x))


@dataclass(frozen=True)
class Ladder:
    """The sampling ladder: slow sigmas (early, high noise) then fast sigmas (late), strictly decreasing."""

    slow: tuple[float, ...]
    fast: tuple[float, ...]

    def __post_init__(self):
        if not self.slow or not self.fast:
            raise GlanceError("ladder: both the slow and the fast list need at least one value")
        sig = self.sigmas
        if any(b >= a for a, b in zip(sig, sig[1:])):
            raise GlanceError(f"ladder: sigmas must strictly decrease from slow to fast, got {format_list(sig)}")

    @property
    def sigmas(self) -> tuple[float, ...]:
        return tuple(self.slow) + tuple(self.fast)

    @property
    def boundary(self) -> int:
        """Number of slow steps: the adapter switches to fast after step index `boundary - 1`."""
        return len(self.slow)

    def to_dict(self) -> dict:
        return {"slow": list(self.slow), "fast": list(self.fast)}

    @classmethod
    def from_dict(cls, d: dict) -> "Ladder":
        return cls(tuple(f32(x) for x in d["slow"]), tuple(f32(x) for x in d["fast"]))


def timestep(sigma: float) -> float:
    """The scheduler's timestep for a float32 sigma: float32(sigma * 1000), as `scheduler.timesteps` holds it."""
    return float(np.float32(sigma) * np.float32(NUM_TRAIN_TIMESTEPS))


def format_list(values: Iterable[float], scale: float = 1.0, digits: int = 6) -> str:
    return ", ".join(f"{v * scale:.{digits}g}" for v in values)


def base_sigmas(num_steps: int) -> np.ndarray:
    """The unshifted sigmas every diffusers flow pipeline starts from: linspace(1, 1/N, N)."""
    return np.linspace(1.0, 1.0 / num_steps, num_steps)


def schedule_sigmas(scheduler_config: dict, num_steps: int, mu: float | None, sigmas=None) -> tuple[float, ...]:
    """The N sigmas (without the appended 0) that `FlowMatchEulerDiscreteScheduler` uses for an N-step run.

    `sigmas`: what the pipeline passes (FLUX/Qwen pass linspace(1, 1/N, N)); None = `set_timesteps(N)` alone.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    if num_steps < 1:
        raise GlanceError(f"glance_ladder_steps: must be >= 1, got {num_steps}")
    sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    if sigmas is None:
        sched.set_timesteps(num_inference_steps=num_steps, mu=mu)
    else:
        sched.set_timesteps(sigmas=sigmas, mu=mu)
    return tuple(float(s) for s in sched.sigmas[:-1].tolist())


def cut_ladder(sigmas: Sequence[float], slow_idx: Sequence[int], fast_idx: Sequence[int]) -> Ladder:
    n = len(sigmas)
    for key, idx in (("glance_slow_indices", slow_idx), ("glance_fast_indices", fast_idx)):
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise GlanceError(f"{key}: indices {bad} are outside the {n}-step schedule (0..{n - 1})")
    return Ladder(tuple(sigmas[i] for i in slow_idx), tuple(sigmas[i] for i in fast_idx))


def identity_scheduler_config(scheduler_config: dict) -> dict:
    """A scheduler config under which `set_timesteps(sigmas=ladder)` uses the ladder verbatim (plus the final 0)."""
    cfg = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
    cfg.update(use_dynamic_shifting=False, shift=1.0, shift_terminal=None, use_karras_sigmas=False,
               use_exponential_sigmas=False, use_beta_sigmas=False, invert_sigmas=False)
    return cfg


def parse_sigma_list(value, key: str) -> tuple[float, ...]:
    """Parse a user list ("1000,979.19" or [0.98, 0.5]) of timesteps (0-1000) or sigmas ([0,1]) into sigmas.

    The scale is decided per list: any value above 1 means timesteps. A list that mixes the two scales
    (e.g. "1000, 0.5") is refused rather than guessed.
    """
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace(";", ",").split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise GlanceError(f"{key}: expected a comma-separated list of numbers, got {value!r}")
    if not parts:
        raise GlanceError(f"{key}: the list is empty")
    nums = []
    for p in parts:
        try:
            if isinstance(p, bool):
                raise ValueError
            x = float(p)
        except (TypeError, ValueError):
            raise GlanceError(f"{key}: {p!r} is not a number") from None
        if not math.isfinite(x) or x <= 0 or x > NUM_TRAIN_TIMESTEPS:
            raise GlanceError(f"{key}: {p!r} is outside (0, 1000] (timesteps) / (0, 1] (sigmas)")
        nums.append(x)
    if max(nums) > 1.0:
        small = [x for x in nums if x <= 1.0]
        if small:
            raise GlanceError(f"{key}: mixed scales: {small} look like sigmas while {max(nums):g} is a timestep; "
                              "give all values as timesteps (0-1000) or all as sigmas (0-1)")
        nums = [x / NUM_TRAIN_TIMESTEPS for x in nums]
    if len(set(nums)) != len(nums):
        raise GlanceError(f"{key}: the list repeats a value")
    return tuple(f32(x) for x in nums)


def parse_index_list(value, key: str) -> tuple[int, ...]:
    if isinstance(value, str):
        value = [p for p in value.replace(";", ",").split(",") if p.strip()]
    try:
        out = tuple(int(str(v).strip()) for v in value)
    except (TypeError, ValueError):
        raise GlanceError(f"{key}: expected a list of integer indices, got {value!r}") from None
    if not out:
        raise GlanceError(f"{key}: the list is empty")
    return out

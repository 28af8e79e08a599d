"""Which sigmas each phase trains on: a searched ladder (`LadderFile`, written by `search-ladder` or by a job's
default search), the Glance ladder (slow | fast) cut from the model's own N-step schedule, explicit lists, or one
list for a single-phase `train`. Used by the training job and by `glancetune schedule`, so both print and train
the same numbers. The sigma math itself lives in schedule.py.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import GlanceError
from .schedule import (
    FAST_INDICES,
    GLANCE_STEPS,
    LADDER_STEPS,
    SLOW_INDICES,
    Ladder,
    cut_ladder,
    f32,
    parse_index_list,
    parse_sigma_list,
)

log = logging.getLogger(__name__)
FORMAT = "glancetune-ladder/1"  # the ladder file's "format"


@dataclass(frozen=True)
class Phase:
    name: str  # adapter name and role: slow | fast | lora
    sigmas: tuple[float, ...]
    subdir: str  # output sub-folder; "" = output_dir itself


@dataclass(frozen=True)
class LadderFile:
    """A searched ladder and what it was searched for (`search-ladder` writes it; `generate --ladder-file` reads it)."""

    sigmas: tuple[float, ...]
    model: str
    family: str
    width: int
    height: int
    guidance: float | None
    method: dict = field(default_factory=dict)  # how it was found: grid, prompts, seeds, costs, passes, seconds
    max_sequence_length: int | None = None  # the prompts' text length it was searched with (None: the family's)

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self), "sigmas": list(self.sigmas)}

    def ladder(self, slow_steps: int | None = None, key: str = "--ladder-slow-steps"):
        """The sigmas as a slow/fast ladder: the first `slow_steps` slow (default: half, the extra one slow)."""
        n = len(self.sigmas)
        k = (n + 1) // 2 if slow_steps is None else slow_steps
        if not 1 <= k < n:
            raise GlanceError(f"{key}: {k} is not between 1 and {n - 1} (the ladder has {n} sigmas)")
        s = tuple(f32(x) for x in self.sigmas)  # as recorded and sampled: float32 values
        return Ladder(s[:k], s[k:])

    def write(self, path: str | os.PathLike) -> Path:
        """Written whole under a temporary name, then renamed into place."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def read(cls, path: str | os.PathLike, key: str = "--ladder-file") -> LadderFile:
        """One line naming the file (and `key`) for a missing file, bad JSON, another format or bad sigmas."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GlanceError(f"{key}: {path}: file not found") from None
        except (OSError, ValueError) as e:
            raise GlanceError(f"{key}: {path}: not a readable JSON file ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise GlanceError(f"{key}: {path}: not a glancetune ladder file (\"format\": \"{FORMAT}\" expected)")
        s = d.get("sigmas")
        if (not isinstance(s, list) or len(s) < 2 or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                          for x in s)
                or not all(0 < x <= 1 for x in s) or any(a <= b for a, b in zip(s, s[1:]))):
            raise GlanceError(f"{key}: {path}: \"sigmas\" must be at least 2 numbers in (0, 1], strictly decreasing")
        try:
            return cls(tuple(float(x) for x in s), str(d["model"]), str(d["family"]), int(d["width"]),
                       int(d["height"]), None if d.get("guidance") is None else float(d["guidance"]),
                       dict(d.get("method", {})),
                       None if d.get("max_sequence_length") is None else int(d["max_sequence_length"]))
        except (KeyError, TypeError, ValueError) as e:
            raise GlanceError(f"{key}: {path}: missing or bad field ({e})") from None


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


def file_ladder(cfg, info, width: int, height: int) -> Ladder:
    """`glance_ladder_file`: the file's sigmas split at `glance_ladder_slow_steps` (default half); a notice when the
    file was searched for another model or size (its sigmas are still used verbatim)."""
    others = [k for k in ("glance_slow_timesteps", "glance_fast_timesteps", "glance_slow_indices",
                          "glance_fast_indices") if getattr(cfg, k) is not None]
    if others:
        raise GlanceError(f"glance_ladder_file: give it or {', '.join(others)}, not both")
    found = LadderFile.read(cfg.glance_ladder_file, key="glance_ladder_file")
    if (found.width, found.height) != (width, height) or found.family != info.family.name:
        log.info("notice: glance_ladder_file: searched for %s (%s) at %dx%d, training %s at %dx%d", found.model,
                 found.family, found.width, found.height, info.ref, width, height)
    return found.ladder(cfg.glance_ladder_slow_steps, key="glance_ladder_slow_steps")


def glance_ladder(cfg, info, width: int, height: int, searched: Path | None = None) -> Ladder:
    """The config's ladder: a ladder file, explicit lists, explicit indices, the default search's file
    (`searched`, when it exists), or the default cut of the N-step schedule."""
    if cfg.glance_ladder_file is not None:
        return file_ladder(cfg, info, width, height)
    if searched is not None:  # not searched yet: the model's own 10-step schedule stands in (the dry-run says so)
        found = LadderFile.read(searched, key=f"the searched ladder {searched}") if searched.is_file() else \
            LadderFile(model_schedule(info, width, height, GLANCE_STEPS), info.ref,
                       info.family.name, width, height, None)
        return found.ladder(cfg.glance_ladder_slow_steps, key="glance_ladder_slow_steps")
    if cfg.glance_ladder_slow_steps is not None:
        raise GlanceError("glance_ladder_slow_steps: only with glance_ladder_file or glance_ladder: search")
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


def job_phases(cfg, info, width: int, height: int, command: str,
               searched: Path | None = None) -> tuple[Ladder | None, list[Phase]]:
    """(ladder, phases) of a job: `glance` trains slow then fast (`searched`: the default search's ladder file);
    `train` one LoRA on flow_custom_timesteps or on the model's whole N-step schedule."""
    if command == "glance":
        if cfg.flow_custom_timesteps is not None:
            raise GlanceError("flow_custom_timesteps: not used by `glance`; give glance_slow_timesteps and "
                              "glance_fast_timesteps (or nothing: the model's own ladder)")
        ladder = glance_ladder(cfg, info, width, height, searched)
        return ladder, [Phase("slow", ladder.slow, "slow"), Phase("fast", ladder.fast, "fast")]
    if cfg.flow_custom_timesteps is not None:
        return None, [Phase("lora", parse_sigma_list(cfg.flow_custom_timesteps, "flow_custom_timesteps"), "")]
    return None, [Phase("lora", model_schedule(info, width, height, cfg.glance_ladder_steps), "")]

"""The searched ladder a `glance` job trains on by default (`glance_ladder: search`), planned without weights.

When the config names no ladder (no glance_ladder_file, indices or timesteps), the job trains on the N sigmas that
best reproduce the base model's own fine-step trajectory (sampling/ladder_search.py, `search-ladder`'s method) on
the teacher prompts (the training captions, then glance_prompts) x seeds 0..glance_teacher_seeds-1, at the
ladder's size, with the guidance `generate` samples the base model with. N is the Glance ladder's length (10), the
fine grid the model's own `glance_ladder_steps`-step schedule. The result is a ladder file in
`<cache_dir>/ladders/`, named by what determines it (the transformer's files, precision, dtype, size, guidance, text
length, prompts, seeds, grid): a job whose file exists plans on it directly; otherwise the plan carries this
request, the job searches before anything else (train/ladder_stage.py) and plans again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..schedule import GLANCE_STEPS as SEARCH_STEPS  # the searched ladder is as long as the Glance ladder


@dataclass(frozen=True)
class LadderRequest:
    """One ladder search: where its file goes and everything it is searched with."""

    path: Path
    prompts: tuple[str, ...]
    seeds: int
    steps: int
    fine: int
    guidance: float | None
    max_sequence_length: int
    width: int
    height: int

    @property
    def passes(self) -> int:
        """Transformer passes at most: per prompt x seed, one fine trajectory and one velocity read per reachable
        grid point per step (true CFG doubles each)."""
        return len(self.prompts) * self.seeds * (1 + self.fine * (self.steps - 1) + 1)


def uses_search(cfg, command: str, family) -> bool:
    """`glance` with no ladder named in the config and `glance_ladder: search`, on a family the search is built for
    (not edit models: their prompts need control images; they keep the Glance cut)."""
    named = [cfg.glance_ladder_file, cfg.glance_slow_timesteps, cfg.glance_fast_timesteps, cfg.glance_slow_indices,
             cfg.glance_fast_indices]
    return (command == "glance" and cfg.glance_ladder == "search" and not family.needs_control_image
            and all(v is None for v in named))


def ladder_request(cfg, info, prompts: list[str], guidance, max_len: int, dtype, width: int,
                   height: int) -> LadderRequest:
    """The search this job's default ladder comes from, and its file's place in the cache."""
    from ..data.cache import component_identity, digest
    from ..process import cache_root

    root = Path(cfg.cache_dir) if cfg.cache_dir else cache_root() / "cache"
    key = {"kind": "ladder", "family": info.family.name,
           "transformer": component_identity(info.path, "transformer"),
           "precision": cfg.base_model_precision, "dtype": str(dtype), "size": [width, height],
           "guidance": guidance, "max_sequence_length": max_len, "prompts": list(prompts),
           "seeds": cfg.glance_teacher_seeds, "steps": SEARCH_STEPS, "fine": cfg.glance_ladder_steps}
    return LadderRequest(root / "ladders" / f"{digest(key)}.json", tuple(prompts), cfg.glance_teacher_seeds,
                         SEARCH_STEPS, cfg.glance_ladder_steps, guidance, max_len, width, height)

"""Teacher trajectories for `glance_objective: distill`: the base model's own fine-step solutions with its real
guidance (true CFG where the family has it), made by its stock pipeline around the job's transformer before any
adapter exists, and cached on disk.

For every prompt (the training captions, then `glance_prompts`) x training size x seed 0..glance_teacher_seeds-1,
the pipeline samples from the noise of that seed (the noise `generate --seed k` starts from) on the run's ladder
with `glance_trajectory_substeps` equal sub-steps per ladder step (identity scheduler: exactly these sigmas, the
last step to 0), and the states at the ladder's sigmas and at 0 are kept: N + 1 states in the layout of the
pipeline's loop, which is the transformer's input layout. States and guided velocities are read from the
scheduler's own steps (sampling/ladder_search.py `Stepper`), so the teacher is exactly what `generate` computes.

Each trajectory is one entry of the teacher cache (`<cache_dir>/teacher`), keyed by what determines it (the
transformer's files and precision, dtype, prompt, negative prompt, guidance, size, sigma grid, seed): a rerun or
a resumed run reads it back and samples nothing.
"""
from __future__ import annotations

import gc
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherPath:
    """One teacher trajectory: the prompt's transformer text kwargs (and its negative prompt's under true CFG, for
    a student that keeps CFG in its slow phase), the training size, and the states at the ladder's sigmas and at
    0 ([N + 1, 1, ...], CPU, fp32)."""

    prompt: str
    text: dict
    negative: dict | None
    size: tuple[int, int]
    seed: int
    states: torch.Tensor


def teacher_texts(cfg, samples, family, guidance) -> tuple[list[str], str | None]:
    """(prompts: the distinct training captions then glance_prompts, the negative prompt or None without CFG)."""
    from ..plan.build import teacher_prompts

    return teacher_prompts(cfg, samples), family.negative_prompt if family.cfg_on(guidance) else None


def encode_teacher_texts(source, cfg, samples, guidance, device, dtype) -> dict:
    """The teacher's prompts and negative prompt encoded (text cache first; before the transformer loads)."""
    from ..engine.encode import encode_texts

    prompts, negative = teacher_texts(cfg, samples, source.family, guidance)
    return encode_texts(source, cfg, prompts + ([negative] if negative is not None else []), device, dtype)


def grid(ladder_sigmas: list[float], substeps: int) -> list[float]:
    """The teacher's sigmas: each ladder step split into `substeps` equal sub-steps (the ladder's own sigmas at
    indices 0, substeps, 2 substeps, ...; the sampler's final step goes to 0)."""
    lad = [float(s) for s in ladder_sigmas] + [0.0]
    return [a + (b - a) * k / substeps for a, b in zip(lad, lad[1:]) for k in range(substeps)]


def _description(source, cfg, dtype, transformer_id, prompt, negative, guidance, size, sigmas, seed) -> dict:
    return {"kind": "teacher", "family": source.family.name, "transformer": transformer_id,
            "precision": cfg.base_model_precision, "dtype": str(dtype), "max_sequence_length":
            source.max_sequence_length, "prompt": prompt, "negative": negative, "guidance": guidance,
            "size": list(size), "sigmas": [float(s) for s in sigmas], "seed": seed}


def teacher_paths(source, cfg, transformer, ladder_sigmas, samples, embeds: dict, guidance, device,
                  dtype) -> list[TeacherPath]:
    """Every (prompt, size, seed) trajectory, from the teacher cache or sampled now (then cached). `embeds`: text
    -> `encode_prompts` output for the prompts and the negative prompt of `teacher_texts`."""
    from ..data.cache import TensorCache, component_identity, digest
    from ..process import cache_root

    fam = source.family
    prompts, negative = teacher_texts(cfg, samples, fam, guidance)
    sizes = list(dict.fromkeys((s.width, s.height) for s in samples))
    sigmas = grid(ladder_sigmas, cfg.glance_trajectory_substeps)
    root = Path(cfg.cache_dir) if cfg.cache_dir else cache_root() / "cache"
    cache = TensorCache(root / "teacher", "teacher trajectory")
    todo, out = [], {}
    ident = component_identity(source.info.path, "transformer")  # once: it reads the folder (or the hub cache)
    for p in prompts:
        for size in sizes:
            for seed in range(cfg.glance_teacher_seeds):
                d = _description(source, cfg, dtype, ident, p, negative, guidance, size, sigmas, seed)
                hit = cache.get(digest(d))
                if hit is None:
                    todo.append((p, size, seed, d))
                else:
                    out[(p, size, seed)] = hit["states"]
    if todo:
        cache.check_writable()
        _sample(source, cfg, transformer, sigmas, embeds, negative, guidance, todo, cache, out, device, dtype)
    every = cfg.glance_trajectory_substeps
    neg = embeds[negative] if negative is not None else None
    return [TeacherPath(p, fam.training_text(embeds[p]), neg, size, seed, out[(p, size, seed)][::every].float())
            for p in prompts for size in sizes for seed in range(cfg.glance_teacher_seeds)]


@contextmanager
def base_pipeline(source, transformer, device, dtype):
    """The stock pipeline around the job's `transformer` (before any adapter exists), identity scheduler (sigmas
    used verbatim), no text encoders; the VAE is loaded for the pipeline's latent geometry. Released after."""
    from ..schedule import identity_scheduler_config

    fam = source.family
    pipe = source.load_pipeline(dtype, **{c: None for c in fam.encoder_components if c != "vae"},
                                transformer=transformer)
    pipe.vae.to(device)
    pipe.scheduler = type(pipe.scheduler).from_config(identity_scheduler_config(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    try:
        yield pipe
    finally:
        pipe.transformer = None
        del pipe
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def on_device(d: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in d.items()}


def _sample(source, cfg, transformer, sigmas, embeds, negative, guidance, todo, cache, out, device, dtype) -> None:
    """The missing trajectories, through the stock pipeline around `transformer`."""
    from ..data.cache import digest
    from ..sampling.ladder_search import Stepper

    t0 = time.perf_counter()
    neg = on_device(embeds[negative], device) if negative is not None else None
    passes = 0
    with base_pipeline(source, transformer, device, dtype) as pipe:
        for p, (w, h), seed, desc in todo:
            st = Stepper(pipe, source.family, on_device(embeds[p], device), neg, guidance,
                         source.max_sequence_length, w, h)
            states = torch.stack(st.trajectory(sigmas, seed))  # len(sigmas) + 1 states, fp32 CPU
            passes += st.passes
            cache.put(digest(desc), {"states": states}, desc)
            out[(p, (w, h), seed)] = states
    log.info("teacher: %d trajectories of %d steps sampled (%d transformer passes, %.1fs)", len(todo), len(sigmas),
             passes, time.perf_counter() - t0)

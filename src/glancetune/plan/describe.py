"""What a planned job will do, in words: the `--dry-run` report and the web UI's plan (data, ladder, LoRA targets,
steps, optimizer and schedule, checkpoints, memory plan, validation), and the validation control image the
plan resolves (edit families)."""
from __future__ import annotations

import json
from pathlib import Path

from ..data.images import open_image
from ..errors import GlanceError
from .build import Plan
from .steps import describe as describe_optimizer


def report(plan: Plan) -> str:
    """The whole dry-run report of a plan: `describe`, then `details`."""
    return describe(plan) + "\n" + details(plan)


def details(plan: Plan) -> str:
    """What `--dry-run` prints after the plan's description: trainable parameters, steps, optimizer and schedule,
    checkpoints, the memory plan and the resolved config."""
    from ..engine.adapters import count_trainable

    n = count_trainable(plan.info.transformer_config, plan.cfg, plan.targets)
    return "\n".join([f"trainable LoRA parameters per phase: {n:,}", f"steps: {plan.steps_note}",
                      describe_optimizer(plan.cfg, plan.steps), checkpoint_plan(plan.cfg), memory_plan(plan),
                      *([plan.memory.line()] if plan.memory else []),
                      "resolved config: " + json.dumps(plan.cfg.model_dump(), default=str)])


def describe(plan: Plan) -> str:
    cfg, family, samples = plan.cfg, plan.family, plan.samples
    kind = "edit pair(s) (target + control)" if family.needs_control_image else "sample(s)"
    buckets = len({s.target for s in samples})
    lines = [f"model {plan.info.ref} ({family.name}), {len(samples)} {kind} at "
             f"{plan.width}x{plan.height}" + (f" (the largest of {buckets} buckets: the ladder's size)"
                                              if buckets > 1 else "") + f", guidance {plan.guidance}",
             *plan.data.describe(cfg.train_batch_size),
             f"base weights: {cfg.base_model_precision} (mixed precision {cfg.mixed_precision})",
             f"LoRA rank {cfg.lora_rank} alpha {cfg.alpha:g} on {len(plan.targets)} module types "
             f"({plan.targets_source}): {', '.join(plan.targets)}"]
    if plan.tread_routes:
        n = family.tread_blocks_count(plan.info.transformer_config)
        lines.append("TREAD (training steps only): " + "; ".join(
            f"{r.ratio:.0%} of the image tokens around blocks {r.start}-{r.end} of 0-{n - 1}"
            for r in plan.tread_routes))
    req = plan.ladder_search
    if req is not None:
        lines.append(f"ladder: searched before training (glance_ladder: search; not cached yet): the {req.steps} "
                     f"sigmas that best reproduce the base model's own {req.fine}-step trajectory on "
                     f"{len(req.prompts)} prompt(s) x {req.seeds} seed(s), at most {req.passes} transformer passes"
                     f"{' x2 (true CFG)' if plan.family.cfg_on(req.guidance) else ''}, once, into {req.path}; "
                     f"the phases below are the model's own {req.steps}-step schedule standing in until then")
    for ph in plan.phases:
        lines.append(f"phase {ph.name}: {len(ph.sigmas)} sigmas " + ", ".join(f"{s:.6g}" for s in ph.sigmas))
    if cfg.glance_objective != "flow":
        lines.append(describe_objective(plan))
    from ..engine.encode import sample_caches

    caches = sample_caches(cfg, samples)
    lines.append("caches: text embeddings " + ", ".join(sorted({str(t.dir) for t, _ in caches}))
                 + "; VAE latents " + ", ".join(sorted({str(v.dir) for _, v in caches})))
    if cfg.validation_enabled:
        lines.append(describe_validation(plan))
    return "\n".join(lines)


def describe_objective(plan: Plan) -> str:
    """The objective, and for distill what the teacher costs (once; cached) and how the pair will sample."""
    cfg = plan.cfg
    if cfg.glance_objective != "distill":
        return f"objective {cfg.glance_objective}"
    from .build import teacher_guidance, teacher_prompts

    g = teacher_guidance(cfg, plan.family, plan.guidance)
    cfg_on = plan.family.cfg_on(g)
    prompts = len(teacher_prompts(cfg, plan.samples))
    sizes = len({(s.width, s.height) for s in plan.samples})
    steps = len(plan.ladder.sigmas) * cfg.glance_trajectory_substeps
    passes = prompts * sizes * cfg.glance_teacher_seeds * steps * (2 if cfg_on else 1)
    rec = plan.record()
    sampling = {None: "as the base model", "none": "at CFG 1 (guidance baked in)",
                "slow": "with true CFG in the slow phase only",
                "both": "with true CFG in both phases"}[rec.cfg_phases]
    return (f"objective distill: teacher = the base model at guidance {g}{' (true CFG)' if cfg_on else ''}, "
            f"{prompts} prompt(s) x {sizes} size(s) x {cfg.glance_teacher_seeds} seed(s), {steps} steps each: "
            f"{passes} transformer passes once (cached); the pair samples {sampling}")


def memory_plan(plan: Plan) -> str:
    """What is quantized and offloaded, where each component is in each phase, and the compile decision."""
    from ..engine.adapters import count_params, meta_transformer
    from ..engine.memory import memory_plan as lines
    from ..engine.runtime import select
    from ..engine.speed import compile_decision, compiled_before

    cfg = plan.cfg
    device, mp = select(cfg.device, cfg.mixed_precision)
    n = count_params(meta_transformer(plan.info.transformer_config).parameters())
    split = cfg.parallel_phases  # as intended: one phase per process on 2 processes
    mine = [p.name for p in plan.phases][:1 if split else None]  # the first process's (its key)
    on, why = compile_decision(cfg, device.type, plan.steps, len(mine), "parallel-phases" if split else
                               "single", compiled_before(plan.graph_key(device, mine)))
    return "\n".join([*lines(cfg, plan.family, plan.info.path, device, 16 if mp == "bf16" else 32, n),
                      f"compile: {why}"])


def checkpoint_plan(c) -> str:
    """When checkpoints are written, what a rerun resumes from, and the process layout."""
    from ..engine.runtime import process_state
    from ..export.files import newest_good_checkpoint

    every = (f"every {c.checkpointing_steps} steps into {c.output_dir}/checkpoint-<step>/, keeping the newest "
             f"{c.checkpoints_total_limit or 'all'}") if c.checkpointing_steps else "off (checkpointing_steps 0)"
    good, damaged = newest_good_checkpoint(Path(c.output_dir))
    latest = (good.name if good else "none yet: starts fresh" if not damaged else "none whole: refused") + "".join(
        f"; {p.name} damaged ({why}), skipped" for p, why in damaged)
    resume = {"latest": f"latest ({latest})", None: "none"}.get(c.resume_from_checkpoint, c.resume_from_checkpoint)
    n = process_state(c).num_processes
    layout = "1 process" if n == 1 else (f"{n} processes, " + ("one phase each (parallel_phases)"
                                         if c.parallel_phases else "DDP, each a slice of every batch"))
    return f"checkpoints: {every}; resume: {resume}; {layout}"


def control_path(cfg, family, samples) -> Path | None:
    """The control image validation edits (edit families): `validation_image`, else the control image of the first
    training pair (data-plan order: datasets as configured, files as discovered). None for other families."""
    given = cfg.validation_image
    if not family.needs_control_image:
        if given is not None and cfg.validation_enabled:
            raise GlanceError(f"validation_image: {family.name} is not an edit model; the key is only for edit "
                              "models (Qwen-Image-Edit / Edit-Plus)")
        return None
    if given is None:
        return samples[0].control_path
    path = Path(given).expanduser()
    if not path.is_file():
        raise GlanceError(f"validation_image: {given}: file not found")
    open_image(path)  # not an image: one line naming it, before any weights load
    return path


def describe_validation(plan) -> str:
    """--dry-run: what validation will write (the prompt files are read, so a bad one fails here too)."""
    from ..sampling.prompts import validation_prompts

    cfg = plan.cfg
    prompts = validation_prompts(cfg)
    w, h = cfg.validation_size or (plan.width, plan.height)
    seed = cfg.seed if cfg.validation_seed is None else cfg.validation_seed
    control = control_path(cfg, plan.family, plan.samples)
    return (f"validation: {len(prompts)} prompt(s) ({', '.join(p.name for p in prompts[:4])}"
            f"{', ...' if len(prompts) > 4 else ''}) x {cfg.num_validation_images} seed(s) from {seed} at {w}x{h}, "
            f"at step 0, every {cfg.validation_steps} steps and the end, into {cfg.output_dir}/validation/; base "
            f"reference {cfg.validation_num_inference_steps} steps"
            + (f"; control image {control}" if control is not None else ""))



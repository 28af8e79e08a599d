"""The training job, top to bottom: plan -> runtime -> encode (caches) -> load -> adapters -> resume -> loop -> save.

`train` trains one LoRA; `glance` trains the slow and fast LoRAs interleaved in one loop on one transformer
holding both adapters (loop.py says why a phase still equals the same phase trained alone). The job owns a frozen
`Plan` (plan/build.py) and hands each collaborator the few typed things it uses: encoding takes the model source
and samples, the LoRA store (store.py) the transformer, phases and run record, the checkpoint hook the store and
the manifest, validation the model source, record and runtime. The output folder holds our config from the start,
checkpoints while training, and the finished LoRA folders, each written atomically. Capabilities around the loop
(logs, progress, checkpoints, validation) are hooks (hooks.py).
"""
from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import torch

from ..engine import tread
from ..engine.adapters import add_lora
from ..engine.encode import encode
from ..engine.memory import OFFLOAD_TRAINING, allocator_note, enable_checkpointing, group_offload, peak_memory
from ..engine.quantize import INT4_TRAINING, load_config, place_and_quantize
from ..engine.runtime import Runtime, make_runtime
from ..engine.speed import compile_blocks, compile_decision, compiled_before, mark_compiled
from ..errors import GlanceError
from ..export.files import OutputDir
from ..plan.build import Plan, teacher_guidance
from . import checkpoint
from .hooks import Hook, Hooks, RunInfo
from .ladder_stage import run_ladder_search
from .loop import PhaseState, Prepared, Trainer
from .objectives import check_prompts, encode_prompts, make_objective
from .store import LoraStore
from .teacher import encode_teacher_texts, teacher_paths

log = logging.getLogger(__name__)
_JOBS_RUN: list = []  # jobs run in this process (clock)


def _to(d: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in d.items()}


def log_memory(rt: Runtime, peaks: dict, quiet: bool) -> None:
    """After training on CUDA: each part's peak (the training peak added to `peaks`), and the caching allocator's
    counters (memory.allocator_note), read before the peak counters reset."""
    stats = torch.cuda.memory_stats(rt.device) if rt.device.type == "cuda" else {}
    peaks["train"] = peak_memory(rt.device)
    if rt.is_main and rt.device.type == "cuda" and not quiet:
        log.info("peak GPU memory (allocated / reserved): " + "; ".join(
            f"{k} {a:.2f} / {r:.2f} GiB" for k, (a, r) in peaks.items()))
        log.info(allocator_note(stats))


class Job:
    """A planned job that can run. `components`: pipeline components handed to the family's `load_pipeline`."""

    def __init__(self, cfg, command: str, components: dict | None = None):
        from ..process import quiet_libraries

        quiet_libraries()  # called from Python too: the libraries' notices and bars down to errors, as the CLI does
        self.plan = Plan.build(cfg, command, components)

    def check(self, overwrite: bool = False) -> None:
        """What the run refuses before loading, checked the run's own way and writing nothing (`--dry-run`): the
        process layout, the output folder and the checkpoint it would resume from, the trackers of `report_to`, the
        prompt files and the validation ladder file."""
        from ..sampling.prompts import validation_prompts
        from .logs import make_hooks

        cfg = self.plan.cfg
        open_output(self.plan, planned_layout(cfg, self.plan.command), overwrite)
        make_hooks(cfg.report_to, cfg.output_dir, cfg.logging_dir, None, None, {}, False)  # writes nothing
        if cfg.glance_prompts:
            check_prompts(cfg)
        if cfg.validation_enabled:
            validation_prompts(cfg)
            if cfg.validation_ladder_file:
                from ..ladder import LadderFile

                LadderFile.read(cfg.validation_ladder_file)

    def run(self, overwrite: bool = False, quiet: bool = False) -> Path:
        plan, t_start = self.plan, time.perf_counter()
        cfg = plan.cfg
        rt = make_runtime(cfg, plan.command)
        if cfg.enable_group_offload and rt.layout != "single":
            raise GlanceError(f"enable_group_offload: one process only (this run is {rt.layout} on {rt.world})")
        if rt.layout in ("ddp", "fsdp"):  # epochs count global batches (train_batch_size x processes)
            plan = plan.with_processes(rt.world)
        out, resume = open_output(plan, layout(rt), overwrite)
        times, lap = clock(plan)
        if plan.ladder_search is not None:  # the default ladder is searched once, then planned on
            lap("plan")
            run_ladder_search(plan, rt, self.load_transformer)
            lap("ladder search")
            plan = Plan.build(cfg, plan.command, plan.model.components)
            plan = plan.with_processes(rt.world) if rt.layout in ("ddp", "fsdp") else plan
        logs, validation = self.early_hooks(plan, rt, quiet)  # a tracker that is not installed fails here
        lap("plan")  # data discovery, model config, checks
        distill = cfg.glance_objective == "distill"
        teacher_g = teacher_guidance(cfg, plan.family, plan.guidance) if distill else None
        with rt.accelerator.main_process_first():  # the main process fills the caches, the others read them
            encoded, _ = encode(plan.model, cfg, plan.samples, rt.device, rt.dtype)
            if distill:
                texts = encode_teacher_texts(plan.model, cfg, plan.samples, teacher_g, rt.device, rt.dtype)
            extra = encode_prompts(plan.model, cfg, rt.device, rt.dtype) if cfg.glance_prompts and not distill else None
            Hooks(logs + validation).before_load()  # validation prompts are encoded here, before the transformer
        peaks = {"encode": peak_memory(rt.device)}
        lap("encode")
        samples = prepared(plan, rt, encoded)
        transformer = self.load_transformer(plan, rt)
        if distill:  # before any adapter exists: the teacher is the base model
            with rt.accelerator.main_process_first():
                extra = teacher_paths(plan.model, cfg, transformer, list(plan.ladder.sigmas), plan.samples, texts,
                                      teacher_g, rt.device, rt.dtype)
        store = LoraStore(transformer, plan.family.pipeline_class(), plan.phases, plan.record(), rt.world)
        cfg_scale = teacher_g if cfg.glance_student_cfg != "none" and plan.family.cfg_on(teacher_g) else None
        trainer, states, compiled_key = self.build_trainer(plan, rt, transformer, store, samples, resume, extra,
                                                           cfg_scale)
        peaks["load"] = peak_memory(rt.device)  # quantize_via accelerator: plus one unquantized block
        lap("load")
        if resume is not None:
            checkpoint.restore(resume, rt.rank, states)
        start = states[0].step
        manifest = {"identity": plan.identity, "files": plan.files, "layout": layout(rt)}
        hooks = Hooks([*logs, checkpoint.Checkpoints(store, states, manifest, cfg.checkpointing_steps,
                                                     cfg.checkpoints_total_limit), *validation])
        run = RunInfo(str(out.final), [p.name for p in plan.phases], plan.steps, start, rt.is_main, rt.rank,
                      rt.world, cfg.logging_steps, cfg.model_dump(mode="json"), trainer)
        if rt.is_main:  # the output folder appears only once everything before the loop worked
            out.prepare(plan.run_config())
            out.clean_stale()
        rt.accelerator.wait_for_everyone()
        try:
            if resume is not None and rt.is_main:
                log.info("resuming from %s (step %d of %d)", resume, start, plan.steps)
            summary = trainer.run(states, hooks, run, time.perf_counter() - t_start)
            if compiled_key is not None and start < plan.steps:  # inductor's cache holds these graphs now
                mark_compiled(compiled_key)
            log_memory(rt, peaks, quiet)
            hooks.on_train_end(run, summary)
        finally:
            hooks.close()
        for ph in states:  # every process its own phases (FSDP: all take part in the forward)
            ph.eval_after = trainer.eval_loss(ph.name, ph.sampler.sigmas.tolist())
        lap("train")
        gathered = store.gather(states)
        if rt.is_main:
            store.finish(out, gathered)
        rt.accelerator.wait_for_everyone()
        lap("save")
        if rt.is_main and not quiet:
            log.info("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
        return out.final

    # --- the steps ----------------------------------------------------------------------------------------
    def early_hooks(self, plan: Plan, rt: Runtime, quiet: bool) -> tuple[list[Hook], list[Hook]]:
        """The log hooks and the validation hook (if any): made before anything loads, so a missing tracker, a
        bad prompt file or validation image fails first. The checkpoint hook joins them once the model exists."""
        from .logs import make_hooks

        cfg = plan.cfg
        logs = make_hooks(cfg.report_to, cfg.output_dir, cfg.logging_dir, getattr(cfg, "tracker_project_name", None),
                          getattr(cfg, "tracker_run_name", None), cfg.model_dump(mode="json"), rt.is_main and not quiet)
        if cfg.glance_prompts:
            check_prompts(cfg)  # before any encoder loads
        if not cfg.validation_enabled:
            return logs, []
        from .validate import Validation

        return logs, [Validation(cfg, plan.model, plan.record(), (plan.width, plan.height), plan.samples, rt, logs)]

    def load_transformer(self, plan: Plan, rt: Runtime):
        """The transformer in `base_model_default_dtype`, quantized, and on the device or group-offloaded
        (memory.py), before any adapter exists (the pipeline's other components are not loaded)."""
        cfg = plan.cfg
        dtype = torch.float32 if cfg.base_model_default_dtype == "fp32" else rt.dtype
        extra = {}
        qc = load_config({"transformer": cfg.base_model_precision}, rt.dtype)
        if qc is not None and "transformer" not in plan.model.components:
            extra = {"quantization_config": qc}
        pipe = plan.model.load_pipeline(dtype, **{c: None for c in plan.family.encoder_components}, **extra)
        via = cfg.quantize_via
        if cfg.enable_group_offload:  # quantized where asked, then diffusers' hooks keep it on the CPU
            transformer = place_and_quantize(pipe.transformer, cfg.base_model_precision, via, rt.device,
                                             home=torch.device("cpu"))
            group_offload(transformer, cfg, rt.device)
            if rt.device.type == "cuda":
                log.warning(OFFLOAD_TRAINING)
        else:
            transformer = place_and_quantize(pipe.transformer, cfg.base_model_precision, via, rt.device)
        if cfg.base_model_precision == "int4-quanto" and rt.device.type == "cuda":
            log.warning(INT4_TRAINING)
        transformer.requires_grad_(False)
        if cfg.gradient_checkpointing:
            enable_checkpointing(transformer, cfg.gradient_checkpointing_backend, rt.device,
                                 cfg.gradient_checkpointing_interval)
        del pipe
        gc.collect()
        return transformer

    def build_trainer(self, plan: Plan, rt: Runtime, transformer, store: LoraStore, samples: list[Prepared],
                      resume: Path | None, extra, cfg_scale: float | None = None
                      ) -> tuple[Trainer, list[PhaseState], str | None]:
        """Both adapters on the one transformer (seeded alike: each equals its `train` twin; a resumed run's
        weights loaded before any sharding), compiled after they exist, one PhaseState per phase of this process,
        and the model prepared for the process layout (DDP wrapper, or FSDP2 sharding with the optimizers).
        Returns the trainer, its phase states and the key of the compiled graphs (None: not compiled)."""
        cfg = plan.cfg
        for ph in plan.phases:
            add_lora(transformer, ph.name, rank=cfg.lora_rank, alpha=cfg.alpha, dropout=cfg.lora_dropout,
                     init=cfg.lora_init, targets=plan.targets, seed=cfg.seed)
        if cfg.enable_group_offload:  # adapters of offloaded blocks are made on the CPU; they live on the device
            for _, p in store.params(None):
                p.data = p.data.to(rt.device)
        if resume is not None:
            store.load(resume)
        tread.install(transformer, plan.family, cfg.tread_config)  # training-only token routing
        mine = [ph for ph in plan.phases if rt.layout != "parallel-phases" or ph.name == plan.phases[rt.rank].name]
        key = plan.graph_key(rt.device, [ph.name for ph in mine])
        on, why = compile_decision(cfg, rt.device.type, plan.steps, len(mine), rt.layout, compiled_before(key))
        log.info("compile: %s", why)
        if on:
            compile_blocks(transformer)
        for ph in plan.phases:  # DDP registers the parameters that require grad now
            for _, p in store.params(ph.name):
                p.requires_grad_(ph in mine)
        objective = make_objective(cfg, plan.ladder, plan.command, rt.layout, extra, cfg_scale)
        trainer = Trainer(cfg, plan.family, transformer, samples, rt, plan.guidance, plan.data, objective)
        states = [trainer.new_phase(ph.name, ph.sigmas, [p for _, p in store.params(ph.name)], plan.steps,
                                    [n for n, _ in store.params(ph.name)]) for ph in mine]
        trainer.prepare(states, lambda name: [p for _, p in store.params(name)])
        return trainer, states, key if on else None


def clock(plan: Plan):
    """The final report's times: `lap(name)` books the time since the last lap (to `name`'s earlier laps). The first job of a command-line
    process starts with its imports (from glancetune's own import to this plan); any other (a later job, a job
    run from Python, where the import may be long past) from its plan."""
    from .. import IMPORTED_AT, process

    first = not _JOBS_RUN and process.COMMAND_LINE
    _JOBS_RUN.append(plan)
    times = {"imports": plan.created_at - IMPORTED_AT} if first else {}
    origin = IMPORTED_AT if first else plan.created_at

    def lap(name: str) -> None:
        times[name] = times.get(name, 0.0) + time.perf_counter() - origin - sum(times.values())  # books add up
    return times, lap


def layout(rt: Runtime) -> dict:
    return {"layout": rt.layout, "processes": rt.world}


def planned_layout(cfg, command: str) -> dict:
    """The process layout a run of `cfg` will have (as `layout(rt)` reports it), read from accelerate's process
    state without creating an Accelerator (a dry-run must not fix the process's mixed precision)."""
    import os

    from ..engine.runtime import process_state

    n = process_state(cfg).num_processes
    if n == 1:
        kind = "single"
    elif os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        kind = "fsdp"
    else:
        kind = "parallel-phases" if cfg.parallel_phases and command == "glance" and n == 2 else "ddp"
    return {"layout": kind, "processes": n}


def open_output(plan: Plan, layout: dict, overwrite: bool) -> tuple[OutputDir, Path | None]:
    """The output folder (checked, nothing written yet) and the checkpoint a rerun resumes from, if any, for a
    run of this process `layout`."""
    cfg = plan.cfg
    out = OutputDir(cfg.output_dir, plan.identity, overwrite or cfg.overwrite_output_dir,
                    tuple(cfg.resume_allow_changes), cfg.logging_dir)
    resume = None if out.overwrite else checkpoint.resume_path(cfg.resume_from_checkpoint, out.final)
    if resume is not None:  # names the keys and files that differ, before the folder check does less well
        checkpoint.check_compatible(resume, checkpoint.read_manifest(resume), plan.identity, plan.files,
                                    layout, cfg.resume_allow_changes)
    out.check()  # fail before loading weights
    return out, resume


def prepared(plan: Plan, rt: Runtime, encoded) -> list[Prepared]:
    out = []
    for t, i in encoded:
        i = dict(i)
        x0 = i.pop("x0")
        out.append(Prepared(x0.float().to(rt.device), _to(plan.family.training_text(t), rt.device),
                            _to(i, rt.device)))
    if plan.cfg.train_batch_size > 1 and len(out) > 1:
        plan.family.collate([p.image for p in out])  # samples that cannot share a batch fail here
    return out

"""The training job, top to bottom: plan -> runtime -> encode (caches) -> load -> adapters -> resume -> loop -> save.

`train` trains one LoRA; `glance` trains the slow and fast LoRAs interleaved in one loop on one transformer
holding both adapters (loop.py says why a phase still equals the same phase trained alone). The output folder
holds our config from the start, checkpoints while training, and the finished LoRA folders, each written
atomically. Capabilities around the loop (logs, progress, checkpoints) are hooks (hooks.py).
"""
from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import torch

from ..errors import GlanceError
from ..export import OutputDir
from . import checkpoint, tread
from .encode import encode
from .hooks import Hooks, RunInfo
from .lora import add_lora
from .objectives import make_objective
from .loop import Prepared, Trainer
from .optim import resolve_train_steps
from .files import PhaseFiles
from .plan import Plan
from .memory import OFFLOAD_TRAINING, allocator_note, enable_checkpointing, group_offload, peak_memory
from .quantize import INT4_TRAINING, load_config, place_and_quantize
from .runtime import make_runtime
from .speed import compile_blocks, compile_decision, compiled_before, mark_compiled

log = logging.getLogger(__name__)


def _to(d: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in d.items()}


_JOBS_RUN: list = []  # jobs run in this process (Job.clock)


def log_memory(peaks: dict, stats: dict) -> None:
    """After training on CUDA: each part's peak, and the caching allocator's counters (memory.allocator_note)."""
    log.info("peak GPU memory (allocated / reserved): " + "; ".join(
        f"{k} {a:.2f} / {r:.2f} GiB" for k, (a, r) in peaks.items()))
    log.info(allocator_note(stats))


class Job(Plan, PhaseFiles):
    """A planned job that can run. `components`: pipeline components handed to the family's `load_pipeline`."""

    def run(self, overwrite: bool = False, quiet: bool = False) -> Path:
        cfg, t_start = self.cfg, time.perf_counter()
        self.rt = rt = make_runtime(cfg, self.command)
        if cfg.enable_group_offload and rt.layout != "single":
            raise GlanceError(f"enable_group_offload: one process only (this run is {rt.layout} on {rt.world})")
        if rt.layout in ("ddp", "fsdp"):  # epochs count global batches (train_batch_size x processes)
            self.steps, self.steps_note = resolve_train_steps(cfg, self.batches_per_epoch(rt.world))
        out, resume = self.open_output(overwrite)
        hooks = Hooks(self.hooks(quiet))  # a tracker that is not installed fails here
        times, lap = self.clock()
        lap("plan")  # data discovery, model config, checks
        with rt.accelerator.main_process_first():  # the main process fills the caches, the others read them
            encoded, _ = encode(self, rt.device, rt.dtype)
            hooks.before_load(self)  # validation prompts are encoded here, before the transformer loads
        peaks = {"encode": peak_memory(rt.device)}
        lap("encode")
        samples = self.prepared(encoded)
        self.pipe, self.transformer = self.load_transformer()
        self.trainer = self.build_trainer(samples, resume)
        peaks["load"] = peak_memory(rt.device)  # quantize_via accelerator: plus one unquantized block
        lap("load")
        if resume is not None:
            saved = checkpoint.load_states(resume, rt.rank)
            for ph in self.trainer_states:
                ph.load_state_dict(saved[ph.name])
        start = self.trainer_states[0].step
        run = RunInfo(str(out.final), [p.name for p in self.phases], self.steps, start, rt.is_main,
                      rt.rank, rt.world, cfg.logging_steps, cfg.model_dump(mode="json"), self, self.trainer)
        if rt.is_main:  # the output folder appears only once everything before the loop worked
            out.prepare(self.run_config())
            out.clean_stale()
        rt.accelerator.wait_for_everyone()
        try:
            if resume is not None and rt.is_main:
                log.info("resuming from %s (step %d of %d)", resume, start, self.steps)
            summary = self.trainer.run(self.trainer_states, hooks, run, time.perf_counter() - t_start)
            if self.compiled_key is not None and start < self.steps:  # inductor's cache holds these graphs now
                mark_compiled(self.compiled_key)
            stats = torch.cuda.memory_stats(rt.device) if rt.device.type == "cuda" else {}  # before the reset:
            peaks["train"] = peak_memory(rt.device)
            if rt.is_main and rt.device.type == "cuda" and not quiet:
                log_memory(peaks, stats)
            hooks.on_train_end(run, summary)
        finally:
            hooks.close()
        for ph in self.trainer_states:  # every process its own phases (FSDP: all take part in the forward)
            ph.eval_after = self.trainer.eval_loss(ph.name, ph.sampler.sigmas.tolist())
        lap("train")
        states = self.gather_states()
        if rt.is_main:
            self.finish(states)
        rt.accelerator.wait_for_everyone()
        lap("save")
        if rt.is_main and not quiet:
            log.info("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
        return out.final

    # --- the steps ----------------------------------------------------------------------------------------
    def clock(self):
        """The final report's times: `lap(name)` books the time since the last lap. The first job of a command-line
        process starts with its imports (from glancetune's own import to this plan); any other (a later job, a job
        run from Python, where the import may be long past) from its plan."""
        from .. import IMPORTED_AT, process

        first = not _JOBS_RUN and process.COMMAND_LINE
        _JOBS_RUN.append(self)
        times = {"imports": self.created_at - IMPORTED_AT} if first else {}
        origin = IMPORTED_AT if first else self.created_at

        def lap(name: str) -> None:
            times[name] = time.perf_counter() - origin - sum(times.values())
        return times, lap

    def open_output(self, overwrite: bool) -> tuple[OutputDir, Path | None]:
        """The output folder (checked, nothing written yet) and the checkpoint a rerun resumes from, if any."""
        cfg = self.cfg
        self.out = out = OutputDir(cfg.output_dir, self.identity, overwrite or cfg.overwrite_output_dir,
                                   tuple(cfg.resume_allow_changes), cfg.logging_dir)
        resume = None if out.overwrite else checkpoint.resume_path(cfg.resume_from_checkpoint, out.final)
        if resume is not None:  # names the keys and files that differ, before the folder check does less well
            checkpoint.check_compatible(resume, checkpoint.read_manifest(resume), self.identity, self.files,
                                        self.layout(), cfg.resume_allow_changes)
        out.check()  # fail before loading weights
        return out, resume

    def manifest(self) -> dict:
        """What a checkpoint records about the run, for the resume check."""
        return {"identity": self.identity, "files": self.files, "layout": self.layout()}

    def layout(self) -> dict:
        return {"layout": self.rt.layout, "processes": self.rt.world}

    def prepared(self, encoded) -> list[Prepared]:
        out = []
        for t, i in encoded:
            i = dict(i)
            x0 = i.pop("x0")
            out.append(Prepared(x0.float().to(self.rt.device), _to(self.family.training_text(t), self.rt.device),
                                _to(i, self.rt.device)))
        if self.cfg.train_batch_size > 1 and len(out) > 1:
            self.family.collate([p.image for p in out])  # samples that cannot share a batch fail here
        return out

    def load_transformer(self):
        """The pipeline without encoders; its transformer in `base_model_default_dtype`, quantized, and on the
        device or group-offloaded (memory.py), before any adapter exists."""
        cfg = self.cfg
        dtype = torch.float32 if cfg.base_model_default_dtype == "fp32" else self.rt.dtype
        extra = {}
        qc = load_config({"transformer": cfg.base_model_precision}, self.rt.dtype)
        if qc is not None and "transformer" not in self.components:
            extra = {"quantization_config": qc}
        pipe = self.family.load_pipeline(self.info.path, dtype, **{
            **self.components, **{c: None for c in self.family.encoder_components}, **extra})
        via = cfg.quantize_via
        if cfg.enable_group_offload:  # quantized where asked, then diffusers' hooks keep it on the CPU
            transformer = place_and_quantize(pipe.transformer, cfg.base_model_precision, via, self.rt.device,
                                             home=torch.device("cpu"))
            group_offload(transformer, cfg, self.rt.device)
            if self.rt.device.type == "cuda":
                log.warning(OFFLOAD_TRAINING)
        else:
            transformer = place_and_quantize(pipe.transformer, cfg.base_model_precision, via, self.rt.device)
        if cfg.base_model_precision == "int4-quanto" and self.rt.device.type == "cuda":
            log.warning(INT4_TRAINING)
        transformer.requires_grad_(False)
        if cfg.gradient_checkpointing:
            enable_checkpointing(transformer, cfg.gradient_checkpointing_backend, self.rt.device,
                                 cfg.gradient_checkpointing_interval)
        gc.collect()
        return pipe, transformer

    def build_trainer(self, samples, resume) -> Trainer:
        """Both adapters on the one transformer (seeded alike: each equals its `train` twin; a resumed run's
        weights loaded before any sharding), compiled after they exist, one PhaseState per phase of this process,
        and the model prepared for the process layout (DDP wrapper, or FSDP2 sharding with the optimizers)."""
        cfg, rt = self.cfg, self.rt
        for ph in self.phases:
            add_lora(self.transformer, ph.name, rank=cfg.lora_rank, alpha=cfg.alpha, dropout=cfg.lora_dropout,
                     init=cfg.lora_init, targets=self.targets, seed=cfg.seed)
        if cfg.enable_group_offload:  # adapters of offloaded blocks are made on the CPU; they live on the device
            for _, p in self.adapter_params(None):
                p.data = p.data.to(rt.device)
        if resume is not None:
            self.load_loras(resume)
        tread.install(self.transformer, self.family, cfg.tread_config)  # training-only token routing
        mine = [ph for ph in self.phases if rt.layout != "parallel-phases" or ph.name == self.phases[rt.rank].name]
        key = self.graph_key(rt.device, [ph.name for ph in mine])
        on, why = compile_decision(cfg, rt.device.type, self.steps, len(mine), rt.layout, compiled_before(key))
        log.info("compile: %s", why)
        self.compiled_key = key if on else None
        if on:
            compile_blocks(self.transformer)
        for ph in self.phases:  # DDP registers the parameters that require grad now
            for _, p in self.adapter_params(ph.name):
                p.requires_grad_(ph in mine)
        trainer = Trainer(cfg, self.family, self.transformer, self.transformer, samples, rt, self.guidance,
                          self.data)
        trainer.objective = make_objective(cfg, self.ladder, self.command, rt.layout,
                                           getattr(self, "glance_prompt_embeds", None))
        self.trainer_states = [trainer.new_phase(ph.name, ph.sigmas, [p for _, p in self.adapter_params(ph.name)],
                                                 self.steps, [n for n, _ in self.adapter_params(ph.name)])
                               for ph in mine]
        if rt.layout == "ddp":
            trainer.model = rt.accelerator.prepare(self.transformer)
        elif rt.layout == "fsdp":  # shards in place; accelerate points the optimizers at the sharded parameters
            trainer.model = rt.accelerator.prepare(self.transformer, *[s.optimizer for s in self.trainer_states])[0]
            for s in self.trainer_states:
                s.params = [p for _, p in self.adapter_params(s.name)]
        return trainer

    def adapter_params(self, name: str | None) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of one adapter's LoRA weights (every adapter's for None), in the transformer's order."""
        return [(n, p) for n, p in self.transformer.named_parameters()
                if "lora_" in n and (name is None or f".{name}." in n)]

    def hooks(self, quiet: bool) -> list:
        from .logs import make_hooks

        cfg = self.cfg
        hooks = make_hooks(cfg.report_to, cfg.output_dir, cfg.logging_dir, getattr(cfg, "tracker_project_name", None),
                           getattr(cfg, "tracker_run_name", None), cfg.model_dump(mode="json"),
                           self.rt.is_main and not quiet)
        hooks.append(checkpoint.Checkpoints(self, cfg.checkpointing_steps, cfg.checkpoints_total_limit))
        if cfg.glance_prompts:
            from .objectives import PromptHook, check_prompts

            check_prompts(cfg)  # before any encoder loads
            hooks.append(PromptHook())
        if cfg.validation_enabled:
            from .validate import Validation

            hooks.append(Validation(self, hooks))
        return hooks

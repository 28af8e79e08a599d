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
from ..export import OutputDir, save_lora, write_json
from . import checkpoint
from .encode import encode
from .hooks import Hooks, RunInfo
from .lora import add_lora
from .loop import Prepared, Trainer
from .optim import resolve_train_steps
from .plan import Plan
from .runtime import make_runtime

log = logging.getLogger(__name__)


def _to(d: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in d.items()}


class Job(Plan):
    """A planned job that can run. `components`: pipeline components handed to the family's `load_pipeline`."""

    def run(self, overwrite: bool = False, quiet: bool = False) -> Path:
        cfg, t_start = self.cfg, time.perf_counter()
        self.rt = rt = make_runtime(cfg, self.command)
        if rt.layout == "ddp":  # epochs count global batches (train_batch_size x processes)
            self.steps, self.steps_note = resolve_train_steps(cfg, self.batches_per_epoch(rt.world))
        self.out = out = OutputDir(cfg.output_dir, self.identity, overwrite or cfg.overwrite_output_dir,
                                   tuple(cfg.resume_allow_changes))
        resume = None if out.overwrite else checkpoint.resume_path(cfg.resume_from_checkpoint, out.final)
        if resume is not None:  # names the keys and files that differ, before the folder check does less well
            checkpoint.check_compatible(resume, checkpoint.read_manifest(resume), self.identity, self.files,
                                        self.layout(), cfg.resume_allow_changes)
        out.check()  # fail before loading weights
        hooks = Hooks(self.hooks(quiet))  # a tracker that is not installed fails here
        with rt.accelerator.main_process_first():  # the main process fills the caches, the others read them
            encoded, _ = encode(self, rt.device, rt.dtype)
        samples = self.prepared(encoded)
        self.pipe, self.transformer = self.load_transformer()
        self.trainer = self.build_trainer(samples)
        if resume is not None:
            self.load_loras(resume)
            saved = checkpoint.load_states(resume, rt.rank)
            for ph in self.trainer_states:
                ph.load_state_dict(saved[ph.name])
        start = self.trainer_states[0].step
        run = RunInfo(str(out.final), [p.name for p in self.phases], self.steps, start, rt.is_main,
                      rt.rank, rt.world, cfg.logging_steps, cfg.model_dump(mode="json"), self, self.trainer)
        if rt.is_main:  # the output folder appears only once everything before the loop worked
            out.prepare(self.run_config(), cfg.logging_dir)
            checkpoint.clean_partial(out.final)
        rt.accelerator.wait_for_everyone()
        try:
            if resume is not None and rt.is_main:
                log.info("resuming from %s (step %d of %d)", resume, start, self.steps)
            summary = self.trainer.run(self.trainer_states, hooks, run, time.perf_counter() - t_start)
            hooks.on_train_end(run, summary)
        finally:
            hooks.close()
        states = self.gather_states()
        if rt.is_main:
            self.write_outputs(states)
        rt.accelerator.wait_for_everyone()
        return out.final

    # --- the steps ----------------------------------------------------------------------------------------
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
            out.append(Prepared(x0.float().to(self.rt.device), _to(t, self.rt.device), _to(i, self.rt.device)))
        if self.cfg.train_batch_size > 1 and len(out) > 1:
            self.family.collate([p.image for p in out])  # samples that cannot share a batch fail here
        return out

    def load_transformer(self):
        pipe = self.family.load_pipeline(self.info.path, self.rt.dtype, **{
            **self.components, **{c: None for c in self.family.encoder_components}})
        transformer = pipe.transformer.to(self.rt.device)
        transformer.requires_grad_(False)
        if self.cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        gc.collect()
        return pipe, transformer

    def build_trainer(self, samples) -> Trainer:
        """Both adapters on the one transformer (seeded alike: each equals its `train` twin), compiled after
        they exist, the model prepared for the process layout, and one PhaseState per phase of this process."""
        cfg, rt = self.cfg, self.rt
        params = {ph.name: add_lora(self.transformer, ph.name, rank=cfg.lora_rank, alpha=cfg.alpha,
                                    dropout=cfg.lora_dropout, init=cfg.lora_init, targets=self.targets,
                                    seed=cfg.seed) for ph in self.phases}
        if cfg.compile_transformer:
            self.transformer.compile_repeated_blocks(fullgraph=True)
        mine = [ph for ph in self.phases if rt.layout != "parallel-phases" or ph.name == self.phases[rt.rank].name]
        for ph in self.phases:  # DDP registers the parameters that require grad now
            for p in params[ph.name]:
                p.requires_grad_(ph in mine)
        model = rt.accelerator.prepare(self.transformer) if rt.layout == "ddp" else self.transformer
        trainer = Trainer(cfg, self.family, self.transformer, model, samples, rt, self.guidance, self.data)
        self.trainer_states = [trainer.new_phase(ph.name, ph.sigmas, params[ph.name], self.steps) for ph in mine]
        return trainer

    def hooks(self, quiet: bool) -> list:
        from .logs import make_hooks

        cfg = self.cfg
        hooks = make_hooks(cfg.report_to, cfg.output_dir, cfg.logging_dir, getattr(cfg, "tracker_project_name", None),
                           getattr(cfg, "tracker_run_name", None), cfg.model_dump(mode="json"),
                           self.rt.is_main and not quiet)
        return hooks + [checkpoint.Checkpoints(self, cfg.checkpointing_steps, cfg.checkpoints_total_limit)]

    # --- states and files (also used by checkpoints) ----------------------------------------------------------
    def gather_states(self) -> list[dict[str, dict]]:
        """Every process's phase states (CPU), on the main process; [] elsewhere. All processes must call it."""
        mine = {ph.name: ph.state_dict() for ph in self.trainer_states}
        if self.rt.world == 1:
            return [mine]
        from accelerate.utils import gather_object, send_to_device

        return gather_object([send_to_device(mine, "cpu")])

    def write_loras(self, folder: Path, states: list[dict[str, dict]]) -> None:
        """Each phase's LoRA file (stock layout + run record) under `folder`, from the gathered states."""
        record = self.record()
        for ph in self.phases:
            saved = next(r[ph.name] for r in states if ph.name in r)
            params = [p for n, p in self.transformer.named_parameters() if "lora_" in n and f".{ph.name}." in n]
            with torch.no_grad():  # the main process may not train this phase (parallel phases)
                for p, v in zip(params, saved["params"], strict=True):
                    p.copy_(v)
            target = folder / ph.subdir if ph.subdir else folder
            target.mkdir(parents=True, exist_ok=True)
            save_lora(self.family.pipeline_class(), target, self.transformer, ph.name, record.header(ph.name))

    def load_loras(self, folder: Path) -> None:
        """Put the weights of every phase's LoRA file under `folder` into its adapter (peft's own loader)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        from ..export import WEIGHT_NAME

        for ph in self.phases:
            sd = load_file(str((folder / ph.subdir if ph.subdir else folder) / WEIGHT_NAME))
            sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
            result = set_peft_model_state_dict(self.transformer, sd, adapter_name=ph.name)
            if getattr(result, "unexpected_keys", None):
                raise GlanceError(f"resume_from_checkpoint: {folder}: LoRA keys that match no module "
                                  f"({', '.join(result.unexpected_keys[:3])})")

    def write_outputs(self, states) -> None:
        """The finished LoRAs and their logs, each folder/file replaced atomically."""
        staging = self.out.staging()
        try:
            self.write_loras(staging, states)  # also puts every phase's weights into this process's adapters
            for ph in self.phases:
                saved = next(r[ph.name] for r in states if ph.name in r)
                target = staging / ph.subdir if ph.subdir else staging
                after = self.trainer.eval_loss(ph.name, ph.sigmas)
                write_json(target / "train_log.json", {
                    "losses": saved["losses"], "steps": saved["step"], "eval_loss_before": saved["eval_before"],
                    "eval_loss_after": after, "trainable_params": sum(p.numel() for p in saved["params"])})
                log.info("%s: %s trainable params, %d steps, eval loss %.4f -> %.4f", ph.name,
                         f"{sum(p.numel() for p in saved['params']):,}", saved["step"], saved["eval_before"], after)
            for ph in self.phases:
                if ph.subdir:
                    self.out.replace_dir(staging / ph.subdir, ph.subdir)
                else:
                    for f in ("pytorch_lora_weights.safetensors", "train_log.json"):
                        (staging / f).replace(self.out.final / f)
        finally:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
        self.pipe = None

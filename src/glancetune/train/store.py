"""The LoRA store: the phases' adapters on the training transformer, for the job and its checkpoints. It names each
adapter's parameters, gathers every process's phase states on the main process, writes each phase's LoRA (stock
layout + run record), reads a checkpoint's LoRA files back into the adapters, and writes the finished outputs
(rescued to $GLANCETUNE_HOME/rescued/ when the output folder cannot take them).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import GlanceError
from ..export.files import WEIGHT_NAME, OutputDir, save_lora, write_json
from ..ladder import Phase
from ..record import RunRecord

log = logging.getLogger(__name__)


class LoraStore:
    """The adapters named after `phases` on `transformer`; `record`: the run record each LoRA file's header
    carries; `world`: the number of processes whose phase states are gathered."""

    def __init__(self, transformer, pipeline_class, phases: list[Phase], record: RunRecord, world: int = 1):
        self.transformer, self.pipeline_class, self.phases = transformer, pipeline_class, list(phases)
        self.record, self.world = record, world

    def params(self, name: str | None) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of one adapter's LoRA weights (every adapter's for None), in the transformer's order."""
        return [(n, p) for n, p in self.transformer.named_parameters()
                if "lora_" in n and (name is None or f".{name}." in n)]

    def gather(self, phase_states) -> list[dict[str, dict]]:
        """Every process's phase states (CPU), on the main process; [] elsewhere. All processes must call it."""
        mine = {ph.name: ph.state_dict() for ph in phase_states}
        if self.world == 1:
            return [mine]
        from accelerate.utils import gather_object, send_to_device

        return gather_object([send_to_device(mine, "cpu")])

    def write(self, folder: Path, states: list[dict[str, dict]], step: int | None = None) -> None:
        """Each phase's LoRA file (stock layout + run record) under `folder`, from the gathered states; `step`: a
        checkpoint's, recorded as the LoRAs' train_steps (what generate stores in its images)."""
        record = self.record if step is None else replace(self.record, train_steps=step)
        for ph in self.phases:
            saved = next(r[ph.name] for r in states if ph.name in r)  # the process that trained it
            target = folder / ph.subdir if ph.subdir else folder
            target.mkdir(parents=True, exist_ok=True)
            save_lora(self.pipeline_class, target, self.transformer, ph.name, record.header(ph.name),
                      state_dict=dict(zip(saved["names"], saved["params"], strict=True)))

    def load(self, folder: Path) -> None:
        """Put the weights of every phase's LoRA file under `folder` into its adapter (peft's own loader)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        for ph in self.phases:
            sd = load_file(str((folder / ph.subdir if ph.subdir else folder) / WEIGHT_NAME))
            sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
            result = set_peft_model_state_dict(self.transformer, sd, adapter_name=ph.name)
            if getattr(result, "unexpected_keys", None):
                raise GlanceError(f"resume_from_checkpoint: {folder}: LoRA keys that match no module "
                                  f"({', '.join(result.unexpected_keys[:3])})")

    def finish(self, out: OutputDir, states) -> None:
        """write_outputs; when that fails (disk full, folder made read-only, ...), the finished LoRAs go to
        $GLANCETUNE_HOME/rescued/ and the one-line error says where: finished work is never lost."""
        try:
            self.write_outputs(out, states)
        except OSError as e:
            import time

            from ..process import cache_root

            rescue = cache_root() / "rescued" / f"{out.final.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            try:
                rescue.mkdir(parents=True, exist_ok=True)
                self.write(rescue, states)
            except OSError as e2:
                raise GlanceError(f"output_dir {out.final}: the finished LoRAs could not be written ({e}) nor "
                                  f"rescued to {rescue} ({e2}); the last checkpoint in {out.final} resumes "
                                  "the run") from None
            raise GlanceError(f"output_dir {out.final}: the finished LoRAs could not be written there ({e}); "
                              f"they are in {rescue}") from None

    def write_outputs(self, out: OutputDir, states) -> None:
        """The finished LoRAs and their logs, each folder/file replaced atomically."""
        staging = out.staging()
        try:
            self.write(staging, states)
            for ph in self.phases:
                saved = next(r[ph.name] for r in states if ph.name in r)
                target = staging / ph.subdir if ph.subdir else staging
                after = saved["eval_after"]
                write_json(target / "train_log.json", {
                    "losses": saved["losses"], "steps": saved["step"], "eval_loss_before": saved["eval_before"],
                    "eval_loss_after": after, "trainable_params": sum(p.numel() for p in saved["params"])})
                log.info("%s: %s trainable params, %d steps, eval loss %.4f -> %.4f", ph.name,
                         f"{sum(p.numel() for p in saved['params']):,}", saved["step"], saved["eval_before"], after)
            for ph in self.phases:
                if ph.subdir:
                    out.replace_dir(staging / ph.subdir, ph.subdir)
                else:
                    for f in ("pytorch_lora_weights.safetensors", "train_log.json"):
                        (staging / f).replace(out.final / f)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

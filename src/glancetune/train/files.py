"""The phases' states and LoRA files, for the job and its checkpoints: gathering every process's phase states on
the main process, writing each phase's LoRA (stock layout + run record), reading a checkpoint's LoRA files back
into the adapters, and writing the finished outputs. A mixin of `Job` (it uses the job's plan, runtime,
transformer, trainer and output folder).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..errors import GlanceError
from ..export import WEIGHT_NAME, save_lora, write_json

log = logging.getLogger(__name__)


class PhaseFiles:
    # --- states and files (also used by checkpoints) ----------------------------------------------------------
    def gather_states(self) -> list[dict[str, dict]]:
        """Every process's phase states (CPU), on the main process; [] elsewhere. All processes must call it."""
        mine = {ph.name: ph.state_dict() for ph in self.trainer_states}
        if self.rt.world == 1:
            return [mine]
        from accelerate.utils import gather_object, send_to_device

        return gather_object([send_to_device(mine, "cpu")])

    def write_loras(self, folder: Path, states: list[dict[str, dict]], step: int | None = None) -> None:
        """Each phase's LoRA file (stock layout + run record) under `folder`, from the gathered states; `step`: a
        checkpoint's, recorded as the LoRAs' train_steps (what generate stores in its images)."""
        record = self.record()
        if step is not None:
            record.train_steps = step
        for ph in self.phases:
            saved = next(r[ph.name] for r in states if ph.name in r)  # the process that trained it
            target = folder / ph.subdir if ph.subdir else folder
            target.mkdir(parents=True, exist_ok=True)
            save_lora(self.family.pipeline_class(), target, self.transformer, ph.name, record.header(ph.name),
                      state_dict=dict(zip(saved["names"], saved["params"], strict=True)))

    def load_loras(self, folder: Path) -> None:
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

    def finish(self, states) -> None:
        """write_outputs; when that fails (disk full, folder made read-only, ...), the finished LoRAs go to
        $GLANCETUNE_HOME/rescued/ and the one-line error says where: finished work is never lost."""
        try:
            self.write_outputs(states)
        except OSError as e:
            import time

            from ..tiny import cache_root

            rescue = cache_root() / "rescued" / f"{self.out.final.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            try:
                rescue.mkdir(parents=True, exist_ok=True)
                self.write_loras(rescue, states)
            except OSError as e2:
                raise GlanceError(f"output_dir {self.out.final}: the finished LoRAs could not be written ({e}) nor "
                                  f"rescued to {rescue} ({e2}); the last checkpoint in {self.out.final} resumes "
                                  "the run") from None
            raise GlanceError(f"output_dir {self.out.final}: the finished LoRAs could not be written there ({e}); "
                              f"they are in {rescue}") from None

    def write_outputs(self, states) -> None:
        """The finished LoRAs and their logs, each folder/file replaced atomically."""
        staging = self.out.staging()
        try:
            self.write_loras(staging, states)
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
                    self.out.replace_dir(staging / ph.subdir, ph.subdir)
                else:
                    for f in ("pytorch_lora_weights.safetensors", "train_log.json"):
                        (staging / f).replace(self.out.final / f)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.pipe = None

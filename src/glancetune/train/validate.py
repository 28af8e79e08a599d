"""Validation images during `glance` training, made by the sampler `glancetune generate` uses (sampling/sampler.py).

At step 0 (a fresh run), every `validation_steps` job steps and after the last step, for every validation prompt
and seed: the Glance image of both adapters as they are at that step, on the run's exact ladder, with the pair's
guidance and CFG policy (`GlanceSampler` on the training transformer). At step 0 also the base model's own N-step
image (`validation_num_inference_steps`), its image on the ladder (compare.py) and, with `validation_ladder_file`,
its image on that searched ladder (the training-free alternative).

Files: `<output_dir>/validation/step-<k>/<prompt>-<seed>.png` (step 0 adds `-base-<N>`, `-base-ladder-<L>` and
`-base-searched-<K>`) and `grid.png` (rows: prompt x seed; columns: base-N | base-ladder | base-searched |
Glance@k, the base images read back from step-0). Each step folder is built under a temporary name and renamed
into place. PNGs carry their parameters (`glancetune` text chunk: prompt, seed, step, ladder, base model, guidance, size). TensorBoard gets the images
when `report_to` has it; train_log.jsonl a line `{"step", "event": "validation", "images", "grid"}`.

Edit families (`needs_control_image`): every prompt edits one control image, `validation_image` or by default the
control image of the first training pair (SimpleTuner's edit validation also takes its control images from the
training pairs); it is passed as `image=` exactly as `generate --image` passes it, the prompts are encoded with it
(text cache key: the control file's content, as the captions'), the PNGs record it as `control_image`, and the
grid gets a `control` column first.

Memory: prompts (and the negative prompt of true-CFG families) are encoded in `before_load`, through the text
cache, before the transformer loads; no text encoder is loaded while training. The VAE is loaded for each
validation and released after it. Nothing the training reads changes: the transformer runs in eval mode under
`torch.no_grad`, the global RNG is forked, every parameter's `requires_grad` and the active adapter are restored
(the LoRAs equal those of a run without validation; tested). A resumed run does no step-0 work again and drops
step folders after the step it resumes from (a killed run may have written them).
"""
from __future__ import annotations

import gc
import logging
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..engine.encode import ModelSource
from ..engine.runtime import Runtime
from ..errors import GlanceError
from ..plan.describe import control_path
from ..record import RunRecord
from .hooks import Hook

log = logging.getLogger(__name__)
FOLDER = "validation"
STEP = re.compile(r"^step-(\d+)$")


class Validation(Hook):
    """`source`: the model's parts (family, folder, components, text length); `record`: the run record (ladder,
    guidance, base model) the images are made and labelled with; `size`: the training size (the default);
    `samples`: the training samples (an edit family's default control image); `runtime`: device, dtype, layout;
    `logs`: the run's log hooks (the JSONL log and TensorBoard receive the images)."""

    def __init__(self, cfg, source: ModelSource, record: RunRecord, size: tuple[int, int], samples, runtime: Runtime,
                 logs: list):
        from ..sampling.prompts import validation_prompts
        from .logs import JsonlLog, TensorBoardLog

        fam = source.family
        self.cfg, self.source, self.family, self.record, self.rt = cfg, source, fam, record, runtime
        self.prompts = validation_prompts(cfg)  # a bad prompt file fails before any weights load
        self.jsonl = next((h for h in logs if isinstance(h, JsonlLog)), None)
        self.tb = next((h for h in logs if isinstance(h, TensorBoardLog)), None)
        self.size = cfg.validation_size or tuple(size)
        align = fam.alignment(source.info)
        if self.size[0] % align or self.size[1] % align:
            raise GlanceError(f"validation_resolution: {self.size[0]}x{self.size[1]} must be multiples of {align} "
                              f"for {fam.name}")
        self.seed = cfg.seed if cfg.validation_seed is None else cfg.validation_seed
        self.seeds = [self.seed + j for j in range(cfg.num_validation_images)]
        self.negative = cfg.validation_negative_prompt
        self.control_path = control_path(cfg, fam, samples)  # edit models; a bad path fails here
        self.control = None
        self.searched = None
        if cfg.validation_ladder_file:  # a bad file fails before any weights load
            from ..ladder import LadderFile

            self.searched = LadderFile.read(cfg.validation_ladder_file).ladder()
        self.off = self._why_off()
        if self.off:
            log.info("notice: no validation images: %s", self.off)
        if self.negative is not None and not fam.true_cfg:
            log.info("notice: validation_negative_prompt ignored: %s has no true CFG", fam.name)
            self.negative = None
        self.embeds: dict[str, dict] = {}
        self.done_step = -1

    def _why_off(self) -> str | None:
        if self.record.ladder is None or set(self.record.phases) != {"slow", "fast"}:
            return "`train` trains one LoRA; validation images need the slow and fast adapters of `glance`"
        if self.rt.layout in ("fsdp", "parallel-phases"):
            return f"not built for the {self.rt.layout} layout yet"
        return None

    # --- before the transformer loads: the prompts, encoded once (text cache) -----------------------------------
    def texts(self) -> list[str]:
        out = [p.text for p in self.prompts]
        if self.family.true_cfg:
            out.append(self.negative if self.negative is not None else self.family.negative_prompt)
        return list(dict.fromkeys(out))

    def before_load(self) -> None:
        if self.off or not self.rt.is_main:
            return
        from ..data.cache import file_digest
        from ..data.images import open_image
        from ..engine.encode import encode_texts

        key = None
        if self.control_path is not None:  # keyed by the file's content, as a training pair's caption
            self.control, key = open_image(self.control_path), file_digest(self.control_path)
        self.embeds = encode_texts(self.source, self.cfg, self.texts(), self.rt.device, self.rt.dtype, self.control,
                                   key)

    # --- when -------------------------------------------------------------------------------------------------
    def on_train_start(self, run):
        if self.off or not run.is_main:
            return
        self.root = Path(run.output_dir) / FOLDER
        self._drop_after(run.start_step)
        if run.start_step == 0:
            self.validate(run, 0)

    def on_step_end(self, run, step):
        if step % self.cfg.validation_steps == 0 and step < run.total_steps:
            self.validate(run, step)

    def on_train_end(self, run, summary):
        if self.done_step != run.total_steps:
            self.validate(run, run.total_steps)

    def _drop_after(self, start: int) -> None:
        """A fresh run starts with no validation folder; a resumed one drops step folders after `start` and
        temporary folders of a killed run."""
        if not self.root.is_dir():
            return
        if start == 0:
            _remove(self.root)
            return
        for p in self.root.iterdir():
            m = STEP.match(p.name)
            if (m and int(m.group(1)) > start) or p.name.startswith(".step-"):
                _remove(p)

    # --- what ---------------------------------------------------------------------------------------------------
    def validate(self, run, step: int) -> None:
        if self.off or not run.is_main:
            return
        t0 = time.perf_counter()
        sampler = self._sampler(run.trainer.transformer)
        tmp = self.root / f".step-{step}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            with untouched(run.trainer.transformer, run.trainer, self.rt.device):
                rows = self._images(sampler, step, tmp)
            self._grid(rows, step, tmp)
            final = self.root / f"step-{step}"
            if final.exists():
                _remove(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            sampler.pipe = None
            del sampler
            gc.collect()
            if self.rt.device.type == "cuda":
                torch.cuda.empty_cache()
        self.done_step = step
        self._report(run, step, rows, final, time.perf_counter() - t0)

    def _sampler(self, transformer):
        """A stock pipeline around the training transformer (both adapters), its VAE loaded now, no text
        encoders; the GlanceSampler of `generate` on it, with the run record's ladder, guidance and length."""
        from ..sampling.sampler import GlanceSampler

        fam, rec = self.family, self.record
        none = {c: None for c in fam.encoder_components if c != "vae"}
        pipe = self.source.load_pipeline(self.rt.dtype, **none, transformer=transformer)
        pipe.vae.to(self.rt.device)
        g = self.cfg.validation_guidance
        guidance = g if g is not None else rec.sampling_guidance(fam)
        return GlanceSampler(pipe, self.source.info, rec.ladder, guidance, rec.max_sequence_length, self.size,
                             rec.ladder_steps, rec.cfg_phases)

    def _kwargs(self, text: str) -> dict:
        dev, fam = self.rt.device, self.family
        pos = fam.prompt_call_kwargs({k: v.to(dev) for k, v in self.embeds[text].items()
                                      if isinstance(v, torch.Tensor)})
        kw = {"prompt_embeds": pos, "negative_prompt": self.negative}
        if self.control is not None:
            kw["image"] = self.control
        if fam.true_cfg:
            neg = self.embeds[self.negative if self.negative is not None else fam.negative_prompt]
            kw["negative_embeds"] = fam.prompt_call_kwargs({k: v.to(dev) for k, v in neg.items()
                                                            if isinstance(v, torch.Tensor)}, negative=True)
        return kw

    def _images(self, sampler, step: int, folder: Path) -> list[tuple[str, list, Path]]:
        """Every prompt x seed: (label, [base-N, base-ladder, Glance@step], Glance file) with the base images made
        now at step 0, else read back from step-0 (None when absent)."""
        w, h = self.size
        refs = self._references(sampler)  # (file suffix, image kind, fn(prompt, seed, kwargs))
        rows = []
        for p in self.prompts:
            kw = self._kwargs(p.text)
            for seed in self.seeds:
                stem = f"{p.name}-{seed}"
                glance = sampler([p.text], seed, w, h, **kw)[0]
                self._save(glance, folder / f"{stem}.png", p.text, seed, step, sampler, "glance")
                images = []
                for suffix, kind, fn in refs:
                    if step == 0:
                        images.append(fn(p.text, seed, kw))
                        self._save(images[-1], folder / f"{stem}-{suffix}.png", p.text, seed, 0, sampler, kind)
                    else:
                        images.append(_open(self.root / "step-0" / f"{stem}-{suffix}.png"))
                first = [self.control] if self.control is not None else []
                rows.append((stem, first + images + [glance], folder / f"{stem}.png"))
        return rows

    def _references(self, sampler) -> list:
        """The base model's images beside the Glance image (made at step 0): its own N steps, the run's ladder and
        the searched ladder of `validation_ladder_file`."""
        from ..sampling.compare import base_on_ladder, base_own_schedule

        w, h = self.size
        n_base, n_lad = self.cfg.validation_num_inference_steps, len(sampler.ladder.sigmas)
        refs = [(f"base-{n_base}", f"base-{n_base}",
                 lambda t, s, kw: base_own_schedule(sampler, n_base, [t], s, w, h, **kw)[0]),
                (f"base-ladder-{n_lad}", "base-ladder", lambda t, s, kw: base_on_ladder(sampler, [t], s, w, h, **kw)[0])]
        if self.searched is not None:
            refs.append((f"base-searched-{len(self.searched.sigmas)}", "base-searched",
                         lambda t, s, kw: base_on_ladder(sampler, [t], s, w, h, ladder=self.searched, **kw)[0]))
        return refs

    def _save(self, image, path: Path, prompt: str, seed: int, step: int, sampler, kind: str) -> None:
        from ..sampling.images import save_images

        rec = self.record
        info = {"prompt": prompt, "seed": seed, "step": step, "image": kind, "base_model": rec.base_model,
                "ladder": rec.ladder.to_dict(), "guidance": sampler.guidance, "size": list(self.size),
                "sampler": "exact" if kind != f"base-{self.cfg.validation_num_inference_steps}" else "base",
                **({"ladder": self.searched.to_dict()} if kind == "base-searched" else {}),
                **({"negative_prompt": self.negative} if self.negative is not None else {}),
                **({"control_image": str(self.control_path)} if self.control_path is not None else {})}
        save_images([image], path, info)

    def _grid(self, rows, step: int, folder: Path) -> None:
        from ..sampling.compare import grid
        from ..sampling.images import save_images

        n_base, n_lad = self.cfg.validation_num_inference_steps, len(self.record.ladder.sigmas)
        first = ["control"] if self.control is not None else []
        searched = [f"base-searched-{len(self.searched.sigmas)}"] if self.searched is not None else []
        im = grid([r[1] for r in rows], first + [f"base-{n_base}", f"base-ladder-{n_lad}", *searched, f"Glance@{step}"],
                  [r[0] for r in rows])
        save_images([im], folder / "grid.png", {"step": step, "grid": [r[0] for r in rows]})

    def _report(self, run, step: int, rows, final: Path, seconds: float) -> None:
        out = Path(run.output_dir)
        images = [str((final / r[2].name).relative_to(out)) for r in rows]
        grid_path = final / "grid.png"
        if self.jsonl is not None:
            self.jsonl.write_event({"step": step, "event": "validation", "images": images,
                                    "grid": str(grid_path.relative_to(out)), "seconds": round(seconds, 3)})
        writer = getattr(self.tb, "writer", None)
        if writer is not None:
            import numpy as np
            from PIL import Image

            for r in rows:
                writer.add_image(f"validation/{r[0]}", np.asarray(r[1][-1].convert("RGB")), step, dataformats="HWC")
            with Image.open(grid_path) as g:
                writer.add_image("validation/grid", np.asarray(g.convert("RGB")), step, dataformats="HWC")
            writer.flush()
        log.info("validation step %d: %d image(s) in %s (%.1fs)", step, len(rows), final, seconds)


@contextmanager
def untouched(transformer, trainer, device):
    """Run validation without changing what training reads next: eval mode, the global RNG forked, and on exit
    the train/eval mode, every parameter's requires_grad and the trainer's active adapter as they were."""
    flags = [(p, p.requires_grad) for p in transformer.parameters()]
    was_training = transformer.training
    transformer.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            yield
    finally:
        active = getattr(trainer, "active", None)
        if active is not None:
            transformer.set_adapter(active)
        for p, f in flags:
            p.requires_grad_(f)
        transformer.train(was_training)


def _open(path: Path):
    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as im:
        return im.convert("RGB")


def _remove(p: Path) -> None:
    away = p.with_name(f".{p.name}.old-{os.getpid()}")
    os.replace(p, away)
    shutil.rmtree(away, ignore_errors=True)

"""The chained Glance sampler: one stock pipeline, two named adapters, the exact ladder, one switch.

The pipeline's scheduler is replaced by an identity `FlowMatchEulerDiscreteScheduler` (no shift, no terminal
stretch), so `sigmas=ladder` is used verbatim; the adapter switches from "slow" to "fast" in
`callback_on_step_end` after the last slow step. This is exactly reproducible with stock diffusers (see README).
`sampler="official-compat"` instead reproduces the official Glance Qwen pipelines' trajectory (official.py).
What is sampled (the pair, its ladder, size, guidance) is resolved in spec.py; LoRA files without our metadata are
read by lora_files.py; a recognised published pair (`--preset`) brings its ladder, guidance and training alpha.
"""
from __future__ import annotations

import logging
import time

import torch

from ..engine.runtime import compute_dtype, configure_backends, select
from ..errors import GlanceError
from ..export.files import WEIGHT_NAME, lora_file
from ..families import ModelInfo, model_info
from ..schedule import LADDER_STEPS, Ladder, identity_scheduler_config
from .fused import MODES, BaseOnly, Fused, Unfused
from .lora_files import load_adapter
from .spec import GlanceSpec, check_image_arg, check_pair, check_request, check_size, resolve_spec  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


class GlanceSampler:
    """Holds one pipeline with the two adapters loaded; call it with prompts to sample on the ladder."""

    def __init__(self, pipe, info: ModelInfo, ladder: Ladder, guidance: float | None,
                 max_sequence_length: int | None = None, size: tuple[int, int] | None = None,
                 ladder_steps: int = LADDER_STEPS, cfg_phases: str | None = None):
        """`size`: (width, height) used when a call gives none: the trained size (`from_spec` passes the spec's);
        `ladder_steps`: N of the N-step schedule the ladder was cut from (the official-compat slow grid);
        `cfg_phases`: the default true-CFG policy (a distilled pair's record: "none" or "slow")."""
        self.pipe, self.info, self.family, self.ladder = pipe, info, info.family, ladder
        self.cfg_phases = cfg_phases
        self.ladder_steps = ladder_steps
        self.size = size
        self.guidance = guidance
        self.max_sequence_length = max_sequence_length or info.family.default_max_sequence_length
        self.own_scheduler = pipe.scheduler  # the model's own (base reference images: compare.py)
        pipe.scheduler = type(pipe.scheduler).from_config(identity_scheduler_config(pipe.scheduler.config))
        pipe.set_progress_bar_config(disable=None, leave=False)  # tqdm: shown on a terminal only
        # fused.py: `lora_mode`; a pipeline without LoRAs samples the base model on the ladder
        self.adapters = Unfused(pipe) if getattr(pipe.transformer, "peft_config", None) else BaseOnly()
        self.load_parts: dict[str, float] = {}  # seconds of from_spec's parts (imports, pipeline, ...)

    @property
    def lora_mode(self) -> str:
        return "fused" if isinstance(self.adapters, Fused) else "unfused"

    @lora_mode.setter
    def lora_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise GlanceError(f"--lora-mode: {mode!r} is not one of {', '.join(MODES)}")
        if isinstance(self.adapters, BaseOnly):
            if mode == "fused":
                raise GlanceError("--lora-mode: fused needs LoRAs; none are loaded (--ladder-file without --run)")
            return
        if mode != self.lora_mode:
            self.adapters.release()
            self.adapters = MODES[mode](self.pipe)

    def compile(self) -> None:
        """Regional compile of the transformer's blocks (engine/speed.py `compile_blocks`), done by the next call.
        H200, full-size FLUX.1-dev, 10-step 1024² images, both adapters unfused: 2.38 -> 1.82 s per image warm
        (0.76x) for ~21 s of compiling in the first call (one graph per adapter); the image differs from the eager
        one by at most 6.5/255 in bf16 (fused weights: 6.0). It pays after ~40 images: a warm sampler's option
        (`glancetune server --compile`, `generate --compile` with many prompts), not one image's."""
        from ..engine.speed import compile_blocks

        compile_blocks(self.pipe.transformer)

    @classmethod
    def from_spec(cls, spec: GlanceSpec, device: str | None = None, dtype: torch.dtype | None = None,
                  components: dict | None = None, lora_load: str = "as-trained",
                  base_model_precision: str = "no_change"):
        """`components`: pipeline components handed to the family's `load_pipeline` (e.g. `processor=`).
        `lora_load`: "as-trained" (our loader, lora_files.py) or "stock" (exactly `pipe.load_lora_weights`).
        `base_model_precision`: quantize the transformer before the LoRAs are loaded (engine/quantize.py)."""
        if lora_load not in ("as-trained", "stock"):
            raise GlanceError(f"--lora-load: {lora_load!r} is not one of as-trained, stock")
        from ..process import quiet_libraries

        quiet_libraries()  # called from Python too: the libraries' notices and bars down to errors, as the CLI does
        info = model_info(spec.base_model)
        pub = spec.published
        if pub is not None and pub not in info.family.published:
            raise GlanceError(f"--preset {pub.name}: the published LoRAs are for {pub.base_model}, but "
                              f"{spec.base_model} is a {info.family.name} model (--preset none loads them as is)")
        device, precision = select(device)
        if base_model_precision != "no_change":
            from ..engine.quantize import check_sampling_precision

            check_sampling_precision(base_model_precision, device)
        configure_backends(device)
        dtype = dtype or compute_dtype(precision)
        clock = [time.perf_counter()]  # the load's parts, for generate's final line
        info.family.pipeline_class()  # diffusers' pipeline module and what it imports (transformers' models, ...)
        clock.append(time.perf_counter())
        pipe = info.family.load_pipeline(info.path, dtype, **(components or {}))
        clock.append(time.perf_counter())
        for name, module in pipe.components.items():  # a transformer to quantize reaches the device block by block
            if isinstance(module, torch.nn.Module) and (name != "transformer" or base_model_precision == "no_change"):
                module.to(device)
        clock.append(time.perf_counter())
        if pub is not None:
            log.info("notice: using the published %s recipe (%s): ladder %s, guidance %g", pub.name, pub.source,
                     spec.ladder.to_dict(), spec.guidance)
        for name, path in (("slow", spec.slow), ("fast", spec.fast)) if spec.slow is not None else ():
            note = load_adapter(pipe, lora_file(path), name, pub.alpha_per_rank if pub else None,
                                stock=lora_load == "stock")
            if note:
                log.info("%s", note)
        pipe.transformer.eval()  # the LoRA layers peft adds are in training mode: LoRA dropout would sample noise
        if base_model_precision != "no_change":  # after the LoRAs: diffusers' FLUX loader reads plain weights
            from ..engine.quantize import place_and_quantize

            place_and_quantize(pipe.transformer, base_model_precision, "accelerator", device, "--base-model-precision")
        clock.append(time.perf_counter())
        guidance = spec.guidance if spec.guidance_explicit else info.family.inference_guidance(spec.guidance)
        sampler = cls(pipe, info, spec.ladder, guidance, spec.max_sequence_length, (spec.width, spec.height),
                      spec.ladder_steps, spec.cfg_phases)
        sampler.load_parts = dict(zip(("imports", "pipeline", "to device", "adapters"), (b - a for a, b in zip(clock, clock[1:]))))
        return sampler

    def use_spec(self, spec: GlanceSpec) -> None:
        """Sample as `from_spec(spec)` would, on this loaded pipeline (a warm server's: the same model, adapters
        and precision): the spec's ladder, guidance, size, text length and CFG policy."""
        self.ladder, self.size, self.ladder_steps = spec.ladder, (spec.width, spec.height), spec.ladder_steps
        self.guidance = spec.guidance if spec.guidance_explicit else self.family.inference_guidance(spec.guidance)
        self.max_sequence_length = spec.max_sequence_length or self.family.default_max_sequence_length
        self.cfg_phases, self.load_parts = spec.cfg_phases, {}

    CFG_PHASES = ("both", "slow", "fast", "none")
    SAMPLERS = ("exact", "official-compat")

    def nfe(self, cfg_phases: str | None = None, ladder: Ladder | None = None) -> int:
        """Transformer passes per image: 2 per step where true CFG is on."""
        ladder = ladder or self.ladder
        phases = self._cfg_phases(cfg_phases, self.guidance)
        doubled = {"both": len(ladder.sigmas), "slow": len(ladder.slow), "fast": len(ladder.fast), "none": 0}
        return len(ladder.sigmas) + doubled[phases]

    def base_cfg_phases(self, guidance) -> str:
        """The base model's own true-CFG policy at this guidance (the pair's record may set another)."""
        return "both" if self.family.cfg_on(guidance) else "none"

    def _cfg_phases(self, cfg_phases: str | None, guidance) -> str:
        if not self.family.true_cfg:
            if cfg_phases not in (None, "none"):
                raise GlanceError(f"--cfg-phases: {self.family.name} uses a guidance embedding, not true CFG")
            return "none"
        cfg_phases = self.cfg_phases if cfg_phases is None else cfg_phases
        if cfg_phases is None:
            return self.base_cfg_phases(guidance)
        if cfg_phases not in self.CFG_PHASES:
            raise GlanceError(f"--cfg-phases: {cfg_phases!r} is not one of {', '.join(self.CFG_PHASES)}")
        return cfg_phases

    def guidance_kwargs(self, guidance, negative_prompt: str | None = None, negative_embeds: dict | None = None):
        """(kwargs with CFG on, with CFG off) for the pipeline call; a guidance embedding (FLUX.1) is passed either
        way. `negative_prompt` / `negative_embeds` (`negative_prompt_embeds=`-style) replace the family's."""
        cfg_on = self.family.pipeline_kwargs(guidance, self.max_sequence_length)
        cfg_off = self.family.pipeline_kwargs(None, self.max_sequence_length) if self.family.true_cfg else cfg_on
        if negative_prompt is not None:
            import inspect

            if not self.family.true_cfg or "negative_prompt" not in inspect.signature(self.pipe.__call__).parameters:
                raise GlanceError(f"negative prompt: {self.family.name}'s pipeline takes none (it has no true CFG "
                                  "with a negative prompt)")
            if negative_embeds is None:
                cfg_on = {**cfg_on, "negative_prompt": negative_prompt}
        if negative_embeds is not None and self.family.true_cfg:
            cfg_on = {**{k: v for k, v in cfg_on.items() if k != "negative_prompt"}, **negative_embeds}
        return cfg_on, cfg_off

    def __call__(self, prompts: list[str] | str, seed: int = 0, width: int | None = None, height: int | None = None,
                 guidance: float | None = None, output_type: str = "pil", ladder: Ladder | None = None,
                 cfg_phases: str | None = None, image=None, sampler: str = "exact", negative_prompt: str | None = None,
                 prompt_embeds: dict | None = None, negative_embeds: dict | None = None):
        """Image k uses a CPU generator seeded `seed + k`, so it does not depend on the batch it is in.

        `cfg_phases` (true-CFG families): both (default when guidance > 1), slow, fast or none. "both"/"none"
        is one pipeline call; "slow"/"fast" stops the first call after the slow steps (latent output) and
        continues with a second call on the fast sigmas, the exact chaining of the notes.

        `image` (edit models only, required there): the control image (PIL), passed to the pipeline as `image=`;
        each prompt then runs as its own call (the edit pipelines condition one prompt on one image).
        `sampler`: "exact" (the above) or "official-compat" (the official Qwen pipelines' trajectory, official.py).
        `width`/`height` default to the sampler's `size` (from_spec: the size the LoRAs were trained at).
        `prompt_embeds` / `negative_embeds`: the prompts already encoded (`prompt_embeds=`-style pipeline kwargs,
        Family.prompt_call_kwargs), for a pipeline without text encoders (validation); `prompts` then only name them.
        """
        if sampler not in self.SAMPLERS:
            raise GlanceError(f"--sampler: {sampler!r} is not one of {', '.join(self.SAMPLERS)}")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if width is None or height is None:
            if self.size is None:
                raise GlanceError("--width/--height: give both (this sampler was built without a trained size)")
            width = self.size[0] if width is None else width
            height = self.size[1] if height is None else height
        check_request(prompts, seed, width, height, guidance)
        check_image_arg(self.family, image)
        if image is not None and len(prompts) > 1:
            return [im for k, p in enumerate(prompts)
                    for im in self(p, seed + k, width, height, guidance, output_type, ladder, cfg_phases, image,
                                   sampler, negative_prompt)]
        ladder = ladder or self.ladder
        check_size(self.info, width, height)
        g = self.guidance if guidance is None else guidance
        phases = self._cfg_phases(cfg_phases, g)
        gens = [torch.Generator("cpu").manual_seed(seed + k) for k in range(len(prompts))]
        common = dict(width=width, height=height, generator=gens, **(prompt_embeds or {"prompt": prompts}))
        if image is not None:
            common["image"] = image
        cfg_on, cfg_off = self.guidance_kwargs(g, negative_prompt, negative_embeds)
        if sampler == "official-compat":
            from . import official

            if self.lora_mode == "fused":
                raise GlanceError("--lora-mode fused: not with --sampler official-compat")
            return official.sample(self, common, ladder, output_type, phases, cfg_on, cfg_off)
        try:
            return self._chain(common, ladder, output_type, phases, cfg_on, cfg_off, height, width)
        finally:
            self.adapters.release()  # fused: the exact base weights again

    def _chain(self, common, ladder, output_type, phases, cfg_on, cfg_off, height, width):
        """The exact chain: slow adapter for the slow steps, fast for the rest (one call, or two for a one-phase
        CFG policy)."""
        boundary = ladder.boundary
        self.adapters.use("slow")
        if phases in ("both", "none"):
            def switch(pipe, i, t, kwargs):
                if i == boundary - 1:
                    self.adapters.use("fast")
                return {}

            out = self.pipe(sigmas=list(ladder.sigmas), num_inference_steps=len(ladder.sigmas),
                            output_type=output_type, callback_on_step_end=switch,
                            callback_on_step_end_tensor_inputs=[], **common,
                            **(cfg_on if phases == "both" else cfg_off))
            return out.images

        def stop(pipe, i, t, kwargs):
            if i == boundary - 1:
                pipe._interrupt = True
            return {}

        first = self.pipe(sigmas=list(ladder.sigmas), num_inference_steps=len(ladder.sigmas), output_type="latent",
                          callback_on_step_end=stop, callback_on_step_end_tensor_inputs=[], **common,
                          **(cfg_on if phases == "slow" else cfg_off)).images
        self.adapters.use("fast")
        out = self.pipe(sigmas=list(ladder.fast), num_inference_steps=len(ladder.fast), output_type=output_type,
                        latents=self.family.resume_latents(self.pipe, first, height, width), **common,
                        **(cfg_on if phases == "fast" else cfg_off))
        return out.images


__all__ = ["GlanceSampler", "GlanceSpec", "check_image_arg", "check_request", "check_size", "resolve_spec",
           "WEIGHT_NAME"]

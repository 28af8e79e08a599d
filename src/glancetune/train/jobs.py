"""The two training jobs: `train` (one phase, one LoRA) and `glance` (slow + fast in one process).

Both load the model once, encode captions and images once, release the encoders, then run their phases on the
shared transformer, writing everything into a temporary folder that replaces `output_dir` only when complete.
"""
from __future__ import annotations

import gc
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .. import __version__
from ..data import load_backends
from ..data.edit import load_job_plan
from ..errors import GlanceError
from ..export import CONFIG_NAME, META_PREFIX, OutputDir, save_lora, write_json
from ..families import ModelInfo, model_info, resolve_family
from ..schedule import (FAST_INDICES, LADDER_STEPS, SLOW_INDICES, Ladder, cut_ladder, parse_index_list,
                        parse_sigma_list)
from .lora import add_lora, lora_targets
from .loop import PhaseTrainer, Prepared


@dataclass
class Phase:
    name: str  # adapter name and role: slow | fast | lora
    sigmas: tuple[float, ...]
    subdir: str  # "" = output_dir itself


def pick_device(cfg) -> tuple[torch.device, torch.dtype]:
    if cfg.device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(cfg.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise GlanceError(f"device: {cfg.device!r} requested but no CUDA device is available")
    if dev.type == "cuda":
        # torch's cuDNN attention crashes on FLUX/Qwen shapes on H100 (illegal memory access); flash/efficient
        # kernels are used instead. Global, so gradient-checkpoint recomputation picks the same kernel.
        torch.backends.cuda.enable_cudnn_sdp(False)
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if dev.type == "cuda" else "no"
    return dev, (torch.bfloat16 if mp == "bf16" else torch.float32)


def scaled_indices(steps: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The Glance index pattern ([0,2,4,6,8] | [10,20,30,40,49] at 50 steps) scaled to another N."""
    if steps == LADDER_STEPS:
        return SLOW_INDICES, FAST_INDICES
    scale = steps / LADDER_STEPS
    slow = tuple(round(i * scale) for i in SLOW_INDICES)
    fast = tuple(round(i * scale) for i in FAST_INDICES[:-1]) + (steps - 1,)
    idx = slow + fast
    if any(b <= a for a, b in zip(idx, idx[1:])):
        raise GlanceError(f"glance_ladder_steps: {steps} is too few to scale the default indices "
                          f"(got {list(idx)}); give glance_slow_indices and glance_fast_indices")
    return slow, fast


def model_schedule(info: ModelInfo, width: int, height: int, steps: int) -> tuple[float, ...]:
    """The model's own `steps`-step sigmas at this image size (what its pipeline would sample on)."""
    return info.family.own_schedule(info, width, height, steps)


def glance_ladder(cfg, info: ModelInfo, width: int, height: int) -> Ladder:
    slow, fast = cfg.glance_slow_timesteps, cfg.glance_fast_timesteps
    if (slow is None) != (fast is None):
        missing = "glance_fast_timesteps" if fast is None else "glance_slow_timesteps"
        raise GlanceError(f"{missing}: give both explicit lists or neither")
    if slow is not None:
        return Ladder(tuple(sorted(parse_sigma_list(slow, "glance_slow_timesteps"), reverse=True)),
                      tuple(sorted(parse_sigma_list(fast, "glance_fast_timesteps"), reverse=True)))
    steps = cfg.glance_ladder_steps
    si, fi = cfg.glance_slow_indices, cfg.glance_fast_indices
    if (si is None) != (fi is None):
        raise GlanceError("glance_slow_indices / glance_fast_indices: give both or neither")
    if si is None:
        si, fi = scaled_indices(steps)
    else:
        si, fi = parse_index_list(si, "glance_slow_indices"), parse_index_list(fi, "glance_fast_indices")
    return cut_ladder(model_schedule(info, width, height, steps), si, fi)


def stored_model_ref(ref: str) -> str:
    """The base model reference written into metadata: absolute for local folders, as given otherwise."""
    p = Path(ref)
    return str(p.resolve()) if not ref.startswith("tiny:") and p.is_dir() else ref


def data_digest(samples) -> str:
    """Files, captions and crops (sizes, boxes, conditioning): a different dataset or geometry is a different run."""
    h = hashlib.sha256()
    for s in samples:
        h.update(s.image_path.name.encode() + b"\0" + s.image_path.read_bytes() + b"\0" + s.caption.encode())
        h.update(json.dumps([s.dataset_id, s.repeats, s.crop.to_dict()]).encode())
        control = getattr(s, "control_path", None)  # edit datasets
        if control is not None:
            h.update(b"\0control\0" + control.name.encode() + b"\0" + control.read_bytes())
        for c in s.conditioning:
            h.update(c.image_path.read_bytes() + json.dumps([c.dataset_id, c.crop.to_dict()]).encode())
    return h.hexdigest()[:16]


def captions_by_file(samples) -> dict[str, str]:
    """File name -> caption (dataset id / relative path where names repeat across datasets or folders)."""
    names = Counter(s.image_path.name for s in samples)
    return {(s.image_path.name if names[s.image_path.name] == 1 else f"{s.dataset_id}/{s.key}{s.image_path.suffix}"):
            s.caption for s in samples}


def _to(d: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in d.items()}


class Job:
    """Loads the model, data and encodings once; runs phases; writes the outputs."""

    def __init__(self, cfg, command: str, components: dict | None = None):
        """`components`: pipeline components handed to the family's `load_pipeline` (see Family.load_pipeline)."""
        if command == "glance" and cfg.flow_custom_timesteps is not None:
            raise GlanceError("flow_custom_timesteps: not used by `glance`; give glance_slow_timesteps and "
                              "glance_fast_timesteps (or nothing: the model's own ladder)")
        self.cfg, self.command, self.components = cfg, command, components or {}
        family, flavour = resolve_family(cfg.model_family, cfg.model_flavour)
        self.info = model_info(cfg.model_ref, family.name, flavour)
        self.family = self.info.family
        align = self.family.alignment(self.info)
        self.plan = load_job_plan(load_backends(cfg.data_backend_config), align, cfg.seed,
                                  edit=self.family.needs_control_image)
        self.samples = self.plan.samples
        if cfg.glance_single_image and len(self.samples) > 1:
            raise GlanceError(f"glance_single_image: {cfg.data_backend_config} holds {len(self.samples)} images "
                              f"({', '.join(s.image_path.name for s in self.samples[:3])}"
                              f"{', ...' if len(self.samples) > 3 else ''}); Glance's one-image recipe needs exactly "
                              "one (or set glance_single_image: false)")
        # the size the ladder is cut at and LoRAs are labelled with: the bucket holding the most images
        self.width, self.height = self.plan.primary_size
        self.targets_source, self.targets = lora_targets(self.family, cfg)
        self.max_sequence_length = cfg.tokenizer_max_length or self.family.default_max_sequence_length
        self.guidance = self.family.training_guidance(self.info.transformer_config, cfg)
        self.ladder: Ladder | None = None
        if command == "glance":
            self.ladder = glance_ladder(cfg, self.info, self.width, self.height)
            self.phases = [Phase("slow", self.ladder.slow, "slow"), Phase("fast", self.ladder.fast, "fast")]
        elif cfg.flow_custom_timesteps is not None:
            self.phases = [Phase("lora", parse_sigma_list(cfg.flow_custom_timesteps, "flow_custom_timesteps"), "")]
        else:
            self.phases = [Phase("lora", model_schedule(self.info, self.width, self.height,
                                                        cfg.glance_ladder_steps), "")]
        self.identity = {"command": command, **cfg.model_dump(exclude={"output_dir", "overwrite_output_dir", "cache_dir"}),
                         "data_sha256": data_digest(self.samples)}

    # ---------------------------------------------------------------------------------------------------------
    def describe(self) -> str:
        kind = "edit pair(s) (target + control)" if self.family.needs_control_image else "sample(s)"
        buckets = len({s.target for s in self.samples})
        lines = [f"model {self.info.ref} ({self.family.name}), {len(self.samples)} {kind} at "
                 f"{self.width}x{self.height}" + (f" (the largest of {buckets} buckets: the ladder's size)"
                                                  if buckets > 1 else "") + f", guidance {self.guidance}",
                 *self.plan.describe(self.cfg.train_batch_size),
                 f"LoRA rank {self.cfg.lora_rank} alpha {self.cfg.alpha:g} on {len(self.targets)} module types "
                 f"({self.targets_source}): {', '.join(self.targets)}"]
        for ph in self.phases:
            lines.append(f"phase {ph.name}: {len(ph.sigmas)} sigmas " + ", ".join(f"{s:.6g}" for s in ph.sigmas))
        caches = self.sample_caches()
        lines.append("caches: text embeddings " + ", ".join(sorted({str(t.dir) for t, _ in caches}))
                     + "; VAE latents " + ", ".join(sorted({str(v.dir) for _, v in caches})))
        return "\n".join(lines)

    # --- encodings (cached on disk) -----------------------------------------------------------------------
    def caches(self):
        from ..data.cache import TensorCache
        from ..tiny import cache_root

        root = Path(self.cfg.cache_dir) if self.cfg.cache_dir else cache_root() / "cache"
        return TensorCache(root / "text", "text embedding"), TensorCache(root / "vae", "VAE latent")

    def sample_caches(self):
        """(text cache, VAE cache) per sample: the dataset's `cache_dir_vae` and its text_embeds dataset's
        `cache_dir` where the dataloader JSON gives them, else the defaults under `cache_dir`."""
        from ..data.cache import TensorCache

        text_default, vae_default = self.caches()
        made = {}

        def get(folder, kind, default):
            if not folder:
                return default
            return made.setdefault((kind, folder), TensorCache(folder, kind))

        return [(get(getattr(s, "text_cache_dir", None), "text embedding", text_default),
                 get(getattr(s, "cache_dir_vae", None), "VAE latent", vae_default)) for s in self.samples]

    def cache_keys(self, dtype):
        """(text key, text description, image key, image description) per sample. The image side is keyed by the
        file's content and the exact crop (so a hit decodes nothing); edit models add the control file's content."""
        from ..data.cache import component_identity, digest, file_digest

        path, fam = self.info.path, self.family
        vae_id = component_identity(path, "vae")
        text_ids = {c: component_identity(path, c) for c in fam.text_components()}
        out = []
        for s in self.samples:
            control = getattr(s, "control_path", None)  # edit models: conditions both text and latents
            control = None if control is None else file_digest(control)
            tdesc = {"kind": "text", "family": fam.name, "encoders": text_ids, "dtype": str(dtype),
                     "max_sequence_length": self.max_sequence_length, "caption": s.caption, "control": control}
            idesc = {"kind": "vae", "family": fam.name, "vae": vae_id, "dtype": str(dtype),
                     "image": file_digest(s.image_path), "crop": s.crop.to_dict(), "control": control}
            out.append((digest(tdesc), tdesc, digest(idesc), idesc))
        return out

    def encode(self, device, dtype) -> tuple[list[tuple[dict, dict]], int]:
        """Per sample (text kwargs, {"x0", image kwargs}) on the CPU, from the caches; the encoders (and only they)
        are loaded when something is missing, and released before the transformer is loaded."""
        caches = self.sample_caches()
        keys = self.cache_keys(dtype)
        found = [(tc.get(tk), vc.get(ik)) for (tk, _, ik, _), (tc, vc) in zip(keys, caches)]
        missing = sum((t is None) + (i is None) for t, i in found)
        if missing:
            for cache in {id(c): c for pair in caches for c in pair}.values():
                cache.check_writable()
            pipe = self.family.load_pipeline(self.info.path, dtype, **{**self.components, "transformer": None})
            for name in self.family.encoder_components:
                getattr(pipe, name).to(device)
            with torch.no_grad():
                for n, ((tk, tdesc, ik, idesc), (t, i), (text_cache, vae_cache)) in enumerate(zip(keys, found, caches)):
                    # edit models: the control image conditions both the prompt and the transformer input
                    s = self.samples[n]
                    control = {"control": s.control} if getattr(s, "control_path", None) is not None else {}
                    if t is None:
                        t = self.family.encode_prompts(pipe, [s.caption], device, self.max_sequence_length,
                                                       **control)
                        text_cache.put(tk, t, tdesc)
                    if i is None:
                        x0, image = self.family.encode_images(pipe, s.load_pixels(), **control)
                        i = {"x0": x0.float(), **image}
                        vae_cache.put(ik, i, idesc)
                    found[n] = (t, i)
            del pipe
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        return found, missing

    def prepare(self, device, dtype):
        cfg = self.cfg
        found, _ = self.encode(device, dtype)
        prepared = []
        for t, i in found:
            i = dict(i)
            x0 = i.pop("x0")
            prepared.append(Prepared(x0.float().to(device), _to(t, device), _to(i, device)))
        if cfg.train_batch_size > 1 and len(prepared) > 1:
            self.family.collate([p.image for p in prepared])  # samples that cannot share a batch fail here
        pipe = self.family.load_pipeline(self.info.path, dtype, **{**self.components,
                                         **{c: None for c in self.family.encoder_components}})
        transformer = pipe.transformer.to(device)
        transformer.requires_grad_(False)
        if cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        return pipe, transformer, prepared

    @property
    def inference_guidance(self) -> float | None:
        """The value stored for `generate`: the constant, or the middle of a random range."""
        g = self.guidance
        return (g[0] + g[1]) / 2 if isinstance(g, tuple) else g

    def metadata(self, phase: Phase, log) -> dict[str, str]:
        cfg = self.cfg
        meta = {
            "format_version": "1", "version": __version__, "role": phase.name,
            "sigmas": json.dumps(list(phase.sigmas)), "base_model": stored_model_ref(self.info.ref),
            "model_family": self.family.name, "resolution": f"{self.width}x{self.height}",
            "guidance": json.dumps(self.inference_guidance), "max_sequence_length": str(self.max_sequence_length),
            "seed": str(cfg.seed), "train_steps": str(cfg.max_train_steps), "lora_rank": str(cfg.lora_rank),
            "lora_alpha": repr(cfg.alpha), "learning_rate": repr(cfg.learning_rate),
        }
        if isinstance(self.guidance, tuple):
            meta["guidance_range"] = json.dumps(list(self.guidance))
        if self.ladder is not None:
            meta["ladder"] = json.dumps(self.ladder.to_dict())
            meta["partner"] = f"../{'fast' if phase.name == 'slow' else 'slow'}/pytorch_lora_weights.safetensors"
        out = {META_PREFIX + k: v for k, v in meta.items()}
        ts = [s * 1000 for s in phase.sigmas]
        out.update({"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": f"{self.family.name}/lora",
                    "modelspec.implementation": "diffusers", "modelspec.title": f"glance-{phase.name}",
                    "modelspec.resolution": f"{self.width}x{self.height}",
                    "modelspec.timestep_range": f"{min(ts):.4f},{max(ts):.4f}",
                    "modelspec.usage_hint": "glancetune generate --run <dir> (slow then fast adapter on the "
                                            "exact ladder in glancetune.ladder)"})
        return out

    def run(self, overwrite: bool = False, quiet: bool = False) -> Path:
        cfg = self.cfg
        device, dtype = pick_device(cfg)
        out = OutputDir(cfg.output_dir, self.identity, overwrite or cfg.overwrite_output_dir)
        out.check()  # fail before loading weights
        pipe, transformer, prepared = self.prepare(device, dtype)
        trainer = PhaseTrainer(cfg, self.family, transformer, prepared, device, dtype, self.guidance,
                               groups=self.plan.groups, shuffle=self.plan.shuffle,
                               choices=self.plan.conditioning_choices()
                               if cfg.conditioning_multidataset_sampling == "random" else None)
        logs = {}
        with out as tmp:
            for ph in self.phases:
                params = add_lora(transformer, ph.name, rank=cfg.lora_rank, alpha=cfg.alpha,
                                  dropout=cfg.lora_dropout, init=cfg.lora_init, targets=self.targets, seed=cfg.seed)
                if cfg.compile_transformer and not getattr(transformer, "_glancetune_compiled", False):
                    # after the adapter exists, so the compiled blocks include the LoRA layers
                    transformer.compile_repeated_blocks(fullgraph=True)
                    transformer._glancetune_compiled = True
                bar = tqdm(total=cfg.max_train_steps, desc=ph.name, disable=True if quiet else None, leave=False)
                log = trainer.run(params, ph.sigmas, progress=lambda step, loss: (
                    bar.update(1), loss is not None and bar.set_postfix(loss=f"{loss:.4f}")))
                bar.close()
                target = tmp / ph.subdir if ph.subdir else tmp
                target.mkdir(parents=True, exist_ok=True)
                save_lora(self.family.pipeline_class(), target, transformer, ph.name, self.metadata(ph, log))
                transformer.delete_adapters(ph.name)
                logs[ph.name] = {"losses": log.losses, "eval_loss_before": log.eval_before,
                                 "eval_loss_after": log.eval_after, "seconds": round(log.seconds, 3),
                                 "trainable_params": log.trainable_params}
                write_json(target / "train_log.json", logs[ph.name])
                if ph.subdir:
                    write_json(target / CONFIG_NAME, self.resolved(ph))
                if not quiet:
                    print(f"{ph.name}: {log.trainable_params:,} trainable params, {cfg.max_train_steps} steps in "
                          f"{log.seconds:.1f}s, eval loss {log.eval_before:.4f} -> {log.eval_after:.4f}")
            write_json(tmp / CONFIG_NAME, self.resolved(None))
        del pipe
        return Path(cfg.output_dir)

    def resolved(self, phase: Phase | None) -> dict:
        d = {"run": self.identity, "output_dir": str(self.cfg.output_dir),
             "resolved": {"base_model": stored_model_ref(self.info.ref), "model_family": self.family.name,
                          "resolution": [self.width, self.height], "guidance": self.guidance,
                          "lora_alpha": self.cfg.alpha, "lora_targets": self.targets,
                          "phases": {p.name: list(p.sigmas) for p in self.phases},
                          "captions": captions_by_file(self.samples),
                          "buckets": dict(sorted(Counter(f"{s.width}x{s.height}" for s in self.samples).items()))}}
        if any(getattr(s, "control_path", None) is not None for s in self.samples):
            d["resolved"]["controls"] = {s.image_path.name: s.control_path.name for s in self.samples}
        if self.ladder is not None:
            d["resolved"]["ladder"] = self.ladder.to_dict()
        if phase is not None:
            d["phase"] = phase.name
        return d

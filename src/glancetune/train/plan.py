"""The plan of a train/glance job, resolved without loading weights: model, data, sizes, ladder, phases, steps,
LoRA targets, guidance, and the run identity that output folders and checkpoints are checked against.
`--dry-run` prints it; `Job` (job.py) runs it.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

from ..data import load_backends
from ..data.edit import load_job_plan
from ..errors import GlanceError
from ..families import model_info, resolve_family
from ..ladder import job_phases
from ..record import RunRecord
from .checkpoint import NEUTRAL_KEYS
from .lora import lora_targets
from .optim import resolve_train_steps

IDENTITY_EXCLUDES = {"output_dir", "cache_dir"} | NEUTRAL_KEYS


def stored_model_ref(ref: str) -> str:
    """The base model reference written into metadata: absolute for local folders, as given otherwise."""
    p = Path(ref)
    return str(p.resolve()) if not ref.startswith("tiny:") and p.is_dir() else ref


def file_digests(samples) -> dict[str, str]:
    """Per sample (dataset/key): a digest of its image, caption, crop and conditioning files."""
    out = {}
    for s in samples:
        h = hashlib.sha256()
        h.update(s.image_path.name.encode() + b"\0" + s.image_path.read_bytes() + b"\0" + s.caption.encode())
        h.update(json.dumps([s.dataset_id, s.repeats, s.crop.to_dict()]).encode())
        control = getattr(s, "control_path", None)  # edit datasets
        if control is not None:
            h.update(b"\0control\0" + control.name.encode() + b"\0" + control.read_bytes())
        for c in s.conditioning:
            h.update(c.image_path.read_bytes() + json.dumps([c.dataset_id, c.crop.to_dict()]).encode())
        out[f"{s.dataset_id}/{s.key}{s.image_path.suffix}"] = h.hexdigest()[:16]
    return out


def captions_by_file(samples) -> dict[str, str]:
    """File name -> caption (dataset id / relative path where names repeat across datasets or folders)."""
    names = Counter(s.image_path.name for s in samples)
    return {(s.image_path.name if names[s.image_path.name] == 1 else f"{s.dataset_id}/{s.key}{s.image_path.suffix}"):
            s.caption for s in samples}


class Plan:
    """Everything decided before weights load."""

    def __init__(self, cfg, command: str, components: dict | None = None):
        self.cfg, self.command, self.components = cfg, command, components or {}
        self.created_at = time.perf_counter()  # the job's time report: imports before it, the plan after
        from . import memory
        from .runtime import compute_dtype, select

        device, mp = select(cfg.device, cfg.mixed_precision)  # an unknown or absent device fails here
        family, flavour = resolve_family(cfg.model_family, cfg.model_flavour)
        self.info = model_info(cfg.model_ref, family.name, flavour)
        self.family = self.info.family
        memory.check(cfg, self.family, device, compute_dtype(mp))  # precisions and offload, before any weights
        if cfg.compile_transformer is True:
            from .speed import check_compile

            check_compile(device.type, "compile_transformer")
        from .tread import parse_routes

        self.tread_routes = parse_routes(cfg.tread_config, self.family.tread_blocks_count(
            self.info.transformer_config), self.family.name)
        self.data = load_job_plan(load_backends(cfg.data_backend_config), self.family.alignment(self.info),
                                  cfg.seed, edit=self.family.needs_control_image)
        self.samples = self.data.samples
        if cfg.glance_single_image and len(self.samples) > 1:
            raise GlanceError(f"glance_single_image: {cfg.data_backend_config} holds {len(self.samples)} images "
                              f"({', '.join(s.image_path.name for s in self.samples[:3])}"
                              f"{', ...' if len(self.samples) > 3 else ''}); Glance's one-image recipe needs exactly "
                              "one (or set glance_single_image: false)")
        # the size the ladder is cut at and LoRAs are labelled with: the bucket holding the most images
        self.width, self.height = self.data.primary_size
        self.targets_source, self.targets = lora_targets(self.family, cfg)
        self.max_sequence_length = cfg.tokenizer_max_length or self.family.default_max_sequence_length
        limit = self.family.max_sequence_length_limit
        if limit is not None and self.max_sequence_length > limit:
            raise GlanceError(f"tokenizer_max_length: {self.max_sequence_length} is above the {limit} text tokens "
                              f"that {self.family.name}'s pipeline accepts")
        if any(s.conditioning for s in self.samples) and not self.family.needs_control_image:
            raise GlanceError(f"conditioning_data: {self.family.name} does not train on conditioning images (only "
                              "the edit families do); remove conditioning_data from the dataloader JSON")
        self.guidance = self.family.training_guidance(self.info.transformer_config, cfg)
        self.ladder, self.phases = job_phases(cfg, self.info, self.width, self.height, command)
        self.steps, self.steps_note = resolve_train_steps(cfg, self.batches_per_epoch())
        self.files = file_digests(self.samples)
        self.identity = {"command": command, **{k: v for k, v in cfg.model_dump().items()
                                                if k not in IDENTITY_EXCLUDES},
                         "data_sha256": hashlib.sha256(json.dumps(self.files, sort_keys=True).encode()
                                                       ).hexdigest()[:16]}

    def batches_per_epoch(self, processes: int = 1) -> int:
        """Micro-batches in one pass over the data (every image 1 + repeats times) at the global batch size."""
        bs = self.cfg.train_batch_size * processes
        return sum(-(-len(g) // bs) for g in self.data.groups)

    @property
    def inference_guidance(self) -> float | None:
        """The value stored for `generate`: the constant, or the middle of a random range."""
        g = self.guidance
        return (g[0] + g[1]) / 2 if isinstance(g, tuple) else g

    def record(self) -> RunRecord:
        g = self.guidance
        return RunRecord(stored_model_ref(self.info.ref), self.family.name, (self.width, self.height),
                         self.inference_guidance, self.max_sequence_length,
                         {p.name: list(p.sigmas) for p in self.phases}, seed=self.cfg.seed, train_steps=self.steps,
                         learning_rate=self.cfg.learning_rate,
                         guidance_range=list(g) if isinstance(g, tuple) else None)

    def run_config(self) -> dict:
        """glancetune_config.json: the run record plus what was trained on (captions, buckets, targets)."""
        d = {"output_dir": str(self.cfg.output_dir), "record": self.record().to_dict(),
             "lora": {"rank": self.cfg.lora_rank, "alpha": self.cfg.alpha, "targets": self.targets},
             "captions": captions_by_file(self.samples),
             "buckets": dict(sorted(Counter(f"{s.width}x{s.height}" for s in self.samples).items()))}
        if any(getattr(s, "control_path", None) is not None for s in self.samples):
            d["controls"] = {s.image_path.name: s.control_path.name for s in self.samples}
        return d

    def graph_key(self, device, phases: list[str]) -> str:
        """The key of a process's compiled graphs (train/speed.py `graph_key`): phases trained by that process."""
        from .speed import graph_key

        return graph_key(self.cfg, self.info.transformer_config, self.targets, phases,
                         [f"{s.width}x{s.height}" for s in self.samples], device)

    def memory_plan(self) -> str:
        """--dry-run: what is quantized and offloaded, and where each component is in each phase."""
        from .lora import count_params, meta_transformer
        from .memory import memory_plan
        from .runtime import select
        from .speed import compile_decision, compiled_before

        device, mp = select(self.cfg.device, self.cfg.mixed_precision)
        n = count_params(meta_transformer(self.info.transformer_config).parameters())
        split = self.cfg.parallel_phases  # as intended: one phase per process on 2 processes
        mine = [p.name for p in self.phases][:1 if split else None]  # the first process's (its key)
        on, why = compile_decision(self.cfg, device.type, self.steps, len(mine), "parallel-phases" if split else
                                   "single", compiled_before(self.graph_key(device, mine)))
        return "\n".join([*memory_plan(self, device, 16 if mp == "bf16" else 32, n), f"compile: {why}"])

    def checkpoint_plan(self) -> str:
        """--dry-run: when checkpoints are written, what a rerun resumes from, and the process layout."""
        from .checkpoint import complete_checkpoints
        from .runtime import process_state

        c = self.cfg
        every = (f"every {c.checkpointing_steps} steps into {c.output_dir}/checkpoint-<step>/, keeping the newest "
                 f"{c.checkpoints_total_limit or 'all'}") if c.checkpointing_steps else "off (checkpointing_steps 0)"
        found = complete_checkpoints(Path(c.output_dir))
        resume = {"latest": f"latest ({found[-1][1].name})" if found else "latest (none yet: starts fresh)",
                  None: "none"}.get(c.resume_from_checkpoint, c.resume_from_checkpoint)
        n = process_state(c).num_processes
        layout = "1 process" if n == 1 else (f"{n} processes, " + ("one phase each (parallel_phases)"
                                             if c.parallel_phases else "DDP, each a slice of every batch"))
        return f"checkpoints: {every}; resume: {resume}; {layout}"

    def describe(self) -> str:
        kind = "edit pair(s) (target + control)" if self.family.needs_control_image else "sample(s)"
        buckets = len({s.target for s in self.samples})
        lines = [f"model {self.info.ref} ({self.family.name}), {len(self.samples)} {kind} at "
                 f"{self.width}x{self.height}" + (f" (the largest of {buckets} buckets: the ladder's size)"
                                                  if buckets > 1 else "") + f", guidance {self.guidance}",
                 *self.data.describe(self.cfg.train_batch_size),
                 f"base weights: {self.cfg.base_model_precision} (mixed precision {self.cfg.mixed_precision})",
                 f"LoRA rank {self.cfg.lora_rank} alpha {self.cfg.alpha:g} on {len(self.targets)} module types "
                 f"({self.targets_source}): {', '.join(self.targets)}"]
        if self.tread_routes:
            n = self.family.tread_blocks_count(self.info.transformer_config)
            lines.append("TREAD (training steps only): " + "; ".join(
                f"{r.ratio:.0%} of the image tokens around blocks {r.start}-{r.end} of 0-{n - 1}"
                for r in self.tread_routes))
        for ph in self.phases:
            lines.append(f"phase {ph.name}: {len(ph.sigmas)} sigmas " + ", ".join(f"{s:.6g}" for s in ph.sigmas))
        from .encode import sample_caches

        caches = sample_caches(self.cfg, self.samples)
        lines.append("caches: text embeddings " + ", ".join(sorted({str(t.dir) for t, _ in caches}))
                     + "; VAE latents " + ", ".join(sorted({str(v.dir) for _, v in caches})))
        if self.cfg.validation_enabled:
            from .validate import describe

            lines.append(describe(self))
        return "\n".join(lines)

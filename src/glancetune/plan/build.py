"""The plan of a train/glance job, resolved without loading weights: model, data, sizes, ladder, phases, steps,
LoRA targets, guidance, and the run identity that output folders and checkpoints are checked against.
`--dry-run` and the web UI print it (describe.py); `train.job.Job` runs it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from ..config.memory import PLACEMENT_KEYS
from ..config.schema import TrainConfig
from ..config.validation import VALIDATION_KEYS
from ..data import load_backends
from ..data.edit import load_job_plan
from ..data.samples import DataPlan
from ..engine.adapters import lora_targets
from ..engine.encode import ModelSource
from ..errors import GlanceError
from ..families import model_info, resolve_family
from ..ladder import Phase, job_phases
from .fit import MemoryEstimate, resolve_memory
from .search import LadderRequest, ladder_request, uses_search
from ..record import RunRecord
from ..schedule import Ladder
from .steps import resolve_train_steps

# keys that never change the trajectory: they may differ between a checkpoint and the resuming run
# (validation images and where the weights are placed never change the trained LoRAs either; the device and
# compile_transformer change only the order of float operations)
NEUTRAL_KEYS = frozenset({"checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint",
                          "resume_allow_changes", "report_to", "logging_dir", "logging_steps",
                          "tracker_project_name", "tracker_run_name", "overwrite_output_dir", "device",
                          "compile_transformer"}
                         ) | VALIDATION_KEYS | PLACEMENT_KEYS
log = logging.getLogger(__name__)
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
        if s.control_path is not None:  # edit datasets
            h.update(b"\0control\0" + s.control_path.name.encode() + b"\0" + s.control_path.read_bytes())
        for c in s.conditioning:
            h.update(c.image_path.read_bytes() + json.dumps([c.dataset_id, c.crop.to_dict()]).encode())
        out[f"{s.dataset_id}/{s.key}{s.image_path.suffix}"] = h.hexdigest()[:16]
    return out


def teacher_guidance(cfg, family, training_guidance=None) -> float | None:
    """distill's teacher guidance: `glance_teacher_guidance`, else what `generate` samples the base model with (the
    family's inference guidance for the training value)."""
    if cfg.glance_teacher_guidance is not None:
        return float(cfg.glance_teacher_guidance)
    g = sum(training_guidance) / 2 if isinstance(training_guidance, tuple) else training_guidance
    return family.inference_guidance(g)


def teacher_prompts(cfg, samples) -> list[str]:
    """distill's teacher prompts: the distinct training captions, then glance_prompts."""
    return list(dict.fromkeys([s.caption for s in samples] + list(cfg.glance_prompts or [])))


def resolve_objective(cfg, family, command: str):
    """The config with its objective resolved: `glance_objective: auto` is distill for a `glance` job (what won the
    fast-sampler table), flow for edit models (no teacher for them yet) and for `train` / `cache`; then the
    objective's own defaults (OBJECTIVE_DEFAULTS) for the keys the config leaves out."""
    from ..config.schema import OBJECTIVE_DEFAULTS

    kind = cfg.glance_objective
    if kind == "auto":
        kind = "distill" if command == "glance" and not family.needs_control_image else "flow"
    given = getattr(cfg, "model_fields_set", set())
    steps_given = {"max_train_steps", "num_train_epochs"} & given
    update = {k: v for k, v in OBJECTIVE_DEFAULTS.get(kind, {}).items()
              if k not in given and not (k == "max_train_steps" and steps_given)}
    if kind == cfg.glance_objective and not update:
        return cfg
    return cfg.model_copy(update={"glance_objective": kind, **update})


def check_objective(cfg, family, command: str) -> None:
    """distill's keys are distill's, and need what the family has (before any weights load)."""
    given = getattr(cfg, "model_fields_set", ())
    own = {"glance_teacher_guidance": cfg.glance_teacher_guidance is not None,
           "glance_teacher_seeds": "glance_teacher_seeds" in given and not uses_search(cfg, command, family),
           "glance_student_cfg": "glance_student_cfg" in given}
    given = [k for k, v in own.items() if v]
    if cfg.glance_objective != "distill":
        if given:
            raise GlanceError(f"{given[0]}: used by glance_objective distill (glance_objective is "
                              f"{cfg.glance_objective})")
        return
    if command != "glance":
        raise GlanceError("glance_objective: distill needs the slow/fast ladder of `glancetune glance`")
    if family.needs_control_image:
        raise GlanceError(f"glance_objective: distill is not built for edit models ({family.name}) yet")
    if own["glance_student_cfg"] and cfg.glance_student_cfg != "none" and not family.true_cfg:
        raise GlanceError(f"glance_student_cfg: {cfg.glance_student_cfg} is for true-CFG families; {family.name} "
                          "samples with a guidance embedding (one pass per step already)")


def training_guidance(family, transformer_config: dict, cfg):
    """Guidance fed to the transformer while training: a float, a (min, max) range drawn per sample, or None
    for models without a guidance input (then any guidance option given gets a one-line notice)."""
    given = [k for k in ("flux_guidance_value", "flux_guidance_min", "flux_guidance_max")
             if getattr(cfg, k) is not None] + (["flux_guidance_mode"] if cfg.flux_guidance_mode != "constant"
                                                 else [])
    if not family.has_guidance_embedding(transformer_config):
        if given:
            log.info("notice: %s ignored: this %s transformer has no guidance embedding", ", ".join(given),
                     family.name)
        return None
    if cfg.flux_guidance_mode == "random-range":
        lo, hi = cfg.flux_guidance_min, cfg.flux_guidance_max
        if lo is None or hi is None:
            raise GlanceError("flux_guidance_min/flux_guidance_max: random-range needs both")
        if lo > hi:
            raise GlanceError(f"flux_guidance_min: {lo} is above flux_guidance_max {hi}")
        return (float(lo), float(hi))
    return family.default_guidance if cfg.flux_guidance_value is None else float(cfg.flux_guidance_value)


def batches_per_epoch(cfg, data, processes: int = 1) -> int:
    """Micro-batches in one pass over the data (every image 1 + repeats times) at the global batch size."""
    bs = cfg.train_batch_size * processes
    return sum(-(-len(g) // bs) for g in data.groups)


def _check_data(cfg, family, samples) -> None:
    if cfg.glance_single_image and len(samples) > 1:
        raise GlanceError(f"glance_single_image: {cfg.data_backend_config} holds {len(samples)} images "
                          f"({', '.join(s.image_path.name for s in samples[:3])}"
                          f"{', ...' if len(samples) > 3 else ''}); Glance's one-image recipe needs exactly "
                          "one (or set glance_single_image: false)")
    if any(s.conditioning for s in samples) and not family.needs_control_image:
        raise GlanceError(f"conditioning_data: {family.name} does not train on conditioning images (only "
                          "the edit families do); remove conditioning_data from the dataloader JSON")


def captions_by_file(samples) -> dict[str, str]:
    """File name -> caption (dataset id / relative path where names repeat across datasets or folders)."""
    names = Counter(s.image_path.name for s in samples)
    return {(s.image_path.name if names[s.image_path.name] == 1 else f"{s.dataset_id}/{s.key}{s.image_path.suffix}"):
            s.caption for s in samples}


@dataclass(frozen=True)
class Plan:
    """Everything decided before weights load, as one frozen value: the job owns it; `--dry-run` and the web UI
    describe it (describe.py). Build it with `Plan.build(cfg, command)`."""

    cfg: TrainConfig
    command: str  # glance | train | cache
    model: ModelSource  # info (family, folder, configs), components handed in, text length
    data: DataPlan
    width: int  # the size the ladder is cut at and LoRAs are labelled with: the bucket holding the most images
    height: int
    targets_source: str
    targets: list[str]  # LoRA target module names
    guidance: float | tuple[float, float] | None
    ladder: Ladder | None  # None for `train`
    phases: list[Phase]
    steps: int
    steps_note: str
    files: dict[str, str]  # data file -> digest (the resume check)
    identity: dict  # the run identity output folders and checkpoints are checked against
    tread_routes: list
    created_at: float  # the job's time report: imports before it, the plan after
    ladder_search: LadderRequest | None = None  # the default ladder's search, still to run (the ladder is a stand-in)
    memory: MemoryEstimate | None = None  # the training step's estimate against the budget (None: no budget)

    @classmethod
    def build(cls, cfg, command: str, components: dict | None = None) -> Plan:
        """Resolve the model and data and check every setting that can be checked without weights."""
        created_at = time.perf_counter()
        from ..engine import memory
        from ..engine.runtime import compute_dtype, select

        device, mp = select(cfg.device, cfg.mixed_precision)  # an unknown or absent device fails here
        family, flavour = resolve_family(cfg.model_family, cfg.model_flavour)
        info = model_info(cfg.model_ref, family.name, flavour)
        family = info.family
        if cfg.compile_transformer is True:
            from ..engine.speed import check_compile

            check_compile(device.type, "compile_transformer")
        from ..config.tread import parse_routes

        tread_routes = parse_routes(cfg.tread_config, family.tread_blocks_count(info.transformer_config),
                                    family.name)
        data = load_job_plan(load_backends(cfg.data_backend_config), family.alignment(info), cfg.seed,
                             edit=family.needs_control_image)
        _check_data(cfg, family, data.samples)
        width, height = data.primary_size
        targets_source, targets = lora_targets(family, cfg)
        max_len = cfg.tokenizer_max_length or family.default_max_sequence_length
        limit = family.max_sequence_length_limit
        if limit is not None and max_len > limit:
            raise GlanceError(f"tokenizer_max_length: {max_len} is above the {limit} text tokens "
                              f"that {family.name}'s pipeline accepts")
        cfg, estimate = resolve_memory(cfg, command, info, targets, width, height, max_len, device,
                                       16 if mp == "bf16" else 32)  # gradient_checkpointing auto decided here
        memory.check(cfg, family, device, compute_dtype(mp))  # precisions and offload, before any weights
        guidance = training_guidance(family, info.transformer_config, cfg)
        cfg = resolve_objective(cfg, family, command)
        check_objective(cfg, family, command)
        search = None
        if uses_search(cfg, command, family):
            search = ladder_request(cfg, info, teacher_prompts(cfg, data.samples),
                                    teacher_guidance(cfg, family, guidance), max_len, compute_dtype(mp), width, height)
        ladder, phases = job_phases(cfg, info, width, height, command, search and search.path)
        pending = search if search is not None and not search.path.is_file() else None
        steps, steps_note = resolve_train_steps(cfg, batches_per_epoch(cfg, data))
        files = file_digests(data.samples)
        identity = {"command": command, **{k: v for k, v in cfg.model_dump().items() if k not in IDENTITY_EXCLUDES},
                    "data_sha256": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]}
        return cls(cfg, command, ModelSource(info, max_len, dict(components or {})), data, width, height,
                   targets_source, targets, guidance, ladder, phases, steps, steps_note, files, identity,
                   tread_routes, created_at, pending, estimate)

    # --- read-only views --------------------------------------------------------------------------------------
    @property
    def info(self):
        return self.model.info

    @property
    def family(self):
        return self.model.info.family

    @property
    def samples(self):
        return self.data.samples

    @property
    def max_sequence_length(self) -> int:
        return self.model.max_sequence_length

    def with_processes(self, processes: int) -> Plan:
        """The plan of a data-parallel run: epochs count global batches (train_batch_size x processes)."""
        steps, note = resolve_train_steps(self.cfg, batches_per_epoch(self.cfg, self.data, processes))
        return replace(self, steps=steps, steps_note=note)

    @property
    def inference_guidance(self) -> float | None:
        """The value stored for `generate`: the constant, or the middle of a random range."""
        g = self.guidance
        return (g[0] + g[1]) / 2 if isinstance(g, tuple) else g

    def record(self) -> RunRecord:
        g = self.guidance
        guidance, cfg_phases = self.inference_guidance, None
        if self.cfg.glance_objective == "distill" and self.family.true_cfg:  # the student's CFG policy
            guidance, cfg_phases = teacher_guidance(self.cfg, self.family, g), self.cfg.glance_student_cfg
        return RunRecord(stored_model_ref(self.info.ref), self.family.name, (self.width, self.height),
                         guidance, self.max_sequence_length,
                         {p.name: list(p.sigmas) for p in self.phases}, seed=self.cfg.seed, train_steps=self.steps,
                         learning_rate=self.cfg.learning_rate,
                         guidance_range=list(g) if isinstance(g, tuple) else None,
                         ladder_steps=self.cfg.glance_ladder_steps, cfg_phases=cfg_phases)

    def run_config(self) -> dict:
        """glancetune_config.json: the run record plus what was trained on (captions, buckets, targets)."""
        d = {"output_dir": str(self.cfg.output_dir), "record": self.record().to_dict(),
             "lora": {"rank": self.cfg.lora_rank, "alpha": self.cfg.alpha, "targets": self.targets},
             "captions": captions_by_file(self.samples),
             "buckets": dict(sorted(Counter(f"{s.width}x{s.height}" for s in self.samples).items()))}
        if any(s.control_path is not None for s in self.samples):
            d["controls"] = {s.image_path.name: s.control_path.name for s in self.samples}
        return d

    def graph_key(self, device, phases: list[str]) -> str:
        """The key of a process's compiled graphs (engine/speed.py `graph_key`): phases trained by that process."""
        from ..engine.speed import graph_key

        return graph_key(self.cfg, self.info.transformer_config, self.targets, phases,
                         [f"{s.width}x{s.height}" for s in self.samples], device)

"""Typed, strict configuration: one pydantic schema for `train` and `glance`, read from JSON / YAML / TOML.

SimpleTuner configs work unchanged: keys may carry a leading `--`, numbers may be strings. Unknown keys fail with
the closest valid key; keys we know from SimpleTuner but have not built fail with "not implemented yet" unless
their value is neutral (false / 0 / null / "none") or SimpleTuner's feature-off default (ACCEPTED_DEFAULTS), so
nothing is ever silently ignored. All problems of a config are reported together, on one line.
"""
from __future__ import annotations

import difflib
import json
import logging
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import tomllib
import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import GlanceError
from ..schedule import LADDER_STEPS
from .memory import MemoryKeys
from .numbers import bool_for_number
from .validation import ValidationKeys

log = logging.getLogger(__name__)

# SimpleTuner keys that are recognised but whose feature is not built yet.
NOT_IMPLEMENTED = {
    "caption_dropout_probability", "use_ema", "lora_type",
    "push_to_hub", "hub_model_id", "aspect_bucket_rounding", "train_text_encoder", "noise_offset", "snr_gamma",
    "lora_init_type", "attention_mechanism", "sageattention_usage",
}
# Values that mean "feature off" for every key of NOT_IMPLEMENTED.
NEUTRAL = (None, False, 0, 0.0, "", "none", "None", "false", "no", [], {})
# SimpleTuner's own defaults (simpletuner_sdk/server/services/field_registry/sections/*.py) that leave the
# feature off, so a config copied from SimpleTuner may keep them. Defaults that change training are not here
# (caption_dropout_probability 0.1, noise_offset 0.1, base_model_default_dtype bf16, aspect_bucket_rounding 2,
# lora_init_type "default").
ACCEPTED_DEFAULTS: dict[str, tuple] = {
    "lora_type": ("standard",),
    # torch's SDPA through diffusers (glancetune's only attention; other backends: bench/gpu/speed_gpu.sh attention);
    # sageattention_usage only acts with a sageattention mechanism
    "attention_mechanism": ("diffusers",), "sageattention_usage": ("inference",),
}
# SimpleTuner optimizer names that are the same class as ours.
OPTIMIZER_ALIASES = {"torch-adamw": "adamw", "optimi-adamw": "adamw_bf16", "bnb-adamw8bit": "adamw8bit"}
DEFAULT_TRAIN_STEPS = 60  # when neither max_train_steps nor num_train_epochs is set
# an objective's own defaults where the config leaves the key out (the settings the fast-sampler table measured)
OBJECTIVE_DEFAULTS = {"distill": {"learning_rate": 5e-4, "max_train_steps": 200}}
# diffusers' get_scheduler num_cycles when lr_num_cycles is unset (its own defaults for these schedules)
DEFAULT_NUM_CYCLES = {"cosine": 0.5, "cosine_with_restarts": 1}
RESUME_NEVER = ("none", "None", "", "null", "false")
CONFIG_NAMES = ("config.json", "config.toml", "config.yaml")  # searched in this order


class TrainConfig(ValidationKeys, MemoryKeys):
    """Everything `glancetune train` and `glancetune glance` accept (validation keys: config/validation.py).
    Field descriptions are the CLI help."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model_type: Literal["lora"] = Field("lora", description="only LoRA training exists")
    model_family: str = Field("flux", description="model family: flux | flux2 | sd3 | qwen_image "
                              "(| qwen_image_edit | qwen_image_edit_plus)")
    model_flavour: str | None = Field(None, description="flux: dev | schnell; flux2: klein-9b | klein-4b | dev; sd3: "
                                      "medium | 3.5-medium | 3.5-large; qwen_image: edit (edit-v1) | edit-plus "
                                      "(edit-v2) | edit-2511; qwen_image_edit_plus: 2509 | 2511 (picks the hub id if "
                                      "no path is given)")
    pretrained_model_name_or_path: str | None = Field(
        None, description="hub id, local diffusers folder, or tiny:<family> (built-in tiny random model)")
    data_backend_config: str = Field(..., description="dataloader JSON (SimpleTuner style)")
    output_dir: str = Field("output", description="where LoRA folders are written")
    overwrite_output_dir: bool = Field(False, description="replace an output_dir that holds a different run")
    train_batch_size: int = Field(1, ge=1, description="samples per step (one image is repeated with new noise)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_train_steps: int | None = Field(
        None, ge=0, description=f"optimizer steps per phase (0 = unset, as in SimpleTuner; with num_train_epochs the "
        f"smaller wins; neither: {DEFAULT_TRAIN_STEPS}, distill {OBJECTIVE_DEFAULTS['distill']['max_train_steps']})")
    num_train_epochs: int | None = Field(None, ge=0, description="passes over the dataset per phase (0 = unset)")
    learning_rate: float = Field(2e-3, gt=0, description="learning rate (2e-3 at alpha=rank is the official 5e-4 "
                                 "at alpha=4*rank; distill's default 5e-4; prodigy: set 1.0)")
    optimizer: Literal["adamw", "adamw_bf16", "adamw8bit", "prodigy"] = Field(
        "adamw", description="adamw: torch.optim.AdamW; adamw_bf16: optimi.AdamW (pip install torch-optimi; states "
        "in the parameters' dtype, Kahan summation for bf16); adamw8bit: bitsandbytes.optim.AdamW8bit (pip install "
        "bitsandbytes); prodigy: prodigyopt.Prodigy (pip install prodigyopt). SimpleTuner names accepted: "
        + ", ".join(f"{k} = {v}" for k, v in OPTIMIZER_ALIASES.items()))
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                          "polynomial"] = Field("constant", description="diffusers get_scheduler schedule")
    lr_warmup_steps: int = Field(0, ge=0, description="linear warmup steps (every schedule but constant)")
    lr_num_cycles: float | None = Field(
        None, gt=0, description="cosine: number of cosine waves (default "
        f"{DEFAULT_NUM_CYCLES['cosine']}, half a wave = decay to 0); cosine_with_restarts: number of hard restarts "
        f"(integer, default {DEFAULT_NUM_CYCLES['cosine_with_restarts']})")
    lr_power: float = Field(1.0, gt=0, description="polynomial: decay power (1.0 = linear to 1e-7)")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2")
    adam_weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient norm clip (0 disables)")
    lora_rank: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (default: = lora_rank)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout while training (off at inference)")
    lora_init: Literal["gaussian", "default"] = Field("gaussian", description="gaussian (official Glance) or "
                                                      "peft default (kaiming A)")
    lora_targets: list[str] | None = Field(None, description="module name suffixes (default: the family preset)")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="recompute each block's activations in the backward pass (less memory, slower); auto: "
        "on when the memory estimate without it does not fit the GPU or memory_budget_gib (off on a CPU)")
    compile_transformer: bool | Literal["auto"] = Field(
        "auto", description="regional `torch.compile` of the transformer blocks. `auto`: compiles on CUDA with "
                            "Triton, an unquantized base, no group offload and one process (or one per phase) "
                            "when the process has >= 250 optimizer steps (>= 600 with TREAD; a `glance` job "
                            "counts both phases), or >= 100 when an earlier run compiled the same graphs "
                            "(inductor's cache warm); `--dry-run` prints which and why. `true` / `false` force it")
    mixed_precision: Literal["auto", "bf16", "no", "fp32"] = Field("auto", description="auto: bf16 on GPU, fp32 "
                                                                   "on CPU")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    seed: int = Field(0, description="seeds everything: LoRA init, sigma / noise / guidance draws, crops, "
                                     "shuffling")
    cache_dir: str | None = Field(None, description="where VAE latents and text embeddings are cached "
                                  "(default: $GLANCETUNE_HOME/cache, i.e. ~/.cache/glancetune/cache)")
    flux_guidance_mode: Literal["constant", "random-range"] = Field(
        "constant", description="guidance embedding while training: one value, or uniform in [min, max] per sample")
    flux_guidance_value: float | None = Field(None, description="guidance embedding value while training "
                                              "(default 1.0 for guidance-distilled models)")
    flux_guidance_min: float | None = Field(None, ge=0, description="random-range lower bound")
    flux_guidance_max: float | None = Field(None, ge=0, description="random-range upper bound")
    lora_target: str | None = Field(None, description="LoRA target preset: all | attention | mlp | tiny "
                                    "(family default when unset)")
    flux_lora_target: str | None = Field(None, description="SimpleTuner's name for lora_target")
    tokenizer_max_length: int | None = Field(None, ge=1, description="text tokens (default: the pipeline's, "
                                             "FLUX.1 512, SD3 256)")
    timestep_sampling: Literal["uniform", "round-robin"] = Field("uniform", description="how each step picks its "
                                                                 "sigma from the phase's list")
    flow_custom_timesteps: str | list[float] | None = Field(
        None, description="train: the sigmas (0-1) or timesteps (0-1000) to train on")
    glance_slow_timesteps: str | list[float] | None = Field(None, description="explicit slow ladder: timesteps "
                                                                              "0-1000 or sigmas in (0, 1] (a list"
                                                                              " mixing the two is refused)")
    glance_fast_timesteps: str | list[float] | None = Field(None, description="explicit fast ladder (as "
                                                                              "`glance_slow_timesteps`)")
    glance_ladder_steps: int = Field(LADDER_STEPS, ge=2, description="N of the model's own N-step schedule the ladder is cut "
                                     "from")
    glance_ladder: Literal["search", "glance"] = Field(
        "search", description="the ladder when the config names none (no glance_ladder_file, indices or "
        "timesteps): search: the 10 sigmas that best reproduce the base model's own glance_ladder_steps-step "
        "trajectory on the teacher prompts x glance_teacher_seeds (`search-ladder`'s method, run once before "
        "training and cached under cache_dir/ladders); glance: the paper's fixed cut (glance_slow_indices)")
    glance_ladder_file: str | None = Field(None, description="a ladder file from `glancetune search-ladder`: train on "
                                           "its sigmas instead of a cut of the model's own N-step schedule")
    glance_ladder_slow_steps: int | None = Field(None, ge=1, description="with a ladder file or the search: the "
                                                 "first K sigmas "
                                                 "are the slow phase (default: half, the extra one slow)")
    glance_slow_indices: str | list[int] | None = Field(None, description="0-based indices into the N-step "
                                                                          "schedule for the slow phase (default "
                                                                          "`0,2,4,6,8`; scaled for another N)")
    glance_fast_indices: str | list[int] | None = Field(None, description="0-based indices for the fast phase "
                                                                          "(default `10,20,30,40,49`; scaled for "
                                                                          "another N)")
    glance_objective: Literal["auto", "flow", "trajectory", "rollout", "distill"] = Field(
        "auto", description="auto: distill (flow for edit models, whose teacher is not built yet); distill: the base "
        "model's own guided trajectories from prompts (guidance baked in); flow: the paper's loss on the image; "
        "trajectory / rollout: experimental")
    glance_trajectory_substeps: int = Field(4, ge=1, description="trajectory / distill: base Euler sub-steps per "
                                            "ladder step")
    glance_prompts: list[str] | None = Field(None, description="trajectory / distill / prior: extra captions "
                                             "without images")
    glance_prior_weight: float = Field(0.0, ge=0, description="weight of the base-prediction loss on glance_prompts")
    glance_teacher_guidance: float | None = Field(None, ge=0, description="distill: the teacher's guidance / true "
                                                  "CFG scale (default: what generate samples the base model with)")
    glance_teacher_seeds: int = Field(2, ge=1, description="distill and the ladder search: trajectories (noise seeds "
                                      "0..N-1) per prompt")
    glance_student_cfg: Literal["none", "slow", "both"] = Field(
        "both", description="distill, true-CFG families: both: true CFG in both phases (the teacher's cost; the "
        "default: on the true-CFG toy the CFG-free pair lost at equal cost); slow: true CFG in the slow phase only; "
        "none: guidance baked in, one pass per step (half the passes)")
    glance_single_image: bool = Field(False, description="refuse a dataset of more than one image (the Glance "
                                      "paper's one-image recipe)")
    conditioning_multidataset_sampling: Literal["random", "combined"] = Field(
        "random", description="several conditioning datasets per image: one per batch (random) or all (combined)")
    vae_batch_size: int = Field(4, ge=1, description="images per VAE encode batch while caching latents")
    checkpointing_steps: int = Field(100, ge=0, description="save a resumable checkpoint every N steps (0: never)")
    checkpoints_total_limit: int | None = Field(3, ge=1, description="checkpoints kept per run (null: all)")
    resume_from_checkpoint: str | None = Field(
        "latest", description="latest: resume from the newest complete checkpoint if there is one, else start "
        "fresh; none / null / \"\": never resume; or a checkpoint path")
    resume_allow_changes: list[str] = Field(
        [], description="config keys that may differ from the checkpoint's config when resuming (e.g. "
        "max_train_steps)")
    report_to: Literal["none", "tensorboard", "wandb", "all"] = Field("none", description="experiment tracker")
    logging_dir: str = Field("logs", description="tracker logs, relative to output_dir")
    tracker_project_name: str | None = Field(None, description="wandb project")
    tracker_run_name: str | None = Field(None, description="wandb run name")
    logging_steps: int = Field(10, ge=1, description="steps between progress log lines (and loss reads)")
    tread_config: dict | None = Field(None, description="TREAD token routing while training: {\"routes\": "
                                      "[{\"selection_ratio\", \"start_layer_idx\", \"end_layer_idx\"}]}; "
                                      "selection_ratio is the fraction of image tokens routed around (SimpleTuner's "
                                      "meaning); every family (engine/tread.py)")
    parallel_phases: bool = Field(False, description="glance: train the slow and fast phases on two processes")

    @field_validator("tread_config")
    @classmethod
    def _tread_structure(cls, v):
        if v:
            from .tread import check_structure

            check_structure(v)
        return v

    @field_validator("compile_transformer", mode="before")
    @classmethod
    def _compile_choice(cls, v):  # one message, not one per member of the union
        words = {"auto": "auto", "true": True, "false": False}
        if isinstance(v, bool) or v == "auto":
            return v
        if isinstance(v, str) and v.strip().lower() in words:
            return words[v.strip().lower()]
        raise ValueError("expected true, false or auto")

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer_alias(cls, v):
        return OPTIMIZER_ALIASES.get(v, v) if isinstance(v, str) else v

    @field_validator("max_train_steps", "num_train_epochs")
    @classmethod
    def _zero_is_unset(cls, v):
        return v or None

    @field_validator("resume_from_checkpoint", mode="before")
    @classmethod
    def _resume_never(cls, v):
        return None if v is None or v is False or (isinstance(v, str) and v.strip() in RESUME_NEVER) else v

    @field_validator("resume_allow_changes")
    @classmethod
    def _known_keys(cls, v):
        keys = [normalise_key(k) for k in v]
        bad = [k for k in keys if k not in cls.model_fields]
        if bad:
            raise ValueError(f"not config keys: {', '.join(map(repr, bad))}")
        return keys

    @model_validator(mode="after")
    def _schedule_args(self):
        if self.lr_scheduler == "constant" and self.lr_warmup_steps:
            raise ValueError(f"lr_warmup_steps: {self.lr_warmup_steps} warmup steps do nothing with lr_scheduler "
                             "'constant'; use constant_with_warmup or set 0")
        n = self.lr_num_cycles
        if n is not None and self.lr_scheduler == "cosine_with_restarts" and n != int(n):
            raise ValueError(f"lr_num_cycles: cosine_with_restarts needs a whole number of restarts, got {n}")
        return self

    @property
    def family(self):
        """The family that trains this model: model_family, or the one a model_flavour selects (qwen_image edit)."""
        from ..families import resolve_family

        return resolve_family(self.model_family, self.model_flavour)[0]

    @property
    def model_ref(self) -> str:
        """The model to load: the explicit path/id, else the flavour's hub id (the flavour is checked either way)."""
        from ..families import resolve_family

        family, flavour = resolve_family(self.model_family, self.model_flavour)
        if self.pretrained_model_name_or_path:
            if flavour is not None:
                family.flavour_model(flavour)  # an unknown flavour is an error even with a path
            return self.pretrained_model_name_or_path
        return family.flavour_model(flavour)

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)


KNOWN = set(TrainConfig.model_fields)


def normalise_key(key: str) -> str:
    return key.lstrip("-").replace("-", "_")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a key written twice in one object is an error (json keeps the last one silently)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} given twice")
        out[k] = v
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse JSON / YAML / TOML by extension; syntax errors name the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise GlanceError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GlanceError(f"{path}: cannot read config ({e})") from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise GlanceError(f"{path}: JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except ValueError as e:  # a duplicate key (_no_duplicates)
        raise GlanceError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise GlanceError(f"{path}: YAML syntax error{where}: {getattr(e, 'problem', e)}") from None
    except tomllib.TOMLDecodeError as e:
        raise GlanceError(f"{path}: TOML syntax error: {e}") from None
    if not isinstance(data, dict):
        raise GlanceError(f"{path}: the config must be a mapping of keys to values")
    return data


def parse_overrides(items: list[str] | None, what: str = "--set") -> dict[str, Any]:
    """`key=value` items (a leading `--` on the key is fine); values are read as YAML scalars/lists."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise GlanceError(f"{what} {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def find_config(env: str | None = None, root: str | Path = ".") -> Path:
    """SimpleTuner's lookup (helpers/configuration/loader.py): config/config.json, then config/config.toml (its
    third, config.env, is shell syntax and not read; config.yaml is ours); `env` NAME looks in config/NAME/.
    Paths are relative to `root` (the current directory) and returned that way."""
    base = Path("config") / env if env and env != "default" else Path("config")
    tried = [base / name for name in CONFIG_NAMES]
    found = [p for p in tried if (Path(root) / p).is_file()]
    if found:
        if len(found) > 1:
            log.info("notice: config: using %s (%s also there, not read)", found[0], ", ".join(map(str, found[1:])))
        return found[0] if str(root) == "." else Path(root) / found[0]
    raise GlanceError(f"no config file: looked for {', '.join(map(str, tried))} in {Path(root).resolve()} "
                      "(give --config PATH, or --env NAME for config/NAME/config.json)")


def _accepted(key: str, value: Any) -> bool:
    return value in NEUTRAL or value in ACCEPTED_DEFAULTS.get(key, ())


def _key_problem(key: str, value: Any, origin: str) -> str | None:
    """Why a raw key is refused (None when it is fine or a neutral SimpleTuner value)."""
    k = normalise_key(key)
    if k in NOT_IMPLEMENTED:
        if _accepted(k, value):
            return None
        ok = ", ".join(repr(v) for v in ACCEPTED_DEFAULTS.get(k, ())) or "false / 0 / null"
        return (f"key {key!r}{origin} is a SimpleTuner option glancetune does not implement yet (remove it, or set "
                f"{ok}; got {value!r})")
    if k not in KNOWN:
        hint = difflib.get_close_matches(k, KNOWN | NOT_IMPLEMENTED, n=1, cutoff=0.6)
        return f"unknown key {key!r}{origin}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    field = TrainConfig.model_fields.get(k)
    if field is not None and bool_for_number(field.annotation, value):
        return f"key {key!r}{origin}: a number is meant, not a boolean (got {value!r})"
    return None


def _union_member(loc: tuple) -> bool:
    """A loc naming one member of a union-typed key: pydantic reports each member ('str', 'list[float]', ...)."""
    field = TrainConfig.model_fields.get(str(loc[0])) if len(loc) > 1 and isinstance(loc[1], str) else None
    return field is not None and typing.get_origin(field.annotation) in (typing.Union, types.UnionType)


def _validation_problems(e: ValidationError, origins: dict[str, str]) -> list[str]:
    out, unions = [], {}
    for err in e.errors():
        if _union_member(err["loc"]):  # one line per key: what it may be
            tag = re.sub(r"^literal\[(.*)\]$", r"\1", err["loc"][1])
            unions.setdefault(str(err["loc"][0]), (err, []))[1].append(tag)
            continue
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if not key:  # a check across keys: its message starts with the key
            out.append(msg)
            continue
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        out.append(f"key {key!r}{origins.get(str(err['loc'][0]), '')}: {msg}{got}")
    for key, (err, tags) in unions.items():
        got = f" (got {err['input']!r})" if "input" in err else ""
        out.append(f"key {key!r}{origins.get(key, '')}: expected {' or '.join(dict.fromkeys(tags))}{got}")
    return out


def build_config(raw: dict[str, Any], source: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Normalise keys, refuse unknown / unimplemented ones, validate types. Every problem is collected and raised
    as one single-line GlanceError naming `source` and each key."""
    merged: dict[str, tuple[str, Any, str]] = {}  # normalised key -> (key as written, value, origin)
    problems: list[str] = []
    for items, origin in ((raw, ""), (overrides or {}, " (given with --set or as key=value)")):
        seen: dict[str, str] = {}
        for key, value in items.items():
            k = normalise_key(str(key))
            if k in seen:  # `--lora_rank` and `lora_rank` in one file: which one wins would be a guess
                problems.append(f"key {k!r}{origin} given twice (as {seen[k]!r} and {str(key)!r})")
            seen[k] = str(key)
            merged[k] = (str(key), value, origin)
    data: dict[str, Any] = {}
    for k, (key, value, origin) in merged.items():
        problem = _key_problem(key, value, origin)
        if problem:
            problems.append(problem)
        elif k in KNOWN:
            data[k] = value
    try:
        cfg = TrainConfig(**data)
    except ValidationError as e:
        problems += _validation_problems(e, {k: origin for k, (_, _, origin) in merged.items()})
    if problems:
        head = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise GlanceError(f"{source}: {head}" + "; ".join(problems).replace("\n", " "))
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    return build_config(read_config_file(path), str(path), parse_overrides(overrides))


def config_help() -> str:
    """The schema as CLI help: every key with its type, default and description (the one source of truth)."""
    lines = ["config keys (JSON / YAML / TOML, with or without a leading --; override with --set key=value):"]
    for name, f in TrainConfig.model_fields.items():
        default = "required" if f.is_required() else f"default {f.default!r}"
        from typing import get_args, get_origin

        if get_origin(f.annotation) is Literal:
            ann = " | ".join(map(str, get_args(f.annotation)))
        else:
            ann = getattr(f.annotation, "__name__", None) or str(f.annotation).replace("typing.", "")
        lines.append(f"  {name} ({ann}; {default})" + (f": {f.description}" if f.description else ""))
    lines.append("recognised SimpleTuner keys not implemented yet (an error unless false / 0 / null, or the "
                 "SimpleTuner default named here): " + ", ".join(
                     k + "".join(f" ({v!r} ok)" for v in ACCEPTED_DEFAULTS.get(k, ())[:1])
                     for k in sorted(NOT_IMPLEMENTED)))
    return "\n".join(lines)

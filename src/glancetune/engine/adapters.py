"""LoRA adapters on the transformer via peft (through diffusers' `add_adapter`), one named adapter per phase."""
from __future__ import annotations

import warnings

import torch

from ..errors import GlanceError


def lora_targets(family, cfg) -> tuple[str, list[str]]:
    """(description, module suffixes): an explicit `lora_targets` list wins, then a preset name, then the default."""
    if cfg.lora_targets:
        return "explicit list", list(cfg.lora_targets)
    if cfg.lora_target and cfg.flux_lora_target and cfg.lora_target != cfg.flux_lora_target:
        raise GlanceError(f"lora_target: {cfg.lora_target!r} contradicts flux_lora_target {cfg.flux_lora_target!r}")
    preset = cfg.lora_target or cfg.flux_lora_target
    key = "lora_target" if cfg.lora_target else "flux_lora_target"
    if preset is None:
        return "family default", list(family.default_lora_targets)
    if preset not in family.lora_presets:
        raise GlanceError(f"{key}: unknown preset {preset!r} for {family.name}; valid: "
                          f"{', '.join(family.lora_presets)}")
    return f"preset {preset}", list(family.lora_presets[preset])


def add_lora(transformer, name: str, *, rank: int, alpha: float, dropout: float, init: str, targets: list[str],
             seed: int) -> list[torch.nn.Parameter]:
    """Add adapter `name`, make it the only active one, return its parameters (fp32, trainable).

    Initialisation is seeded and independent of anything trained before, so a phase's result depends only on
    its own config (a `glance` phase equals the same phase trained alone with `train`).
    """
    from peft import LoraConfig

    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                     init_lora_weights="gaussian" if init == "gaussian" else True)
    dev = next(transformer.parameters()).device
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        try:
            with warnings.catch_warnings():  # peft on a torchao base: "merge() will raise"; we never merge
                warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated")
                transformer.add_adapter(cfg, adapter_name=name)
        except ValueError as e:
            if "not found" in str(e) or "Target modules" in str(e):
                raise GlanceError(f"lora_targets: none of {targets} matches a module of the "
                                  f"{type(transformer).__name__}") from None
            raise
    transformer.set_adapter(name)
    params = []
    for pname, p in transformer.named_parameters():
        if "lora_" in pname and f".{name}." in pname:
            p.data = p.data.float()
            p.requires_grad_(True)
            params.append(p)
        else:
            p.requires_grad_(False)
    return params


def count_params(params) -> int:
    return sum(p.numel() for p in params)


def meta_transformer(transformer_config: dict):
    """A weightless (meta-device) transformer built from its config alone (nothing loaded)."""
    import diffusers
    from accelerate import init_empty_weights

    cls = getattr(diffusers, transformer_config["_class_name"])
    with init_empty_weights():
        return cls.from_config(transformer_config)


def count_trainable(transformer_config: dict, cfg, targets: list[str]) -> int:
    """Trainable LoRA parameters for this config, counted on a meta-device transformer: `--dry-run` reports it
    without loading any weights."""
    transformer = meta_transformer(transformer_config)
    return count_params(add_lora(transformer, "count", rank=cfg.lora_rank, alpha=cfg.alpha, dropout=cfg.lora_dropout,
                                 init=cfg.lora_init, targets=targets, seed=cfg.seed))

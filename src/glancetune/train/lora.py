"""LoRA adapters on the transformer via peft (through diffusers' `add_adapter`), one named adapter per phase."""
from __future__ import annotations

import torch

from ..errors import GlanceError


def lora_targets(family, configured: list[str] | None) -> list[str]:
    targets = list(configured) if configured else list(family.default_lora_targets)
    if not targets:
        raise GlanceError("lora_targets: the list is empty")
    return targets


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

"""A phase's optimizer, learning-rate schedule and step count, built from the config with the real libraries:
torch.optim.AdamW, optimi.AdamW (torch-optimi), bitsandbytes.optim.AdamW8bit, prodigyopt.Prodigy and
diffusers' `get_scheduler`. The optional packages are imported only when their optimizer is chosen."""
from __future__ import annotations

import importlib
import logging
from typing import Iterable

import torch

from ..errors import GlanceError
from ..plan.steps import num_cycles

log = logging.getLogger(__name__)

# optimizer -> (module, class, pip package, glancetune extra)
OPTIONAL = {
    "adamw_bf16": ("optimi", "AdamW", "torch-optimi", "optimi"),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes", "bitsandbytes"),
    "prodigy": ("prodigyopt", "Prodigy", "prodigyopt", "prodigy"),
}


def optional_class(name: str):
    """The class of an optional optimizer; a one-line GlanceError naming `optimizer` and the pip line if missing."""
    module, cls, pip, extra = OPTIONAL[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise GlanceError(f"optimizer: {name!r} needs the {pip} package, which is not installed ({e}); "
                          f"pip install {pip} (or pip install 'glancetune[{extra}]')") from None


def _tensors(params: list) -> list[torch.Tensor]:
    return [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]


def build_optimizer(params: Iterable, cfg) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` names, with learning_rate, adam_beta1/2, adam_weight_decay, adam_epsilon."""
    params = list(params)
    kw = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay,
              eps=cfg.adam_epsilon)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, **kw)
    cls = optional_class(cfg.optimizer)
    if cfg.optimizer == "adamw_bf16":
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in _tensors(params)})
        if dtypes != ["bfloat16"]:
            log.warning("optimizer adamw_bf16: optimi.AdamW keeps its states in the parameters' dtype (%s), so "
                        "they are not bf16 here", ", ".join(dtypes))
    if cfg.optimizer == "prodigy" and cfg.learning_rate < 0.1:
        log.warning("optimizer prodigy: learning_rate %g scales Prodigy's own step size; 1.0 is the usual value",
                    cfg.learning_rate)
    return cls(params, **kw)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg, num_steps: int):
    """diffusers' `get_scheduler(lr_scheduler, ...)` with lr_warmup_steps, lr_num_cycles and lr_power."""
    from diffusers.optimization import get_scheduler

    if cfg.lr_warmup_steps >= num_steps and cfg.lr_scheduler != "constant":
        raise GlanceError(f"lr_warmup_steps: {cfg.lr_warmup_steps} warmup steps leave nothing of the {num_steps} "
                          "training steps")
    return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                         num_training_steps=num_steps, num_cycles=num_cycles(cfg), power=cfg.lr_power)


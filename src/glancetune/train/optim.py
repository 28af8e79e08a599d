"""A phase's optimizer, learning-rate schedule and step count, built from the config with the real libraries:
torch.optim.AdamW, optimi.AdamW (torch-optimi), bitsandbytes.optim.AdamW8bit, prodigyopt.Prodigy and
diffusers' `get_scheduler`. The optional packages are imported only when their optimizer is chosen."""
from __future__ import annotations

import importlib
import logging
import math
from typing import Iterable

import torch

from ..config import DEFAULT_NUM_CYCLES, DEFAULT_TRAIN_STEPS
from ..errors import GlanceError

log = logging.getLogger(__name__)

# optimizer -> (module, class, pip package, glancetune extra)
OPTIONAL = {
    "adamw_bf16": ("optimi", "AdamW", "torch-optimi", "optimi"),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes", "bitsandbytes"),
    "prodigy": ("prodigyopt", "Prodigy", "prodigyopt", "prodigy"),
}


def resolve_train_steps(cfg, batches_per_epoch: int) -> tuple[int, str]:
    """Optimizer steps of a phase and why: max_train_steps, num_train_epochs x steps per epoch (steps per epoch =
    ceil(micro-batches per epoch / gradient_accumulation_steps)), the smaller of both, or DEFAULT_TRAIN_STEPS."""
    steps, epochs = cfg.max_train_steps, cfg.num_train_epochs
    if epochs is None:
        if steps is None:
            return DEFAULT_TRAIN_STEPS, f"{DEFAULT_TRAIN_STEPS} steps (default: neither max_train_steps nor " \
                                        "num_train_epochs is set)"
        return steps, f"{steps} steps (max_train_steps)"
    if batches_per_epoch < 1:
        raise GlanceError(f"num_train_epochs: an epoch has {batches_per_epoch} batches; nothing to train on")
    per_epoch = math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps)
    by_epochs = epochs * per_epoch
    what = (f"num_train_epochs {epochs} x {per_epoch} steps per epoch ({batches_per_epoch} batches / "
            f"gradient_accumulation_steps {cfg.gradient_accumulation_steps})")
    if steps is None:
        return by_epochs, f"{by_epochs} steps ({what})"
    if steps <= by_epochs:
        return steps, f"{steps} steps (max_train_steps {steps} ends first; {what} = {by_epochs})"
    return by_epochs, f"{by_epochs} steps ({what} ends before max_train_steps {steps})"


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


def _num_cycles(cfg) -> float | int:
    n = cfg.lr_num_cycles if cfg.lr_num_cycles is not None else DEFAULT_NUM_CYCLES.get(cfg.lr_scheduler, 1)
    return int(n) if cfg.lr_scheduler == "cosine_with_restarts" else n


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg, num_steps: int):
    """diffusers' `get_scheduler(lr_scheduler, ...)` with lr_warmup_steps, lr_num_cycles and lr_power."""
    from diffusers.optimization import get_scheduler

    if cfg.lr_warmup_steps >= num_steps and cfg.lr_scheduler != "constant":
        raise GlanceError(f"lr_warmup_steps: {cfg.lr_warmup_steps} warmup steps leave nothing of the {num_steps} "
                          "training steps")
    return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                         num_training_steps=num_steps, num_cycles=_num_cycles(cfg), power=cfg.lr_power)


def describe(cfg, num_steps: int) -> str:
    """One line for --dry-run: the optimizer with its settings and the schedule."""
    if cfg.optimizer == "prodigy":
        knobs = f"betas ({cfg.adam_beta1}, {cfg.adam_beta2}), wd {cfg.adam_weight_decay}"
    else:
        knobs = f"betas ({cfg.adam_beta1}, {cfg.adam_beta2}), wd {cfg.adam_weight_decay}, eps {cfg.adam_epsilon}"
    sched = f"lr_scheduler {cfg.lr_scheduler}"
    if cfg.lr_scheduler != "constant":
        sched += f", warmup {cfg.lr_warmup_steps} of {num_steps} steps"
    if cfg.lr_scheduler in DEFAULT_NUM_CYCLES:
        sched += f", num_cycles {_num_cycles(cfg)}"
    if cfg.lr_scheduler == "polynomial":
        sched += f", power {cfg.lr_power}"
    return f"optimizer {cfg.optimizer} lr {cfg.learning_rate:g} ({knobs}); {sched}"

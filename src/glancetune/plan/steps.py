"""How many optimizer steps a job runs and how its learning rate moves: step counting from max_train_steps /
num_train_epochs, the LR schedule's cycles, and the dry-run line that names the optimizer and schedule."""
from __future__ import annotations

import math

from ..config.schema import DEFAULT_NUM_CYCLES, DEFAULT_TRAIN_STEPS
from ..errors import GlanceError


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


def num_cycles(cfg) -> float | int:
    n = cfg.lr_num_cycles if cfg.lr_num_cycles is not None else DEFAULT_NUM_CYCLES.get(cfg.lr_scheduler, 1)
    return int(n) if cfg.lr_scheduler == "cosine_with_restarts" else n


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
        sched += f", num_cycles {num_cycles(cfg)}"
    if cfg.lr_scheduler == "polynomial":
        sched += f", power {cfg.lr_power}"
    return f"optimizer {cfg.optimizer} lr {cfg.learning_rate:g} ({knobs}); {sched}"

"""PLACEHOLDER (replaced by the config branch): optimizer, LR schedule, step count."""
from __future__ import annotations

import math

import torch

DEFAULT_TRAIN_STEPS = 60


def build_optimizer(params, cfg):
    return torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)


def build_lr_scheduler(optimizer, cfg, num_steps: int):
    from diffusers.optimization import get_scheduler

    return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                         num_training_steps=num_steps)


def resolve_train_steps(cfg, batches_per_epoch: int) -> tuple[int, str]:
    steps = cfg.max_train_steps or DEFAULT_TRAIN_STEPS
    return steps, f"{steps} steps"


def describe(cfg, num_steps: int) -> str:
    return f"optimizer adamw lr {cfg.learning_rate:g}; lr_scheduler {cfg.lr_scheduler}, {num_steps} steps"

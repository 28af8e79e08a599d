"""Training objectives, chosen with `glance_objective`: a registry of small classes (base.py) sharing one predict
helper. Adding an objective = one file holding an `Objective` subclass + one line in `OBJECTIVES` + its tests.

  flow (default)  the paper: x_s = (1 - s) x0 + s eps, target eps - x0 (flow.py)
  trajectory      trajectory distillation: the target is the step the ladder sampler must take (trajectory.py)
  rollout         scheduled sampling for the fast phase (rollout.py)
  distill         teacher distillation: the base model's own guided fine-step trajectories from prompts, cached
                  (teacher.py), learned on the ladder; the student samples without true CFG (distill.py)
  + prior         `glance_prior_weight` w > 0 with flow or rollout: w x MSE to the base model's own velocity on a
                  `glance_prompts` caption (base.py, `Objective.prior_loss`)

`glance_prompts` (captions without images, used by trajectory, distill and the prior) are encoded before the transformer
loads, through the text cache (`encode_prompts`).
"""
from __future__ import annotations

import torch

from ...errors import GlanceError
from .base import Objective
from .distill import Distill
from .flow import Flow
from .rollout import Rollout
from .trajectory import Trajectory

STUDENT_CFG = {"none": (), "slow": ("slow",), "both": ("slow", "fast")}  # glance_student_cfg -> CFG phases
OBJECTIVES: dict[str, type[Objective]] = {"flow": Flow, "trajectory": Trajectory, "rollout": Rollout,
                                          "distill": Distill}


def objective(kind: str, slow: list[float] | None = None, fast: list[float] | None = None, substeps: int = 4,
              extra: list | None = None, prior_weight: float = 0.0, **options) -> Objective:
    """The registered objective `kind` on the ladder slow + fast (None for `train`'s one LoRA); `options`: the
    objective's own (distill: `cfg_scale`, `cfg_phases`)."""
    if kind not in OBJECTIVES:
        raise GlanceError(f"glance_objective: {kind!r} is not one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[kind](slow, fast, substeps, extra, prior_weight, **options)


def make_objective(cfg, ladder, command: str, layout: str, extra: list | None = None,
                   cfg_scale: float | None = None) -> Objective:
    """The objective of a job. `extra`: the encoded glance_prompts (trajectory, prior) or the teacher
    trajectories (distill); `cfg_scale`: distill's true-CFG scale where the student keeps CFG (glance_student_cfg
    slow or both; None where CFG is off)."""
    kind = cfg.glance_objective
    check_prompts(cfg)
    if OBJECTIVES[kind].needs_ladder or cfg.glance_prior_weight:
        if command != "glance" or ladder is None:
            raise GlanceError(f"glance_objective: {kind} needs the slow/fast ladder of `glancetune glance`")
        if layout not in ("single", "ddp"):
            raise GlanceError(f"glance_objective: {kind} is built for one process or DDP (this run is {layout})")
    slow, fast = (list(ladder.slow), list(ladder.fast)) if ladder is not None else (None, None)
    options = {"cfg_scale": cfg_scale, "cfg_phases": STUDENT_CFG[cfg.glance_student_cfg]} if kind == "distill" else {}
    return objective(kind, slow, fast, cfg.glance_trajectory_substeps, extra, cfg.glance_prior_weight, **options)


def check_prompts(cfg) -> None:
    """glance_prompts serve trajectory and distill, or the prior (glance_prior_weight > 0 with flow or rollout)."""
    kind, prior = cfg.glance_objective, cfg.glance_prior_weight
    if prior and (kind in ("trajectory", "distill") or not cfg.glance_prompts):
        raise GlanceError("glance_prior_weight: needs glance_prompts, and glance_objective flow or rollout (with "
                          "trajectory or distill the glance_prompts are distilled already)")
    if cfg.glance_prompts and kind not in ("trajectory", "distill") and not prior:
        raise GlanceError(f"glance_prompts: used by glance_objective trajectory or distill, or by glance_prior_weight "
                          f"> 0 (glance_objective is {kind}, glance_prior_weight 0)")


def encode_prompts(source, cfg, device, dtype) -> list[dict]:
    """`glance_prompts` encoded (text cache first, the text encoders only for what is missing, released after):
    one dict of device tensors per prompt, in order."""
    from ...engine.encode import encode_texts

    if source.family.needs_control_image:  # their prompts are encoded with a control image; these have none
        raise GlanceError(f"glance_prompts: not for edit models ({source.family.name})")
    texts = list(cfg.glance_prompts)
    embeds = encode_texts(source, cfg, texts, device, dtype)
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in embeds[t].items()} for t in texts]

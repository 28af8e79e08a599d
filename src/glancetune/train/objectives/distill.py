"""distill: teacher distillation with guidance baked in. The targets are the base model's own fine-step
trajectories with its real guidance / true CFG (train/teacher.py: sampled by its stock pipeline from prompts, no
images needed, cached on disk). Each micro-batch draws one teacher trajectory of its latent size (uniformly, from
the phase's generator); a sample at ladder sigma s starts from the teacher's own state x_T(s) and learns the one
Euler step that lands on the teacher's state at the next ladder sigma s' (0 after the last):

    target = (x_T(s') - x_T(s)) / (s' - s),   loss = MSE(student(x_T(s), s), target)

The student is called once per step, without CFG: a pair trained so samples true-CFG families at CFG 1 (half the
transformer passes of the teacher). `glance_student_cfg: slow` (or `both`) keeps true CFG in the slow phase (or
both phases): there the LoRA's conditional prediction c is trained so that the CFG combination u + g (c - u) with
its own unconditional prediction u (no gradient) takes the teacher's step, i.e. target_c = u + (target - u) / g;
exact for plain CFG (SD3, FLUX.2 klein), approximate where the pipeline rescales the combination (Qwen-Image's
norm rescale).
The training image itself is not read (its caption is one of the teacher's prompts).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import GlanceError
from .base import Objective, predict, view


class Distill(Objective):
    name = "distill"
    takes_prior = False

    def __init__(self, slow=None, fast=None, substeps: int = 4, extra=None, prior_weight: float = 0.0,
                 cfg_scale: float | None = None, cfg_phases: tuple[str, ...] = ()):
        """`extra`: the teacher trajectories (teacher.TeacherPath); `cfg_scale`: the true-CFG scale of the phases
        named in `cfg_phases`, where the student keeps CFG (none named: CFG baked into both phases)."""
        super().__init__(slow, fast, substeps, None, prior_weight)
        self.paths = list(extra or [])
        if not self.paths:
            raise GlanceError("glance_objective: distill has no teacher trajectories (no prompts)")
        self.cfg_scale, self.cfg_phases = cfg_scale, tuple(cfg_phases) if cfg_scale is not None else ()
        for p in self.paths:
            if p.states.shape[0] != len(self.ladder) + 1:
                raise GlanceError(f"distill: a teacher trajectory holds {p.states.shape[0]} states for a ladder of "
                                  f"{len(self.ladder)} sigmas")

    def pick(self, shape, gen: torch.Generator):
        """One teacher trajectory whose states have this micro-batch's latent shape (one draw from `gen`)."""
        fit = [p for p in self.paths if tuple(p.states.shape[2:]) == tuple(shape[1:])]
        if not fit:
            raise GlanceError(f"distill: no teacher trajectory of latent shape {tuple(shape[1:])}")
        return fit[int(torch.randint(len(fit), (1,), generator=gen))]

    def main_loss(self, trainer, ph, x0, text, image, sigmas, noise, guidance):
        path = self.pick(x0.shape, ph.generator)
        n = len(x0)
        idx = self.ladder_index(sigmas)
        s = trainer.to_device(sigmas)
        x_s = trainer.to_device(torch.cat([path.states[i] for i in idx]))
        x_next = trainer.to_device(torch.cat([path.states[i + 1] for i in idx]))
        s_next = self.next_sigma(s)
        target = (x_next - x_s) / view(s_next - s, x_s)
        text = trainer.family.collate([_dev(path.text, trainer)] * n)
        if ph.name in self.cfg_phases:
            neg = trainer.family.collate([_dev(path.negative, trainer)] * n)
            with torch.no_grad():
                u = predict(trainer, trainer.model, x_s, s, neg, image, guidance).float()
            target = u + (target - u) / self.cfg_scale
        pred = predict(trainer, trainer.model, x_s, s, text, image, guidance)
        return F.mse_loss(pred.float(), target.float())


def _dev(d: dict, trainer) -> dict:
    return {k: trainer.to_device(v) if isinstance(v, torch.Tensor) else v for k, v in d.items()}

"""trajectory: trajectory distillation. The target is the step the ladder sampler must take: from x_s at a ladder
sigma s to the next ladder sigma s' (0 after the last), the base model's own solution (adapters off) by Euler over
`glance_trajectory_substeps` equal sub-steps gives x_fine(s'); the target velocity is (x_fine(s') - x_s) / (s' - s),
so one Euler step with the prediction lands where the fine base ODE lands. x_s is built from the training sample as
in `flow`; the target needs no image. `glance_prompts`: extra captions without images; each micro-batch then takes
one of (training caption, extra prompts) uniformly (drawn from the phase's generator), and for an extra prompt x_s
is data-free too: the base model's own state at s (`Objective.base_state`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Objective, predict, view


class Trajectory(Objective):
    name = "trajectory"
    takes_prior = False  # its glance_prompts are distilled already

    @torch.no_grad()
    def trajectory_target(self, trainer, x_s, s, s_next, text, image, guidance) -> torch.Tensor:
        """(x_fine(s') - x_s) / (s' - s): the base model's Euler solution over `substeps` equal sub-steps."""
        x = x_s.float()
        with self.adapters_off(trainer):
            for k in range(self.substeps):
                a = s + (s_next - s) * (k / self.substeps)
                b = s + (s_next - s) * ((k + 1) / self.substeps)
                x = x + view(b - a, x) * self.velocity(trainer, x, a, text, image, guidance)
        return (x - x_s.float()) / view(s_next - s, x)

    def pick_prompt(self, gen: torch.Generator) -> int:
        """0: the training caption; j > 0: glance_prompts[j - 1]. No draw (RNG untouched) without extra prompts."""
        return int(torch.randint(len(self.extra) + 1, (1,), generator=gen)) if self.extra else 0

    def main_loss(self, trainer, ph, x0, text, image, sigmas, noise, guidance):
        s = trainer.to_device(sigmas)
        x0 = x0.float()
        j = self.pick_prompt(ph.generator)
        if j:
            text = trainer.family.collate([self.extra[j - 1]] * len(x0))
            x_s = self.base_state(trainer, noise, s, text, image, guidance)
        else:
            x_s = (1.0 - view(s, x0)) * x0 + view(s, x0) * noise
        target = self.trajectory_target(trainer, x_s, s, self.next_sigma(s), text, image, guidance)
        pred = predict(trainer, trainer.model, x_s, s, text, image, guidance)
        return F.mse_loss(pred.float(), target.float())

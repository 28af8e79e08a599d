"""rollout: scheduled sampling for the fast phase (the slow phase trains as `flow`). x_s is the chained sampler's
actual state at s: x at the ladder's first sigma (pure noise when it is 1), Euler steps with the slow adapter over
the slow sigmas, then the fast adapter (its current weights) over the fast sigmas above s; no gradient through the
rollout. Target (x_s - x0) / s: the velocity whose one-step denoise x_s - s v is the training image (on the straight
path it equals eps - x0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TOL, Objective, flow_loss, predict, view


class Rollout(Objective):
    name = "rollout"

    @torch.no_grad()
    def rollout_input(self, trainer, x0, noise, s, text, image, guidance) -> torch.Tensor:
        """The chained sampler's state at each sample's sigma s: from the first ladder sigma, slow adapter over
        the slow sigmas, then the fast adapter over the fast sigmas above s."""
        first = self.ladder[0]
        x = (1.0 - first) * x0.float() + first * noise.float()
        back = trainer.active
        try:
            for i, (a, b) in enumerate(zip(self.ladder, self.ladder[1:])):
                going = s < a - TOL  # samples that have not reached their sigma yet
                if not bool(going.any()):
                    break
                trainer.activate("slow" if i < len(self.slow) else "fast")
                sig = torch.full_like(s, a)
                v = self.velocity(trainer, x, sig, text, image, guidance)
                x = torch.where(view(going, x), x + (b - a) * v, x)
        finally:
            trainer.activate(back)
        return x

    def main_loss(self, trainer, ph, x0, text, image, sigmas, noise, guidance):
        if ph.name != "fast":
            return flow_loss(trainer, x0, text, image, sigmas, noise, guidance)
        s = trainer.to_device(sigmas)
        x0 = x0.float()
        x_s = self.rollout_input(trainer, x0, noise, s, text, image, guidance)
        target = (x_s - x0) / view(s, x0)
        pred = predict(trainer, trainer.model, x_s, s, text, image, guidance)
        return F.mse_loss(pred.float(), target.float())

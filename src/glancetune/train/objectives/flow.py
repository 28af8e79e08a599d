"""flow (default): the paper's flow-matching loss, x_s = (1 - s) x0 + s eps, target eps - x0."""
from __future__ import annotations

from .base import Objective, flow_loss


class Flow(Objective):
    name = "flow"
    needs_ladder = False

    def main_loss(self, trainer, ph, x0, text, image, sigmas, noise, guidance):
        return flow_loss(trainer, x0, text, image, sigmas, noise, guidance)

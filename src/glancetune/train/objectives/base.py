"""The objective protocol and what objectives share: the one predict helper (timestep, autocast, the family's
predict) every transformer call of training goes through, the flow loss, the adapters switched off for the base
model's own velocity, the ladder walk, the base model's data-free state, and the prior term.

An objective runs the transformer without gradient on the unwrapped model for its targets (TREAD routes only with
gradients on, so those passes see every token) and restores the stepping phase's adapter before the training
forward. The fixed-noise eval loss stays the flow loss, so it is comparable across objectives.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar

import torch
import torch.nn.functional as F

from ...errors import GlanceError

TOL = 1e-6  # ladder sigmas are compared as drawn from the same fp32 list


def predict(trainer, model, x: torch.Tensor, sigmas: torch.Tensor, text, image, guidance) -> torch.Tensor:
    """The transformer's prediction at `sigmas` (on the device), in the compute dtype under the accelerator's
    autocast. `trainer`: the family, dtype and accelerator of the run."""
    t = trainer.family.transformer_timestep(sigmas, trainer.dtype)
    with trainer.acc.autocast():
        return trainer.family.predict(model, x.to(trainer.dtype), t, text, image, guidance)


def flow_loss(trainer, x0, text, image, sigmas, noise, guidance, model=None) -> torch.Tensor:
    """The paper's loss: x_s = (1 - s) x0 + s eps, target eps - x0, MSE in fp32 (`model`: default the prepared
    training model)."""
    sigmas = trainer.to_device(sigmas)
    s = sigmas.view(-1, *([1] * (x0.ndim - 1)))
    noisy = (1.0 - s) * x0 + s * noise
    target = noise - x0
    pred = predict(trainer, model or trainer.model, noisy, sigmas, text, image, guidance)
    return F.mse_loss(pred.float(), target.float())


def view(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return s.view(-1, *([1] * (x.ndim - 1)))


class Objective:
    """One training objective. `slow`, `fast`: the job's ladder (None for `train`); `substeps`: Euler sub-steps of
    the base model's own solution; `extra`: encoded glance_prompts; `prior_weight`: the prior term's weight.
    A subclass sets `name`, `needs_ladder`, whether it takes the prior, and `main_loss`."""

    name: ClassVar[str]
    needs_ladder: ClassVar[bool] = True
    takes_prior: ClassVar[bool] = True

    def __init__(self, slow=None, fast=None, substeps: int = 4, extra: list[dict] | None = None,
                 prior_weight: float = 0.0):
        self.slow, self.fast, self.substeps = list(slow or []), list(fast or []), int(substeps)
        self.ladder = self.slow + self.fast
        self.extra = list(extra or [])
        self.prior_weight = float(prior_weight)
        if self.prior_weight and (not self.takes_prior or not self.extra):
            raise GlanceError("glance_prior_weight: needs glance_prompts, and glance_objective flow or rollout")

    def main_loss(self, trainer, ph, x0, text, image, sigmas, noise, guidance) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, trainer, ph, x0, text, image, sigmas, noise, guidance) -> torch.Tensor:
        loss = self.main_loss(trainer, ph, x0, text, image, sigmas, noise, guidance)
        if self.prior_weight > 0:
            loss = loss + self.prior_weight * self.prior_loss(trainer, ph, sigmas, noise, image, guidance, len(x0))
        return loss

    # --- shared helpers -----------------------------------------------------------------------------------------
    def velocity(self, trainer, x: torch.Tensor, sigmas: torch.Tensor, text, image, guidance) -> torch.Tensor:
        """The unwrapped transformer's prediction (whatever adapter state is set), fp32."""
        return predict(trainer, trainer.transformer, x, sigmas, text, image, guidance).float()

    @contextmanager
    def adapters_off(self, trainer):
        tr = trainer.transformer
        tr.disable_adapters()
        try:
            yield
        finally:
            tr.enable_adapters()
            tr.set_adapter(trainer.active)

    def ladder_index(self, sigmas: torch.Tensor) -> list[int]:
        """Per sample: the index of its sigma in the ladder."""
        lad = torch.tensor(self.ladder, dtype=torch.float32)
        return [int(torch.nonzero((lad - float(s)).abs() < TOL)[0]) for s in sigmas.cpu()]

    def next_sigma(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Per sample: the ladder sigma after it (0 after the last)."""
        lad = torch.tensor(self.ladder + [0.0], dtype=torch.float32)
        return lad[torch.tensor(self.ladder_index(sigmas)) + 1].to(sigmas.device)

    @torch.no_grad()
    def base_state(self, trainer, noise, s, text, image, guidance) -> torch.Tensor:
        """Data-free x_s: the base model's sub-stepped Euler solution from pure noise at sigma 1 along the ladder
        (the sub-steps of `trajectory_target`) down to each sample's sigma s."""
        points = ([1.0] if self.ladder[0] < 1.0 - TOL else []) + self.ladder
        x = noise.float()
        with self.adapters_off(trainer):
            for a, b in zip(points, points[1:]):
                going = s < a - TOL
                if not bool(going.any()):
                    break
                for k in range(self.substeps):
                    lo, hi = a + (b - a) * k / self.substeps, a + (b - a) * (k + 1) / self.substeps
                    v = self.velocity(trainer, x, torch.full_like(s, lo), text, image, guidance)
                    x = torch.where(view(going, x), x + (hi - lo) * v, x)
        return x

    def prior_loss(self, trainer, ph, sigmas, noise, image, guidance, n: int) -> torch.Tensor:
        """MSE to the base model's own velocity on one glance_prompts caption (drawn from the phase's generator),
        at the base model's own state at the step's sigma (from the step's noise)."""
        j = int(torch.randint(len(self.extra), (1,), generator=ph.generator))
        text = trainer.family.collate([self.extra[j]] * n)
        s = trainer.to_device(sigmas)
        x_s = self.base_state(trainer, noise, s, text, image, guidance)
        with torch.no_grad(), self.adapters_off(trainer):
            target = self.velocity(trainer, x_s, s, text, image, guidance)
        pred = predict(trainer, trainer.model, x_s, s, text, image, guidance)
        return F.mse_loss(pred.float(), target)

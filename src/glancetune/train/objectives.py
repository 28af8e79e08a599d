"""Training objectives beyond the paper's flow-matching loss (issue 13), chosen with `glance_objective`.

  flow (default)  the paper: x_s = (1 - s) x0 + s eps, target eps - x0. The Trainer's own `loss`; this module is
                  not involved (no objective object is made), so the default run is unchanged bit for bit.
  trajectory      trajectory distillation: the target is the step the ladder sampler must take. From x_s at a
                  ladder sigma s to the next ladder sigma s' (0 after the last), the base model's own solution
                  (adapters off) by Euler over `glance_trajectory_substeps` equal sub-steps gives x_fine(s'); the
                  target velocity is (x_fine(s') - x_s) / (s' - s), so one Euler step with the prediction lands where
                  the fine base ODE lands. x_s is built from the training sample as in `flow`; the target needs no
                  image (it is the base model's own ODE). `glance_prompts`: extra captions without images; each
                  micro-batch then takes one of (training caption, extra prompts) uniformly (drawn from the phase's
                  generator), and for an extra prompt x_s is data-free too: the base model's own state at s, by the
                  same sub-stepped Euler from pure noise at sigma 1 along the ladder. The extra prompts are encoded
                  before the transformer loads (`PromptHook.before_load`, through the text cache).
  prior           (`glance_prior_weight` w > 0 with flow or rollout; against the colour / subject leak of a
                  one-image pair) adds w x MSE(prediction, the base model's own velocity) on one glance_prompts
                  caption per micro-batch, at the base model's own state at the step's sigma (as above, from the
                  step's noise): the adapters learn to leave other prompts as the base model has them.
  rollout         scheduled sampling for the fast phase (the slow phase trains as `flow`): x_s is the chained
                  sampler's actual state at s: x at the ladder's first sigma (pure noise when it is 1), Euler steps
                  with the slow adapter over the slow sigmas, then the fast adapter (its current weights) over the
                  fast sigmas above s; no gradient through the rollout. Target (x_s - x0) / s: the velocity whose
                  one-step denoise x_s - s v is the training image (on the straight path it equals eps - x0).

Both run the transformer without gradient on the unwrapped model (TREAD routes only with gradients on, so these
passes see every token) and restore the stepping phase's adapter before the training forward. The fixed-noise eval loss stays the flow loss, so it is comparable across objectives.
"""
from __future__ import annotations

import gc
import shutil
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..errors import GlanceError
from .hooks import Hook

OBJECTIVES = ("flow", "trajectory", "rollout")
TOL = 1e-6  # ladder sigmas are compared as drawn from the same fp32 list


def make_objective(cfg, ladder, command: str, layout: str, extra: list[dict] | None = None):
    """The objective of a job; None for the paper's flow loss (the Trainer's own). `extra`: the encoded
    glance_prompts (trajectory only)."""
    kind = cfg.glance_objective
    check_prompts(cfg)
    if kind == "flow" and not cfg.glance_prior_weight:
        return None
    if command != "glance" or ladder is None:
        raise GlanceError(f"glance_objective: {kind} needs the slow/fast ladder of `glancetune glance`")
    if layout not in ("single", "ddp"):
        raise GlanceError(f"glance_objective: {kind} is built for one process or DDP (this run is {layout})")
    return Objective(kind, list(ladder.slow), list(ladder.fast), cfg.glance_trajectory_substeps, extra,
                     cfg.glance_prior_weight)


def check_prompts(cfg) -> None:
    """glance_prompts serve trajectory, or the prior (glance_prior_weight > 0 with flow or rollout)."""
    kind, prior = cfg.glance_objective, cfg.glance_prior_weight
    if prior and (kind == "trajectory" or not cfg.glance_prompts):
        raise GlanceError("glance_prior_weight: needs glance_prompts, and glance_objective flow or rollout (with "
                          "trajectory the glance_prompts are distilled already)")
    if cfg.glance_prompts and kind != "trajectory" and not prior:
        raise GlanceError(f"glance_prompts: used by glance_objective trajectory or by glance_prior_weight > 0 "
                          f"(glance_objective is {kind}, glance_prior_weight 0)")


class PromptHook(Hook):
    """Encodes `glance_prompts` before the transformer loads (text cache first, the text encoders only for what is
    missing, released after) into `job.glance_prompt_embeds` (device tensors, one dict per prompt)."""

    def before_load(self, job) -> None:
        from ..data.cache import digest
        from .encode import default_caches, load_encoders, text_description

        cache, dev, dtype, fam = default_caches(job.cfg)[0], job.rt.device, job.rt.dtype, job.family
        if fam.needs_control_image:  # their prompts are encoded with a control image; these have none
            raise GlanceError(f"glance_prompts: not for edit models ({fam.name})")
        texts = list(job.cfg.glance_prompts)
        keys = {t: text_description(job.info, t, dtype, job.max_sequence_length, None, cfg=job.cfg) for t in texts}
        embeds = {t: cache.get(digest(d)) for t, d in keys.items()}
        missing = [t for t, e in embeds.items() if e is None]
        if missing:
            cache.check_writable()
            dirs = []
            try:
                pipe = load_encoders(job, dev, dtype, True, dirs, vae=False)
                with torch.no_grad():
                    for t in missing:
                        embeds[t] = fam.encode_prompts(pipe, [t], dev, job.max_sequence_length)
                        cache.put(digest(keys[t]), embeds[t], keys[t])
                del pipe
            finally:
                for d in dirs:
                    shutil.rmtree(d, ignore_errors=True)
            gc.collect()
        job.glance_prompt_embeds = [{k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in embeds[t].items()}
                                    for t in texts]


class Objective:
    def __init__(self, kind: str, slow: list[float], fast: list[float], substeps: int = 4,
                 extra: list[dict] | None = None, prior_weight: float = 0.0):
        if kind not in OBJECTIVES or (kind == "flow" and not prior_weight):
            raise GlanceError(f"glance_objective: {kind!r} is not one of {', '.join(OBJECTIVES[1:])} (or flow with "
                              "glance_prior_weight)")
        self.kind, self.slow, self.fast, self.substeps = kind, list(slow), list(fast), int(substeps)
        self.ladder = self.slow + self.fast
        self.extra = list(extra or [])
        self.prior_weight = float(prior_weight)
        if self.prior_weight and (kind == "trajectory" or not self.extra):
            raise GlanceError("glance_prior_weight: needs glance_prompts, and glance_objective flow or rollout")

    # --- helpers ----------------------------------------------------------------------------------------------
    def velocity(self, trainer, x: torch.Tensor, sigmas: torch.Tensor, text, image, guidance) -> torch.Tensor:
        """The unwrapped transformer's prediction (whatever adapter state is set), fp32."""
        t = trainer.family.transformer_timestep(sigmas, trainer.dtype)
        with trainer.acc.autocast():
            v = trainer.family.predict(trainer.transformer, x.to(trainer.dtype), t, text, image, guidance)
        return v.float()

    @contextmanager
    def adapters_off(self, trainer):
        tr = trainer.transformer
        tr.disable_adapters()
        try:
            yield
        finally:
            tr.enable_adapters()
            tr.set_adapter(trainer.active)

    def next_sigma(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Per sample: the ladder sigma after it (0 after the last)."""
        lad = torch.tensor(self.ladder + [0.0], dtype=torch.float32)
        idx = [int(torch.nonzero((lad[:-1] - float(s)).abs() < TOL)[0]) for s in sigmas.cpu()]
        return lad[torch.tensor(idx) + 1].to(sigmas.device)

    @staticmethod
    def _view(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return s.view(-1, *([1] * (x.ndim - 1)))

    # --- trajectory -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def trajectory_target(self, trainer, x_s, s, s_next, text, image, guidance) -> torch.Tensor:
        """(x_fine(s') - x_s) / (s' - s): the base model's Euler solution over `substeps` equal sub-steps."""
        x = x_s.float()
        with self.adapters_off(trainer):
            for k in range(self.substeps):
                a = s + (s_next - s) * (k / self.substeps)
                b = s + (s_next - s) * ((k + 1) / self.substeps)
                x = x + self._view(b - a, x) * self.velocity(trainer, x, a, text, image, guidance)
        return (x - x_s.float()) / self._view(s_next - s, x)

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
                    x = torch.where(self._view(going, x), x + (hi - lo) * v, x)
        return x

    def pick_prompt(self, gen: torch.Generator) -> int:
        """0: the training caption; j > 0: glance_prompts[j - 1]. No draw (RNG untouched) without extra prompts."""
        return int(torch.randint(len(self.extra) + 1, (1,), generator=gen)) if self.extra else 0

    # --- rollout ----------------------------------------------------------------------------------------------
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
                x = torch.where(self._view(going, x), x + (b - a) * v, x)
        finally:
            trainer.activate(back)
        return x

    # --- the loss ---------------------------------------------------------------------------------------------
    def loss(self, trainer, ph, x0, text, image, sigmas, noise, guidance) -> torch.Tensor:
        loss = self.main_loss(trainer, ph, x0, text, image, sigmas, noise, guidance)
        if self.prior_weight > 0:
            loss = loss + self.prior_weight * self.prior_loss(trainer, ph, sigmas, noise, image, guidance, len(x0))
        return loss

    def prior_loss(self, trainer, ph, sigmas, noise, image, guidance, n: int) -> torch.Tensor:
        """MSE to the base model's own velocity on one glance_prompts caption (drawn from the phase's generator),
        at the base model's own state at the step's sigma (from the step's noise)."""
        j = int(torch.randint(len(self.extra), (1,), generator=ph.generator))
        text = trainer.family.collate([self.extra[j]] * n)
        s = trainer.to_device(sigmas)
        x_s = self.base_state(trainer, noise, s, text, image, guidance)
        with torch.no_grad(), self.adapters_off(trainer):
            target = self.velocity(trainer, x_s, s, text, image, guidance)
        t = trainer.family.transformer_timestep(s, trainer.dtype)
        with trainer.acc.autocast():
            pred = trainer.family.predict(trainer.model, x_s.to(trainer.dtype), t, text, image, guidance)
        return F.mse_loss(pred.float(), target)

    def main_loss(self, trainer, ph, x0, text, image, sigmas, noise, guidance) -> torch.Tensor:
        if self.kind == "flow" or (self.kind == "rollout" and ph.name != "fast"):
            return trainer.loss(x0, text, image, sigmas, noise, guidance)
        s = trainer.to_device(sigmas)
        x0 = x0.float()
        if self.kind == "trajectory":
            j = self.pick_prompt(ph.generator)
            if j:
                text = trainer.family.collate([self.extra[j - 1]] * len(x0))
                x_s = self.base_state(trainer, noise, s, text, image, guidance)
            else:
                x_s = (1.0 - self._view(s, x0)) * x0 + self._view(s, x0) * noise
            target = self.trajectory_target(trainer, x_s, s, self.next_sigma(s), text, image, guidance)
        else:
            x_s = self.rollout_input(trainer, x0, noise, s, text, image, guidance)
            target = (x_s - x0) / self._view(s, x0)
        t = trainer.family.transformer_timestep(s, trainer.dtype)
        with trainer.acc.autocast():
            pred = trainer.family.predict(trainer.model, x_s.to(trainer.dtype), t, text, image, guidance)
        return F.mse_loss(pred.float(), target.float())

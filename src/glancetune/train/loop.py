"""The flow-matching LoRA step loop for one phase (one adapter, one sigma list).

x_s = (1 - s) x0 + s eps, target eps - x0, MSE in fp32. Each step draws its sigmas from the phase's list with a
seeded CPU generator (uniform, or round-robin) and its samples from the data's batch sampler (bucket-pure
batches; a one-image dataset draws nothing). The loop state (step, generator, sigma cursor, batch sampler,
optimizer, LR schedule) lives in one `LoopState` with `state_dict()`, so checkpoints can save and restore it whole.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data.buckets import BatchSampler

EVAL_SEED_OFFSET = 1_000_003
LOG_EVERY = 10  # steps between reads of the loss on the host (each read waits for the GPU)


@dataclass
class Prepared:
    """One training sample, encoded once: x0 in transformer layout, text and image transformer kwargs."""

    x0: torch.Tensor
    text: dict
    image: dict


class SigmaSampler:
    def __init__(self, sigmas, mode: str):
        self.sigmas = torch.tensor(list(sigmas), dtype=torch.float32)
        self.mode = mode
        self.cursor = 0

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        k = len(self.sigmas)
        if self.mode == "round-robin":
            idx = (self.cursor + torch.arange(n)) % k
            self.cursor = (self.cursor + n) % k
        else:
            idx = torch.randint(k, (n,), generator=gen)
        return self.sigmas[idx]

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "mode": self.mode, "sigmas": self.sigmas.tolist()}

    def load_state_dict(self, d: dict) -> None:
        self.cursor = int(d["cursor"])


@dataclass
class LoopState:
    step: int
    generator: torch.Generator
    sampler: SigmaSampler
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LambdaLR
    batches: BatchSampler

    def state_dict(self) -> dict:
        return {"step": self.step, "generator": self.generator.get_state(), "sampler": self.sampler.state_dict(),
                "batches": self.batches.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_schedule": self.lr_schedule.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.step = int(d["step"])
        self.generator.set_state(d["generator"])
        self.sampler.load_state_dict(d["sampler"])
        self.batches.load_state_dict(d["batches"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.lr_schedule.load_state_dict(d["lr_schedule"])


@dataclass
class PhaseLog:
    losses: list = field(default_factory=list)
    eval_before: float = math.nan
    eval_after: float = math.nan
    seconds: float = 0.0
    trainable_params: int = 0


class PhaseTrainer:
    """Runs one phase. `family` supplies the transformer call; the loop never looks at the family's name.

    groups: sample indices per bucket with repeats expanded (DataPlan.groups); default: one bucket of all samples.
    choices: per group, how many conditioning datasets the sampler picks one from per batch (random mode).
    """

    def __init__(self, cfg, family, transformer, samples: list[Prepared], device: torch.device,
                 dtype: torch.dtype, guidance, groups: list[list[int]] | None = None, shuffle: bool = True,
                 choices: list[int] | None = None):
        self.cfg, self.family, self.transformer = cfg, family, transformer
        self.samples, self.device, self.dtype, self.guidance = samples, device, dtype, guidance
        self.groups = groups if groups is not None else [list(range(len(samples)))]
        self.shuffle, self.choices = shuffle, choices
        self.autocast = device.type == "cuda" and dtype != torch.float32

    def new_state(self, params, sigmas) -> LoopState:
        c = self.cfg
        opt = torch.optim.AdamW(params, lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2),
                                weight_decay=c.adam_weight_decay, eps=c.adam_epsilon)
        warm = c.lr_warmup_steps if c.lr_scheduler == "constant_with_warmup" else 0
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        gen = torch.Generator("cpu").manual_seed(c.seed)
        batches = BatchSampler(self.groups, c.train_batch_size, c.seed, self.shuffle, self.choices)
        return LoopState(0, gen, SigmaSampler(sigmas, c.timestep_sampling), opt, sched, batches)

    def _batch(self, idx: list[int]):
        items = [self.samples[i] for i in idx]
        x0 = torch.cat([s.x0 for s in items], dim=0)
        return x0, self.family.collate([s.text for s in items]), self.family.collate([s.image for s in items])

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Host tensors (noise and sigmas are drawn on the CPU, so runs are device-independent) go up without
        making the CPU wait for the GPU: pinned memory and a non-blocking copy on CUDA."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def loss(self, x0, text, image, sigmas: torch.Tensor, noise: torch.Tensor, guidance) -> torch.Tensor:
        sigmas = self.to_device(sigmas)
        s = sigmas.view(-1, *([1] * (x0.ndim - 1)))
        noisy = (1.0 - s) * x0 + s * noise
        target = noise - x0
        t = self.family.transformer_timestep(sigmas, self.dtype)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast):
            pred = self.family.predict(self.transformer, noisy.to(self.dtype), t, text, image, guidance)
        return F.mse_loss(pred.float(), target.float())

    @torch.no_grad()
    def eval_loss(self, sigmas) -> float:
        """Loss of sample 0 at every sigma of the list, with fixed noise: comparable before and after."""
        gen = torch.Generator("cpu").manual_seed(self.cfg.seed + EVAL_SEED_OFFSET)
        sig = torch.tensor(list(sigmas), dtype=torch.float32)
        x0, text, image = self._batch([0] * len(sig))
        noise = self.to_device(torch.randn(x0.shape, generator=gen, dtype=torch.float32))
        g = self.guidance
        return float(self.loss(x0, text, image, sig, noise, (g[0] + g[1]) / 2 if isinstance(g, tuple) else g))

    def draw_guidance(self, n: int, gen: torch.Generator):
        """The constant, or one value per sample uniform in the (min, max) range."""
        if not isinstance(self.guidance, tuple):
            return self.guidance
        lo, hi = self.guidance
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    def run(self, params, sigmas, progress=None) -> PhaseLog:
        c = self.cfg
        log = PhaseLog(trainable_params=sum(p.numel() for p in params))
        state = self.new_state(params, sigmas)
        self.transformer.eval()
        log.eval_before = self.eval_loss(sigmas)
        self.transformer.train()
        t0 = time.perf_counter()
        losses = []  # kept on the device; read on the host only every LOG_EVERY steps
        while state.step < c.max_train_steps:
            total = 0.0
            for _ in range(c.gradient_accumulation_steps):
                idx = state.batches.next().indices
                x0, text, image = self._batch(idx)
                sig = state.sampler.draw(len(idx), state.generator)
                noise = self.to_device(torch.randn(x0.shape, generator=state.generator, dtype=torch.float32))
                guidance = self.draw_guidance(len(idx), state.generator)
                loss = self.loss(x0, text, image, sig, noise, guidance) / c.gradient_accumulation_steps
                loss.backward()
                total = total + loss.detach()
            if c.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
            state.optimizer.step()
            state.lr_schedule.step()
            state.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            losses.append(total)
            if progress is not None:
                show = state.step % LOG_EVERY == 0 or state.step == c.max_train_steps
                progress(state.step, float(total) if show else None)
        log.losses = torch.stack(losses).tolist()
        log.seconds = time.perf_counter() - t0
        self.transformer.eval()
        log.eval_after = self.eval_loss(sigmas)
        return log
